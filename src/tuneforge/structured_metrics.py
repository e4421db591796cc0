"""Metrics over structured predictions, with the names and results of the `evaluate` library's: "seqeval" (entities
in tag sequences, as the seqeval package finds and scores them) and "squad" (exact match and F1 of answer texts, with
SQuAD v1.1's normalisation). `metrics.load("seqeval")` / `metrics.load("squad")` return them; numpy only.

seqeval finds entities two ways, both reproduced here rule for rule: the default (conlleval's lenient rules, for
any prefix scheme) and mode="strict" with a scheme (IOB1, IOB2, IOE1, IOE2, IOBES, BILOU), where a chunk counts only
if it starts and ends as the scheme says."""
from __future__ import annotations

import collections
import re
import string

import numpy as np

from .errors import InputError

# ----------------------------------------------------------------------------------- seqeval: default mode


def _default_entities(sequences: list[list[str]], suffix: bool) -> list[tuple[str, int, int]]:
    """seqeval.metrics.sequence_labeling.get_entities over sentences joined with "O": (type, start, end)."""
    seq = [tag for sentence in sequences for tag in list(sentence) + ["O"]]
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate(seq + ["O"]):
        if suffix:
            tag, type_ = chunk[-1], chunk[:-1].rsplit("-", maxsplit=1)[0] or "_"
        else:
            tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))

# ------------------------------------------------------------------------------------ seqeval: strict mode

