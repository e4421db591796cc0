"""Extractive question answering, as the Transformers QA recipe does it: contexts cut into overlapping windows
(max_length 384, stride 128), answers as start/end token positions (the [CLS] token when a window does not hold the
answer), and the n-best post-processing that turns start/end logits back into answer texts.

    train = squad["train"].map(lambda b: prepare_train_features(b, tokenizer), batched=True,
                               remove_columns=squad["train"].column_names)
    features = squad["validation"].map(lambda b: prepare_validation_features(b, tokenizer), batched=True,
                                       remove_columns=squad["validation"].column_names)
    start_logits, end_logits = trainer.predict(features).predictions
    answers = postprocess_qa_predictions(squad["validation"], features, start_logits, end_logits)
    metrics.load("squad").compute(predictions=answers, references=...)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError


class QADataError(InputError):
    """A question-answering record that cannot be used, named by its file/id."""


def _check_answer(context: str, text: str, start: int, where: str) -> None:
    if not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text:
        found = context[start:start + len(text)] if 0 <= start < len(context) else ""
        raise QADataError(f"{where}: answer_start {start} does not point at the answer {text!r} in the context "
                          f"(the context there reads {found!r})")


def prepare_train_features(examples: dict, tokenizer, max_length: int = 384, stride: int = 128,
                           padding="max_length", where: str = "training data") -> dict:
    """A batch of SQuAD examples (question, context, answers) -> windows with start_positions/end_positions; a
    window that does not hold the whole answer points at token 0, as the recipe's. answer_start must point at the
    answer text (checked, naming the example)."""
    questions = [q.strip() for q in examples["question"]]
    inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                       stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=padding)
    offset_mapping = inputs.pop("offset_mapping")
    sample_map = inputs.pop("overflow_to_sample_mapping")
    ids = examples.get("id", [str(i) for i in range(len(questions))])
    for i, (context, answer) in enumerate(zip(examples["context"], examples["answers"])):
        if not answer["text"]:
            raise QADataError(f"{where}: question {ids[i]!r} has no answer (SQuAD v1.1 training needs one)")
        _check_answer(context, answer["text"][0], int(answer["answer_start"][0]), f"{where}: question {ids[i]!r}")
    start_positions, end_positions = [], []
    for i, offsets in enumerate(offset_mapping):
        answer = examples["answers"][sample_map[i]]
        start_char = int(answer["answer_start"][0])
        end_char = start_char + len(answer["text"][0])
        sequence_ids = inputs.sequence_ids(i)
        context_start = sequence_ids.index(1)
        context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        if offsets[context_start][0] > start_char or offsets[context_end][1] < end_char:
            start_positions.append(0)  # the answer is not (wholly) in this window
            end_positions.append(0)
            continue
        idx = context_start
        while idx <= context_end and offsets[idx][0] <= start_char:
            idx += 1
        start_positions.append(idx - 1)
        idx = context_end
        while idx >= context_start and offsets[idx][1] >= end_char:
            idx -= 1
        end_positions.append(idx + 1)
    inputs["start_positions"] = start_positions
    inputs["end_positions"] = end_positions
    return inputs


def prepare_validation_features(examples: dict, tokenizer, max_length: int = 384, stride: int = 128,
                                padding="max_length") -> dict:
    """A batch of SQuAD examples -> windows with example_id and offset_mapping (None outside the context), which
    postprocess_qa_predictions reads."""
    questions = [q.strip() for q in examples["question"]]
    inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                       stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=padding)
    sample_map = inputs.pop("overflow_to_sample_mapping")
    example_ids = []
    for i in range(len(inputs["input_ids"])):
        example_ids.append(examples["id"][sample_map[i]])
        sequence_ids = inputs.sequence_ids(i)
        inputs["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None
                                       for k, o in enumerate(inputs["offset_mapping"][i])]
    inputs["example_id"] = example_ids
    return inputs


def postprocess_qa_predictions(examples, features, start_logits, end_logits, n_best: int = 20,
                               max_answer_length: int = 30) -> list[dict]:
    """Start/end logits of every window -> each example's best answer: over all its windows, the n_best highest
    start and end logits in the context, spans end >= start of at most max_answer_length tokens, scored by the sum
    of the two logits (the recipe's rule). Returns [{"id", "prediction_text"}], what load("squad") takes."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if len(start_logits) != len(features):
        raise InputError(f"{len(start_logits)} rows of start logits for {len(features)} features: pass the logits "
                         "of trainer.predict(features) for these features")
    by_example: dict = {}
    feature_ids = _column(features, "example_id")
    offsets_column = _column(features, "offset_mapping")
    for index, example_id in enumerate(feature_ids):
        by_example.setdefault(example_id, []).append(index)
    answers = []
    for example_id, context in zip(_column(examples, "id"), _column(examples, "context")):
        best_text, best_score = "", -np.inf
        for index in by_example.get(example_id, []):
            start, end = start_logits[index], end_logits[index]
            offsets = offsets_column[index]
            width = min(len(offsets), len(start))
            starts = np.argsort(start[:width])[-1: -n_best - 1: -1]
            ends = np.argsort(end[:width])[-1: -n_best - 1: -1]
            for s in starts:
                if offsets[s] is None:
                    continue
                for e in ends:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = start[s] + end[e]
                    if score > best_score:
                        best_score, best_text = score, context[offsets[s][0]:offsets[e][1]]
        answers.append({"id": example_id, "prediction_text": best_text})
    return answers


def _column(data, name: str) -> list:
    if isinstance(data, dict):
        return list(data[name])
    if hasattr(data, "column_names"):
        return list(data[name])
    return [row[name] for row in data]

# ----------------------------------------------------------------------------------------- SQuAD files


def read_squad_json(path, with_answers: bool = True) -> list[dict]:
    """A SQuAD v1.1-format file -> one record per question: id, title, context, question, answers {text,
    answer_start}. Records whose answer_start does not point at the answer text are refused, naming them; without
    with_answers, questions may come without answers (to predict them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QADataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise QADataError(f"{path}: not SQuAD format (expected {{'data': [{{'title', 'paragraphs': [...]}}]}})")
    records = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise QADataError(f"{path}: data[{a}].paragraphs[{p}] has no context string")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: question {qa.get('id', f'data[{a}].paragraphs[{p}].qas[{q}]')!r}"
                if "question" not in qa or ("answers" not in qa and with_answers):
                    raise QADataError(f"{where} needs 'question' and 'answers'")
                try:
                    texts = [ans["text"] for ans in qa.get("answers", [])]
                    starts = [int(ans["answer_start"]) for ans in qa.get("answers", [])]
                except (KeyError, TypeError, ValueError):
                    raise QADataError(f"{where}: each answer needs 'text' and an integer 'answer_start'") from None
                if with_answers and not texts:
                    raise QADataError(f"{where} has no answer (SQuAD v1.1 questions all have one)")
                for text, start in zip(texts, starts):
                    _check_answer(context, text, start, where)
                records.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "title": article.get("title", ""),
                                "context": context, "question": qa["question"],
                                "answers": {"text": texts, "answer_start": starts}})
    if not records:
        raise QADataError(f"{path}: no questions found")
    return records
