"""`tuneforge train|evaluate|predict --task token-classification|question-answering`: the NER and extractive-QA
recipes behind the command line. Shares cli.py's settings, output-folder rules and error contract (bad input: one
line naming the file/line/record, exit code 2)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from . import cli
from .data import DataCollatorForTokenClassification, DefaultDataCollator
from .models import AutoModelForQuestionAnswering, AutoModelForTokenClassification
from .question_answering import (QADataError, postprocess_qa_predictions, prepare_train_features,
                                 prepare_validation_features, read_squad_json)
from .report import write_report
from .tokenizer import AutoTokenizer
from .token_classification import (TagDataError, label_list_from, labelled_predictions, read_conll, seqeval_metrics,
                                   tag_ids, tokenize_and_align_labels)
from .training.arguments import TrainingArguments
from .training.trainer import Trainer, set_seed

TASKS = ("text-classification", "token-classification", "question-answering")
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio", ".tsv_conll")
QA_MAX_LENGTH, QA_STRIDE = 384, 128  # the recipe's

# ------------------------------------------------------------------------------------------ reading data


def read_tagged(path: Path, what: str, with_tags: bool = True) -> list[dict]:
    """CoNLL-style text (token ... tag per line) or a JSON/JSONL/parquet table with `tokens` and `tags` (or
    `ner_tags`) columns -> [{"tokens", "tags"}]."""
    if not path.is_file():
        raise cli.UsageError(f"{what} file {path} does not exist")
    if path.suffix.lower() not in cli.FORMATS or path.suffix.lower() == ".tsv" and _looks_conll(path):
        return read_conll(path)
    table = cli.read_table(path, what)
    names = table.column_names
    if "tokens" not in names:
        raise cli.UsageError(f"{path}: no 'tokens' column (columns: {', '.join(names)}); token classification "
                             "takes a list of words per row in 'tokens' and their tags in 'tags'")
    tags_column = "tags" if "tags" in names else "ner_tags" if "ner_tags" in names else None
    if with_tags and tags_column is None:
        raise cli.UsageError(f"{path}: no 'tags' column (columns: {', '.join(names)})")
    sentences = []
    for row, record in enumerate(table):
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise TagDataError(f"{path} row {row}: 'tokens' must be a list of strings, got {tokens!r:.80}")
        tags = [str(t) for t in record[tags_column]] if tags_column else ["O"] * len(tokens)
        if len(tags) != len(tokens):
            raise TagDataError(f"{path} row {row}: {len(tokens)} tokens but {len(tags)} tags")
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise TagDataError(f"{path}: no rows")
    return sentences


def _looks_conll(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return "\t" not in first


def _tokenized(sentences, ids, tokenizer, max_length) -> Dataset:
    batch = tokenize_and_align_labels({"tokens": [s["tokens"] for s in sentences], "tags": ids}, tokenizer,
                                      max_length=max_length)
    return Dataset.from_dict({k: list(v) for k, v in batch.items()})


def _qa_records(path: Path, what: str, with_answers: bool = True) -> list[dict]:
    if not path.is_file():
        raise cli.UsageError(f"{what} file {path} does not exist")
    return read_squad_json(path, with_answers)


def _qa_columns(records: list[dict]) -> dict:
    return {key: [r[key] for r in records] for key in ("id", "question", "context", "answers")}


def _check_windows(records, tokenizer, max_length: int, stride: int, path: Path) -> None:
    """With --stride 0 (no windows) every question and its whole context must fit in max_length."""
    if stride:
        return
    encoded = tokenizer([r["question"].strip() for r in records], [r["context"] for r in records],
                        truncation=False, max_length=max_length)  # measured, not cut (and no length warning)
    for record, ids in zip(records, encoded["input_ids"]):
        if len(ids) > max_length:
            raise QADataError(f"{path}: question {record['id']!r}: question and context take {len(ids)} tokens, "
                              f"more than --max-length {max_length}, and --stride 0 turns windows off; pass "
                              f"--stride (e.g. {QA_STRIDE}) to cut the context into overlapping windows")


def _qa_train_set(records, tokenizer, max_length, stride, path) -> Dataset:
    _check_windows(records, tokenizer, max_length, stride, path)
    features = prepare_train_features(_qa_columns(records), tokenizer, max_length, stride, padding=False,
                                      where=str(path))
    return Dataset.from_dict({k: list(v) for k, v in features.items()})


def _qa_eval_features(records, tokenizer, max_length, stride, path):
    _check_windows(records, tokenizer, max_length, stride, path)
    features = prepare_validation_features(_qa_columns(records), tokenizer, max_length, stride, padding=False)
    inputs = Dataset.from_dict({k: list(v) for k, v in features.items() if k not in ("offset_mapping", "example_id")})
    meta = [{"example_id": e, "offset_mapping": o} for e, o in zip(features["example_id"], features["offset_mapping"])]
    return inputs, meta


def qa_evaluate(trainer, features, records, meta, score: bool = True) -> tuple[dict, list[dict]]:
    """Predict the windows, turn their logits into answers (n-best), and with score the SQuAD EM/F1 as eval_
    metrics. (The Trainer's compute_metrics sees no labels for QA windows, so the CLI does this itself.)"""
    from . import metrics
    output = trainer.predict(features, metric_key_prefix="eval")
    start_logits, end_logits = output.predictions
    answers = postprocess_qa_predictions(records, meta, start_logits, end_logits)
    result = dict(output.metrics)
    if score:
        scores = metrics.load("squad").compute(
            predictions=answers, references=[{"id": r["id"], "answers": r["answers"]} for r in records])
        result.update({f"eval_{k}": v for k, v in scores.items()})
        trainer.log({f"eval_{k}": v for k, v in scores.items()})
    return result, answers

# ------------------------------------------------------------------------------------------------ train


def cmd_train_task(opts):
    task = opts.task
    if opts.model is None:
        opts.model = str(cli.default_model_dir())
    if opts.train is None:
        raise cli.UsageError(f"--task {task} needs --train FILE (the built-in job is text classification)")
    for flag in ("text_column", "text_pair_column", "label_column"):
        if getattr(opts, flag, None) is not None:
            raise cli.UsageError(f"--{flag.replace('_', '-')} is for text classification; --task {task} reads "
                                 + ("'tokens' and 'tags'" if task == "token-classification" else "SQuAD JSON"))
    if task == "token-classification" and opts.stride is not None:
        raise cli.UsageError("--stride is for --task question-answering (windows over long contexts)")
    values, chosen = cli.training_settings(opts)
    push = values.pop("push_to_hub", False)
    args = TrainingArguments(**values)
    output_dir = Path(args.output_dir)
    stale = cli.check_output_dir(output_dir, opts.resume, opts.overwrite)
    train_path = Path(opts.train)
    eval_path = Path(opts.eval) if opts.eval else None
    config = cli.load_config(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    capacity = cli.model_capacity(config, tokenizer)

    if task == "token-classification":
        train_rows = read_tagged(train_path, "train")
        eval_rows = read_tagged(eval_path, "eval") if eval_path else None
        label_list = label_list_from(train_rows)
        label2id = {name: i for i, name in enumerate(label_list)}
        train_ids = tag_ids(train_rows, label2id, str(train_path))
        eval_ids = tag_ids(eval_rows, label2id, str(eval_path)) if eval_rows is not None else None
        max_length = cli.resolve_max_length(opts.max_length, None, capacity)
        tokenizer.model_max_length = max_length
        train_set = _tokenized(train_rows, train_ids, tokenizer, max_length)
        if eval_rows is None:
            train_set, eval_set, eval_source = _hold_out(train_set, train_path, args.seed)
        else:
            eval_set, eval_source = _tokenized(eval_rows, eval_ids, tokenizer, max_length), str(eval_path)
        set_seed(args.seed)
        model = AutoModelForTokenClassification.from_pretrained(
            opts.model, id2label=dict(enumerate(label_list)), label2id=label2id, ignore_mismatched_sizes=True,
            dtype=torch.float32)  # float32 weights to train, whatever was saved
        model = cli.with_lora(model, opts, "TOKEN_CLS")
        collator, compute_metrics = DataCollatorForTokenClassification(tokenizer), seqeval_metrics(label_list)
        described = f"{len(label_list)} tags: {', '.join(label_list)}"
    else:
        max_length = cli.resolve_max_length(opts.max_length or QA_MAX_LENGTH, None, capacity)
        stride = QA_STRIDE if opts.stride is None else opts.stride
        if stride < 0 or stride >= max_length // 2:
            raise cli.UsageError(f"--stride {stride} must be well below --max-length {max_length} (the recipe: 128 "
                                 "of 384): windows overlap by stride tokens")
        tokenizer.model_max_length = max_length
        records = _qa_records(train_path, "train")
        if eval_path is None:
            rng = np.random.default_rng(args.seed)
            held = set(rng.choice(len(records), max(1, int(len(records) * cli.EVAL_SHARE)), replace=False).tolist())
            eval_records = [r for i, r in enumerate(records) if i in held]
            records = [r for i, r in enumerate(records) if i not in held]
            eval_source = f"{cli.EVAL_SHARE:.0%} of {train_path} held out (seed {args.seed})"
        else:
            eval_records, eval_source = _qa_records(eval_path, "eval"), str(eval_path)
        train_set = _qa_train_set(records, tokenizer, max_length, stride, train_path)
        eval_set, meta = _qa_eval_features(eval_records, tokenizer, max_length, stride, eval_path or train_path)
        set_seed(args.seed)
        model = cli.with_lora(AutoModelForQuestionAnswering.from_pretrained(opts.model, ignore_mismatched_sizes=True,
                                                                             dtype=torch.float32), opts, "QUESTION_ANS")
        collator, compute_metrics = _QACollator(tokenizer), None
        described = f"max length {max_length}, stride {stride}; {len(records)} questions in {len(train_set)} windows"
    cli.note(f"fine-tuning {opts.model} for {task} on {train_path} ({len(train_set)} rows), evaluating on "
             f"{eval_source} ({len(eval_set)} rows); {described}")

    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, data_collator=collator, compute_metrics=compute_metrics)
    if trainer.dist.is_main:
        cli.clear(stale)
    trainer.dist.barrier()
    train_output = trainer.train(resume_from_checkpoint=opts.resume)
    if task == "question-answering":
        final, _ = qa_evaluate(trainer, eval_set, eval_records, meta)
    else:
        final = trainer.evaluate()
    if opts.lora and trainer.dist.is_main:  # the labels beside the adapter, for evaluate, predict and merge
        from .peft.lora import save_head_config
        save_head_config(output_dir, model)
    if not push:
        trainer.save_model()
    trainer.save_state()
    if trainer.dist.is_main:
        (output_dir / "eval_results.json").write_text(json.dumps(final, indent=2) + "\n", encoding="utf-8")
        _report(trainer, output_dir, final, train_output.metrics, task,
                {"model": opts.model, "task": task, "train file": str(train_path), "eval data": eval_source,
                 "train rows": len(train_set), "eval rows": len(eval_set), "max length": max_length})
    if not cli.finish_train(trainer, output_dir, chosen, push, f"tuneforge train --task {task}"):
        return None
    return final


class _QACollator:
    """Inputs padded to the batch's longest window; start/end positions stacked."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features):
        batch = self.pad([{k: v for k, v in f.items() if k not in ("start_positions", "end_positions")}
                          for f in features])
        rest = DefaultDataCollator()([{k: f[k] for k in ("start_positions", "end_positions") if k in f}
                                      for f in features]) if "start_positions" in features[0] else {}
        return {**batch, **rest}


def _hold_out(train_set, train_path, seed):
    if len(train_set) < 2:
        raise cli.UsageError(f"{train_path} has a single sentence: too few to hold out an eval split; pass --eval")
    parts = train_set.train_test_split(test_size=cli.EVAL_SHARE, seed=seed)
    cli.note(f"no --eval file: holding out a seeded {cli.EVAL_SHARE:.0%} of {train_path} for evaluation")
    return parts["train"], parts["test"], f"{cli.EVAL_SHARE:.0%} of {train_path} held out (seed {seed})"


def _report(trainer, output_dir, final, train_metrics, task, settings):
    """report.html: curves, settings, throughput and, for NER, the per-entity table (precision, recall, F1 and the
    number of entities of each type)."""
    per_class = id2label = None
    if task == "token-classification":
        types = sorted({k[:-len("_f1")] for k in final if k.endswith("_f1") and k != "eval_f1"})
        id2label = {i: name[len("eval_"):] for i, name in enumerate(types)}
        per_class = [{"precision": final[f"{t}_precision"], "recall": final[f"{t}_recall"], "f1": final[f"{t}_f1"],
                      "support": int(final[f"{t}_number"])} for t in types]
    throughput = {k: train_metrics[k] for k in ("train_runtime", "train_samples_per_second",
                                                "train_steps_per_second") if k in train_metrics}
    write_report(output_dir / "report.html", log_history=trainer.state.log_history, id2label=id2label,
                 per_class=per_class, settings={**settings, **{k: getattr(trainer.args, k)
                                                               for k in cli.REPORTED_FIELDS}},
                 throughput=throughput, title=f"tuneforge: {cli._model_name(settings['model'])} {task}")

# ------------------------------------------------------------------------------------- evaluate / predict


def _inference(opts, with_labels: bool):
    if opts.task == "token-classification" and opts.stride is not None:
        raise cli.UsageError("--stride is for --task question-answering (windows over long contexts)")
    config = cli.load_config(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    capacity = cli.model_capacity(config, tokenizer)
    path = Path(opts.data)
    scratch = tempfile.TemporaryDirectory(prefix="tuneforge-")
    args = TrainingArguments(output_dir=scratch.name, per_device_eval_batch_size=opts.batch_size, report_to="none")
    if opts.task == "token-classification":
        rows = read_tagged(path, "data", with_tags=with_labels)
        model = cli.load_model(AutoModelForTokenClassification, opts.model)
        label_list = [model.config.id2label[i] for i in range(model.config.num_labels)]
        ids = (tag_ids(rows, model.config.label2id, str(path)) if with_labels
               else [[0] * len(r["tokens"]) for r in rows])
        max_length = cli.resolve_max_length(opts.max_length, None, capacity)
        dataset = _tokenized(rows, ids, tokenizer, max_length)
        trainer = Trainer(model=model, args=args, processing_class=tokenizer,
                          data_collator=DataCollatorForTokenClassification(tokenizer),
                          compute_metrics=seqeval_metrics(label_list) if with_labels else None)
        output = trainer.predict(dataset, metric_key_prefix="eval")
        scratch.cleanup()
        return trainer, output, rows, (label_list, dataset)
    records = _qa_records(path, "data", with_labels)
    max_length = cli.resolve_max_length(opts.max_length or QA_MAX_LENGTH, None, capacity)
    stride = QA_STRIDE if opts.stride is None else opts.stride
    features, meta = _qa_eval_features(records, tokenizer, max_length, stride, path)
    model = cli.load_model(AutoModelForQuestionAnswering, opts.model)
    trainer = Trainer(model=model, args=args, processing_class=tokenizer, data_collator=_QACollator(tokenizer))
    result, answers = qa_evaluate(trainer, features, records, meta, score=with_labels)
    scratch.cleanup()
    return trainer, result, records, answers


def cmd_evaluate_task(opts):
    trainer, output, _, _ = _inference(opts, with_labels=True)
    if not trainer.dist.is_main:
        return None
    return output if isinstance(output, dict) else output.metrics


def cmd_predict_task(opts):
    trainer, output, rows, extra = _inference(opts, with_labels=False)
    if not trainer.dist.is_main:
        return None
    if opts.task == "token-classification":
        label_list, dataset = extra
        preds, _ = labelled_predictions(output.predictions, np.asarray(_padded(dataset["labels"])), label_list)
        lines = []
        for row, tags in zip(rows, preds):
            tags = tags + ["O"] * (len(row["tokens"]) - len(tags))  # words past max_length: not tagged
            lines.append({"tokens": row["tokens"], "tags": tags})
    else:
        by_id = {a["id"]: a["prediction_text"] for a in extra}
        lines = [{"id": r["id"], "question": r["question"], "answer": by_id[r["id"]]} for r in rows]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    if opts.output == "-":
        opts.stdout.write(text)
        opts.stdout.flush()
    else:
        target = Path(opts.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        cli.note(f"wrote {len(lines)} predictions to {target}")
    return None


def _padded(rows: list[list[int]]) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [list(r) + [-100] * (width - len(r)) for r in rows]
