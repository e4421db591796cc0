"""One training job, run either as a single process or under torchrun, for the data-parallel tests.

Usage: ddp_child.py OUTPUT_DIR PER_DEVICE_BATCH [kill_rank1_at_step]
Environment: TEST_FSDP=1 shards with FSDP; TEST_ACCUM=k accumulates k micro-batches.
Rank 0 writes OUTPUT_DIR/result/{log_history.json, eval.json, model.safetensors}. Every rank but 0 records
through an audit hook any attempt to write under OUTPUT_DIR, and fails if there was one."""
import json
import os
import signal
import sys

import torch

from tuneforge import Trainer, TrainerCallback, TrainingArguments, metrics
from trainer_child import make_data, make_model

WRITE_EVENTS = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "tempfile.mkstemp",
                "os.truncate"}


def forbid_writes_under(folder):
    folder = os.path.realpath(folder)
    violations = []

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if any(c in mode for c in "wax+") and os.path.realpath(os.fsdecode(args[0])).startswith(folder):
                violations.append((event, os.fsdecode(args[0])))
        elif event in WRITE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.path.realpath(os.fsdecode(args[0])).startswith(folder):
                violations.append((event, os.fsdecode(args[0])))
    sys.addaudithook(hook)
    return violations


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and int(os.environ.get("RANK", 0)) == 1:
            os.kill(os.getpid(), signal.SIGKILL)


class OwnEvalLoader(Trainer):
    """A user's Trainer subclass whose get_eval_dataloader returns a plain DataLoader over the whole eval set."""
    steps = 0

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return torch.utils.data.DataLoader(dataset, batch_size=7, shuffle=False, collate_fn=self.data_collator)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.steps += 1
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def evaluate_with_own_dataloader(trainer):
    """The trained model evaluated through the override: the metrics, and each process's batches (15 in all). The
    trainer becomes an OwnEvalLoader in place (a second Trainer cannot take an FSDP-sharded model)."""
    trainer.__class__ = OwnEvalLoader
    result = trainer.evaluate()
    return {**{k: v for k, v in result.items() if "per_second" not in k and "runtime" not in k},
            "steps_per_rank": trainer.dist.all_gather_object(trainer.steps)}


def main(output_dir, batch, kill_at=None):
    accum = int(os.environ.get("TEST_ACCUM", "1"))
    rank = int(os.environ.get("RANK", 0))
    violations = forbid_writes_under(output_dir) if rank else []
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch, per_device_eval_batch_size=8,
                             max_steps=12, save_steps=6, logging_steps=1, learning_rate=1e-3, seed=3,
                             eval_strategy="steps", eval_steps=6, disable_tqdm=True, ddp_timeout=60,
                             fsdp=os.environ.get("TEST_FSDP") == "1", gradient_accumulation_steps=accum)
    kind = os.environ.get("TEST_MODEL", "bert")
    model, collator = make_model(kind, dropout=False)
    accuracy = metrics.load("accuracy")

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return {**accuracy.compute(predictions=logits.argmax(-1), references=labels),
                "n": len(labels), "label_sum": int(labels.sum())}

    trainer = Trainer(model=model, args=args, train_dataset=make_data(400, labels=collator is None),
                      eval_dataset=make_data(101, seed=1, labels=collator is None),
                      compute_metrics=None if kind.endswith("clm") else compute_metrics, data_collator=collator,
                      callbacks=[KillAt(kill_at)] if kill_at else [])
    trainer.train()
    final = trainer.evaluate()
    final["override"] = evaluate_with_own_dataloader(trainer)
    if trainer.dist.is_main:
        result = os.path.join(output_dir, "result")
        trainer.save_model(result)
        with open(os.path.join(result, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
        with open(os.path.join(result, "eval.json"), "w") as f:
            json.dump(final, f)
    else:
        trainer.save_model(os.path.join(output_dir, "result"))  # a no-op off rank 0; the hook would catch a write
    if violations:
        raise SystemExit(f"rank {rank} wrote under the output folder: {violations[:5]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