# Per scheme: allowed prefixes and the (previous prefixes, current prefixes, tag condition) patterns that start a
# chunk, continue it, and end it (at the previous token), transcribed from seqeval.scheme.
_ANY = "IOBESUL"
_SCHEMES = {
    "IOB1": ("IOB", [("O", "I", "any"), ("I", "I", "diff"), ("B", "I", "any"), ("I", "B", "same"),
                     ("B", "B", "same")],
             [("B", "I", "same"), ("I", "I", "same")],
             [("I", "I", "diff"), ("I", "O", "any"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
              ("B", "B", "same")]),
    "IOE1": ("IOE", [("O", "I", "any"), ("I", "I", "diff"), ("E", "I", "any"), ("E", "E", "same")],
             [("I", "I", "same"), ("I", "E", "same")],
             [("I", "I", "diff"), ("I", "O", "any"), ("I", "E", "diff"), ("E", "I", "same"), ("E", "E", "same")]),
    "IOB2": ("IOB", [(_ANY, "B", "any")], [("B", "I", "same"), ("I", "I", "same")],
             [("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
              ("B", "B", "any")]),
    "IOE2": ("IOE", [("O", "I", "any"), ("O", "E", "any"), ("E", "I", "any"), ("E", "E", "any"), ("I", "I", "diff"),
                     ("I", "E", "diff")],
             [("I", "E", "same"), ("I", "I", "same")], [("E", _ANY, "any")]),
    "IOBES": ("IOBES", [(_ANY, "B", "any"), (_ANY, "S", "any")],
              [("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")],
              [("S", _ANY, "any"), ("E", _ANY, "any")]),
    "BILOU": ("BILOU", [(_ANY, "B", "any"), (_ANY, "U", "any")],
              [("B", "I", "same"), ("B", "L", "same"), ("I", "I", "same"), ("I", "L", "same")],
              [("U", _ANY, "any"), ("L", _ANY, "any")]),
}


def _token(tag: str, suffix: bool) -> tuple[str, str]:
    prefix = tag[-1] if suffix else tag[0]
    if prefix not in _ANY:
        raise InputError(f"tag {tag!r} has no scheme prefix (one of {', '.join(_ANY)})")
    body = tag[:-1] if suffix else tag[1:]
    return prefix, body.strip("-") or "_"


def _matches(prev, token, patterns) -> bool:
    for prev_prefixes, prefixes, condition in patterns:
        if prev[0] in prev_prefixes and token[0] in prefixes:
            if condition == "any" or (condition == "same") == (prev[1] == token[1]):
                return True
    return False


def _strict_entities(sequences: list[list[str]], scheme: str, suffix: bool) -> set[tuple[int, str, int, int]]:
    """seqeval.scheme.Entities: (sentence, type, start, end) of the chunks the scheme accepts."""
    allowed, starts, insides, ends = _SCHEMES[scheme]
    entities = set()
    for sent_id, sentence in enumerate(sequences):
        tokens = [_token(t, suffix) for t in sentence] + [("O", "_")]
        for tag, token in zip(sentence, tokens):
            if token[0] not in allowed:
                raise InputError(f"Invalid token is found: {tag}. Allowed prefixes are: {'|'.join(allowed)}.")
        i, prev = 0, ("O", "_")
        while i < len(tokens):
            token = tokens[i]
            if _matches(prev, token, starts):
                end, inner = i + 1, token
                while end < len(tokens) and _matches(inner, tokens[end], insides):
                    inner, end = tokens[end], end + 1
                if end == len(tokens):  # seqeval's _forward falls through to the last real token
                    end = len(tokens) - 2
                if _matches(tokens[end - 1], tokens[end], ends):
                    entities.add((sent_id, token[1], i, end))
                i = end
            else:
                i += 1
            prev = tokens[i - 1]
    return entities


def _auto_detect(sequences: list[list[str]], suffix: bool) -> str:
    """seqeval.scheme.auto_detect: IOB2, IOE2, IOBES or BILOU from exactly the prefix sets it accepts."""
    prefixes = frozenset(_token(t, suffix)[0] for sentence in sequences for t in sentence)
    for scheme, accepted in _DETECTED.items():
        if prefixes in accepted:
            return scheme
    raise InputError(f"This scheme is not supported: {set(prefixes)}")


_DETECTED = {
    "IOB2": {frozenset(p) for p in ("IOB", "IB", "BO", "B")},
    "IOE2": {frozenset(p) for p in ("IOE", "IE", "EO", "E")},
    "IOBES": {frozenset(p) for p in ("IOBES", "IBES", "IOBE", "OBES", "IBE", "BES", "OBE", "BE", "S")},
    "BILOU": {frozenset(p) for p in ("IOBLU", "IBLU", "IOBL", "OBLU", "IBL", "BLU", "OBL", "BL", "U")},
}


class SeqEval:
    """Entity-level precision, recall and F1 per entity type and overall, plus token accuracy: the `evaluate`
    library's "seqeval" metric. compute(predictions=[[tag, ...], ...], references=[[tag, ...], ...])."""

    name = "seqeval"
    defaults = {"suffix": False, "scheme": None, "mode": None, "zero_division": "warn"}

    def __init__(self, **config):
        self._check_kwargs(config, "load()")
        self.config = {**self.defaults, **config}
        self._predictions, self._references = [], []

    def __repr__(self):
        return "metrics.load('seqeval')"

    def _check_kwargs(self, kwargs, where):
        unknown = sorted(set(kwargs) - set(self.defaults) - {"sample_weight"})
        if unknown:
            raise TypeError(f"seqeval {where} got unexpected keyword argument(s) {', '.join(unknown)}; it accepts: "
                            f"{', '.join(self.defaults)}")
        if kwargs.get("sample_weight") is not None:
            raise TypeError("seqeval does not weight examples (seqeval's own scores ignore sample_weight); "
                            "leave sample_weight unset")

    def add_batch(self, *, predictions, references):
        predictions, references = _tag_sequences(predictions, "predictions"), _tag_sequences(references, "references")
        _same_shape(predictions, references)
        self._predictions += predictions
        self._references += references

    def add(self, *, prediction, reference):
        self.add_batch(predictions=[prediction], references=[reference])

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict:
        self._check_kwargs(kwargs, "compute()")
        kwargs.pop("sample_weight", None)
        options = {**self.config, **kwargs}
        preds, refs = list(self._predictions), list(self._references)
        if predictions is not None or references is not None:
            if predictions is None or references is None:
                raise InputError("compute() needs both predictions and references, or neither")
            p, r = _tag_sequences(predictions, "predictions"), _tag_sequences(references, "references")
            _same_shape(p, r)
            preds, refs = preds + p, refs + r
        if not refs:
            raise InputError("seqeval: no examples to score (empty input)")
        result = seqeval_scores(preds, refs, **options)
        self._predictions, self._references = [], []
        return result


def _tag_sequences(values, what: str) -> list[list[str]]:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    out = []
    for row, sentence in enumerate(values):
        if isinstance(sentence, str) or not hasattr(sentence, "__iter__"):
            raise TypeError(f"seqeval {what} must be lists of tag sequences (lists of strings); row {row} is "
                            f"{type(sentence).__name__}")
        sentence = list(sentence)
        for i, tag in enumerate(sentence):
            if not isinstance(tag, str) or not tag:
                raise TypeError(f"seqeval {what} row {row} position {i}: tag {tag!r} is not a tag name (map label "
                                "ids to names first, e.g. with model.config.id2label)")
        out.append(sentence)
    return out


def _same_shape(predictions, references):
    if len(predictions) != len(references):
        raise InputError(f"seqeval: {len(predictions)} predicted sequences but {len(references)} references")
    for row, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise InputError(f"seqeval row {row}: {len(p)} predicted tags but {len(r)} reference tags")


def seqeval_scores(predictions, references, suffix=False, scheme=None, mode=None, zero_division="warn") -> dict:
    """The `evaluate` seqeval result: {type: {precision, recall, f1, number}, overall_precision, overall_recall,
    overall_f1, overall_accuracy}."""
    if scheme is not None and scheme not in _SCHEMES:
        raise InputError(f"Scheme should be one of [IOB1, IOB2, IOE1, IOE2, IOBES, BILOU], got {scheme}")
    if zero_division not in ("warn", 0, 1):
        raise InputError(f"zero_division must be 'warn', 0 or 1, got {zero_division!r}")
    if mode == "strict":
        scheme = scheme or _auto_detect(references, suffix)
        true, pred = _strict_entities(references, scheme, suffix), _strict_entities(predictions, scheme, suffix)
        type_of = lambda e: e[1]  # noqa: E731
    else:
        true = set(_default_entities(references, suffix))
        pred = set(_default_entities(predictions, suffix))
        type_of = lambda e: e[0]  # noqa: E731
    types = sorted({type_of(e) for e in true | pred})
    zero = 0.0 if zero_division in ("warn", 0) else 1.0
    result, totals = {}, np.zeros(3)
    for name in types:
        t = {e for e in true if type_of(e) == name}
        p = {e for e in pred if type_of(e) == name}
        counts = np.array([len(t & p), len(p), len(t)], dtype=np.float64)
        totals += counts
        precision, recall, f1 = _prf(*counts, zero)
        result[name] = {"precision": precision, "recall": recall, "f1": f1, "number": int(counts[2])}
    precision, recall, f1 = _prf(*totals, zero)
    result.update(overall_precision=precision, overall_recall=recall, overall_f1=f1)
    flat_true = [t for s in references for t in s]
    flat_pred = [t for s in predictions for t in s]
    result["overall_accuracy"] = sum(a == b for a, b in zip(flat_true, flat_pred)) / len(flat_true)
    return result


def _prf(tp: float, predicted: float, actual: float, zero: float) -> tuple[float, float, float]:
    """seqeval's arithmetic: F1 from precision and recall (after their zero-division values)."""
    precision = tp / predicted if predicted else zero
    recall = tp / actual if actual else zero
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)

# -------------------------------------------------------------------------------------------------- squad


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def _f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


class Squad:
    """SQuAD v1.1 exact match and F1 (percentages), each the best over a question's reference answers: the
    `evaluate` library's "squad" metric. compute(predictions=[{"id", "prediction_text"}], references=[{"id",
    "answers": {"text": [...], "answer_start": [...]}}])."""

    name = "squad"
    defaults = {}

    def __init__(self, **config):
        if config:
            raise TypeError(f"squad load() takes no options, got {', '.join(sorted(config))}")
        self._predictions, self._references = [], []

    def __repr__(self):
        return "metrics.load('squad')"

    def add_batch(self, *, predictions, references):
        self._predictions += list(predictions)
        self._references += list(references)

    def add(self, *, prediction, reference):
        self.add_batch(predictions=[prediction], references=[reference])

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict:
        if kwargs:
            raise TypeError(f"squad compute() got unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        preds = self._predictions + list(predictions or [])
        refs = self._references + list(references or [])
        result = squad_scores(preds, refs)
        self._predictions, self._references = [], []
        return result


def squad_scores(predictions: list[dict], references: list[dict]) -> dict:
    if not references:
        raise InputError("squad: no examples to score (empty input)")
    by_id = {}
    for row, p in enumerate(predictions):
        if not isinstance(p, dict) or "id" not in p or "prediction_text" not in p:
            raise InputError(f"squad predictions row {row}: expected a dict with 'id' and 'prediction_text', got "
                             f"{p!r:.80}")
        by_id[p["id"]] = p["prediction_text"]
    exact = f1 = 0.0
    for row, r in enumerate(references):
        if not isinstance(r, dict) or "id" not in r or "answers" not in r or "text" not in r["answers"]:
            raise InputError(f"squad references row {row}: expected a dict with 'id' and 'answers' {{'text': [...]}}")
        if r["id"] not in by_id:
            raise InputError(f"squad: question {r['id']!r} (references row {row}) has no prediction")
        prediction, truths = by_id[r["id"]], list(r["answers"]["text"])
        if not truths:
            raise InputError(f"squad references row {row} (id {r['id']!r}): no reference answer (SQuAD v1.1 "
                             "questions all have one)")
        exact += max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
        f1 += max(_f1(prediction, t) for t in truths)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}
