"""A training run in its own process, for the resume tests: it can SIGKILL itself right after a checkpoint or
in the middle of writing one, or report its progress for a test that sends it SIGTERM (report_progress). Writes
final weights and log history to OUTPUT/result/. `trainer_child.py serve` runs many such runs, forked."""
import json
import os
import signal
import sys
import time

import torch

from tuneforge import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer, TrainerCallback
from tuneforge import DataCollatorForLanguageModeling, TrainingArguments
from tuneforge.models.bert import BertConfig, BertForSequenceClassification

# TEST_MODEL picks the model: a BERT classifier (default), or a tiny Llama / GPT-2 as a causal LM or classifier.
DECODERS = {
    "llama": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, max_position_embeddings=64, pad_token_id=0, attention_dropout=0.1,
                  tie_word_embeddings=True),
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0),
}


def make_model(kind, dropout=True):
    """A freshly initialised model from a fixed seed, and the collator its data needs (None: the default)."""
    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64, num_labels=3,
                            **({} if dropout else dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
        return BertForSequenceClassification.from_config(config), None
    family, task = kind.split("-")
    values = dict(DECODERS[family])
    if not dropout:
        values.update(attention_dropout=0.0) if family == "llama" else values.update(
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config = AutoConfig.for_model(family, **values, num_labels=3)
    if task == "clm":
        return AutoModelForCausalLM.from_config(config), DataCollatorForLanguageModeling(mlm=False)
    return AutoModelForSequenceClassification.from_config(config), None


def make_data(n=40, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(5, 99, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, **({"label": int(ids[0] % 3)} if labels else {})})
    return rows


class KillAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_while_saving(step):
    """SIGKILL once the checkpoint's optimizer state is on disk but before the folder is complete."""
    real_save = torch.save

    def save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if f"checkpoint-{step}" in str(path) and str(path).endswith("optimizer.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save


class Progress(TrainerCallback):
    """For a test that signals this process from outside: OUTPUT.progress-RANK holds 'pid step' at each step's start;
    each step sleeps a little so that a signal sent on seeing step k lands inside step k or the next."""

    def __init__(self, output_dir):
        self.path = f"{output_dir}.progress-{os.environ.get('RANK', '0')}"

    def on_step_begin(self, args, state, control, **kwargs):
        with open(self.path + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {state.global_step}")
        os.replace(self.path + ".tmp", self.path)
        time.sleep(float(os.environ.get("TEST_STEP_SLEEP", "0.05")))


def main(output_dir, mode, step):
    # A thread count changes float rounding: fixed, so that runs compare bit for bit whatever the machine's load.
    os.environ.setdefault("TUNEFORGE_NUM_THREADS", "1")
    callbacks = []
    if mode == "report_progress":
        callbacks.append(Progress(output_dir))
    if mode == "kill_after_save":
        callbacks.append(KillAfterSave(step))
    elif mode == "kill_while_saving":
        kill_while_saving(step)
    batch = int(os.environ.get("TEST_BATCH", "4"))  # 2 under torchrun with two workers: the same global batch
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=2,
                             max_steps=12, save_steps=4, logging_steps=1, learning_rate=1e-3, seed=7,
                             disable_tqdm=True, fsdp=os.environ.get("TEST_FSDP") == "1")
    dropout = not os.environ.get("TEST_NO_DROPOUT")  # else dropout stays on
    model, collator = make_model(os.environ.get("TEST_MODEL", "bert"), dropout)
    if os.environ.get("TEST_LORA"):  # a LoRA adapter on every linear layer
        from tuneforge import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1 * dropout,
                                                 task_type="SEQ_CLS" if collator is None else "CAUSAL_LM"))
    trainer = Trainer(model=model, args=args, train_dataset=make_data(labels=collator is None), callbacks=callbacks, data_collator=collator)
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    if args.fsdp and trainer.dist.active:  # what this rank holds: OUTPUT.shards-RANK.json
        from torch.distributed.tensor import DTensor
        params = list(trainer.model.parameters())
        with open(f"{output_dir}.shards-{trainer.dist.rank}.json", "w") as f:
            json.dump({"parameters": len(params), "sharded": sum(isinstance(p, DTensor) for p in params),
                       "frozen": sum(not p.requires_grad for p in params), "numel": sum(p.numel() for p in params),
                       "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                                          for p in params)}, f)
    result = os.path.join(output_dir, "result")
    trainer.save_model(result)
    if not trainer.dist.is_main:
        return
    with open(os.path.join(result, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f)


def serve():
    """`trainer_child.py serve`: each stdin line 'OUTPUT MODE STEP' runs in a process forked from this one, so many
    short runs pay for the imports once. Replies with the run's pid, then its exit status; its stderr goes to
    OUTPUT.stderr. Nothing here has run torch yet, so no thread pool is forked half-way."""
    for line in sys.stdin:
        output_dir, mode, step = line.split()
        pid = os.fork()
        if pid == 0:
            fd = os.open(f"{output_dir}.stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            code = 1
            try:
                main(output_dir, mode, int(step))
                code = 0
            except SystemExit as e:  # what an uncaught one would make the exit status
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
