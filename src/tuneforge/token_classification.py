"""Token classification (NER), as the Transformers recipe does it: words tokenized with is_split_into_words=True,
each word's label on its first sub-token and -100 on the others (and on special tokens), and seqeval over the
labelled tokens' predictions.

    tokenized = dataset.map(lambda b: tokenize_and_align_labels(b, tokenizer), batched=True)
    compute_metrics = seqeval_metrics(label_list)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

IGNORE_INDEX = -100


class TagDataError(InputError):
    """A tag file or column that cannot be used, naming the file and line (or row)."""


def tokenize_and_align_labels(examples: dict, tokenizer, tokens_column: str = "tokens", tags_column: str = "tags",
                              label_all_tokens: bool = False, max_length: int | None = None) -> dict:
    """A batch of word lists and their label ids -> model inputs with labels aligned to the sub-tokens: the first
    sub-token of each word gets the word's label; later sub-tokens get -100 (or the label, with label_all_tokens);
    special tokens get -100. Words cut off by truncation lose their labels (they are not scored either)."""
    inputs = tokenizer(examples[tokens_column], truncation=True, is_split_into_words=True, max_length=max_length)
    labels = []
    for i, tags in enumerate(examples[tags_column]):
        previous, row = None, []
        for word in inputs.word_ids(i):
            if word is None:
                row.append(IGNORE_INDEX)
            elif word != previous:
                row.append(int(tags[word]))
            else:
                row.append(int(tags[word]) if label_all_tokens else IGNORE_INDEX)
            previous = word
        labels.append(row)
    inputs["labels"] = labels
    return inputs


def labelled_predictions(predictions: np.ndarray, labels: np.ndarray, id2label) -> tuple[list, list]:
    """(N, T, L) logits or (N, T) ids and (N, T) labels (-100 where none) -> the tag names of the labelled tokens,
    predicted and true, sentence by sentence (what seqeval takes)."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    names = id2label if callable(id2label) else (lambda i: id2label[int(i)])
    true_predictions, true_labels = [], []
    for prediction, label in zip(predictions, np.asarray(labels)):
        kept = label != IGNORE_INDEX
        true_predictions.append([names(p) for p in prediction[kept]])
        true_labels.append([names(t) for t in label[kept]])
    return true_predictions, true_labels


def seqeval_metrics(label_list, **seqeval_options):
    """A compute_metrics for the Trainer: overall precision/recall/F1/accuracy of the entities (seqeval) and each
    entity type's scores as `<TYPE>_f1` etc."""
    from . import metrics
    metric = metrics.load("seqeval")
    names = dict(enumerate(label_list)) if not isinstance(label_list, dict) else label_list

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        preds, refs = labelled_predictions(predictions, labels, names)
        results = metric.compute(predictions=preds, references=refs, **seqeval_options)
        out = {"precision": results["overall_precision"], "recall": results["overall_recall"],
               "f1": results["overall_f1"], "accuracy": results["overall_accuracy"]}
        for key, value in results.items():
            if isinstance(value, dict):
                out.update({f"{key}_{k}": v for k, v in value.items()})
        return out

    return compute_metrics

# ------------------------------------------------------------------------------------------ CoNLL files


def read_conll(path, column: int = -1) -> list[dict]:
    """A CoNLL-style file: one `token ... tag` per line (the tag in the last column), a blank line between
    sentences; -DOCSTART- lines are skipped. -> [{"tokens": [...], "tags": [...]}]. A line with one field (a token
    without its tag) is refused, naming the file and line."""
    path = Path(path)
    sentences, tokens, tags, width = [], [], [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2:
                raise TagDataError(f"{path} line {number}: expected 'token ... tag' (at least 2 columns), got "
                                   f"{line.strip()!r}")
            if width is not None and len(fields) != width:
                raise TagDataError(f"{path} line {number}: {len(fields)} columns where the file's earlier lines have "
                                   f"{width}: {line.strip()!r}")
            width = len(fields)
            tokens.append(fields[0])
            tags.append(fields[column])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise TagDataError(f"{path}: no sentences found")
    return sentences


def label_list_from(sentences: list[dict]) -> list[str]:
    """The tag set in a stable order: O first, then by entity type and prefix."""
    tags = {t for s in sentences for t in s["tags"]}
    return sorted(tags, key=lambda t: (t != "O", t[2:] if t[1:2] == "-" else t, t))


def tag_ids(sentences: list[dict], label2id: dict, where: str) -> list[list[int]]:
    """Tags -> ids; a tag the model was not trained on is refused, naming it and where it first occurs."""
    out = []
    for row, sentence in enumerate(sentences):
        ids = []
        for position, tag in enumerate(sentence["tags"]):
            if tag not in label2id:
                raise TagDataError(f"{where}: tag {tag!r} (sentence {row + 1}, token {position + 1} "
                                   f"{sentence['tokens'][position]!r}) was not seen in training; the model knows "
                                   f"{', '.join(label2id)}")
            ids.append(label2id[tag])
        out.append(ids)
    return out
