"""An SFT run with packing in its own process, for the resume and data-parallel tests.

Usage: sft_child.py OUTPUT_DIR MODE PER_DEVICE_BATCH, MODE one of full, kill_after_save, resume. Run alone or under
torchrun (then with TEST_DROPOUT=0: ranks draw their own dropout masks). Rank 0 writes OUTPUT_DIR/result/{model.safetensors, log_history.json, eval.json}."""
import json
import os
import random
import signal
import sys

import torch

from tuneforge import AutoConfig, AutoModelForCausalLM, SFTConfig, SFTTrainer, TrainerCallback


class Tokenizer:
    """The few things SFTTrainer asks of a tokenizer for pre-tokenized rows."""
    eos_token, pad_token, eos_token_id, pad_token_id = "</s>", "<pad>", 1, 0

    def get_vocab(self):
        return {"<pad>": 0, "</s>": 1}


def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):  # uneven lengths; a prompt of 1-6 tokens carries no loss
        ids = [rng.randint(2, 98) for _ in range(rng.randint(3, 20))]
        prompt = rng.randint(1, min(6, len(ids) - 1))
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)


def main(output_dir, mode, batch):
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64,
                                  pad_token_id=0, tie_word_embeddings=True,
                                  attention_dropout=float(os.environ.get("TEST_DROPOUT", "0.1")))
    model = AutoModelForCausalLM.from_config(config)
    args = SFTConfig(output_dir=output_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=2,
                     max_steps=8, save_steps=4, logging_steps=1, learning_rate=1e-3, seed=7, max_length=32,
                     packing=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows(60, 0), eval_dataset=rows(12, 1),
                         processing_class=Tokenizer(), callbacks=[KillAfterSave()] if mode == "kill_after_save" else [])
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    result = os.path.join(output_dir, "result")
    trainer.save_model(result)
    metrics = trainer.evaluate()
    if trainer.dist.is_main:
        with open(os.path.join(result, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
        with open(os.path.join(result, "eval.json"), "w") as f:
            json.dump(metrics, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
