"""Evaluation metrics with the names and results of the Hugging Face ``evaluate`` library.

``metrics.load("accuracy")`` returns a metric whose ``compute(predictions=..., references=...)``
gives ``{"accuracy": 0.91}``, so ``compute_metrics`` functions written for the Transformers
fine-tuning guide work unchanged. Scores follow scikit-learn and scipy (which ``evaluate``
calls), but only numpy is needed at run time.

Metrics can also be fed batch by batch with ``add_batch``; ``compute()`` then scores everything
added and starts over. Classification metrics keep only a table of (reference, prediction)
counts, so their memory does not grow with the number of examples; correlation and error
metrics keep every value because they need them all.
"""
import math
import sys

import numpy as np

from .errors import InputError

__all__ = ["Metric", "CombinedMetrics", "load", "combine", "confusion_matrix", "per_class_report"]

_AVERAGES = ("binary", "micro", "macro", "weighted", None)


# ---------------------------------------------------------------- input conversion

def _to_numpy(values, what):
    """``values`` (list, numpy array, torch tensor or scalar) as a numpy array."""
    if values is None:
        raise InputError(f"{what} is None")
    # A torch tensor can only exist if torch has been imported, so there is no need to import it.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:  # numpy has no bfloat16
            values = values.float()
        return values.numpy()
    array = np.asarray(values)
    if array.dtype.kind in "US" and not isinstance(values, np.ndarray):
        # numpy turns [1, "cat"] into ["1", "cat"]; keep the original objects so that an
        # error names the value that is actually wrong.
        array = np.asarray(values, dtype=object)
    return array


def _as_labels(values, what):
    """A 1-D int64 array of class ids; anything that is not a whole number is refused."""
    array = _to_numpy(values, what)
    if array.ndim != 1:
        hint = "; for logits, pass logits.argmax(-1)" if array.ndim == 2 else ""
        raise InputError(f"{what} must be a 1-D sequence of class ids, got shape {array.shape}{hint}")
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            position = int(np.argmax(bad))
            raise InputError(f"{what} must be integer class ids, got {array[position].item()!r} at position {position}")
        return array.astype(np.int64)
    # Strings, None, mixed objects: look at each value so the message can name the culprit.
    labels = np.empty(len(array), dtype=np.int64)
    # tolist() turns numpy scalars into Python ones, which also read better in the message.
    for position, value in enumerate(array.tolist()):
        if isinstance(value, int):
            labels[position] = int(value)
        elif isinstance(value, float) and math.isfinite(value) and value == round(value):
            labels[position] = int(value)
        else:
            raise InputError(f"{what} must be integer class ids, got {value!r} at position {position}")
    return labels


def _as_values(values, what):
    """A 2-D float64 array (examples x outputs); a 1-D input is one output per example."""
    array = _to_numpy(values, what)
    if array.dtype.kind not in "biuf":
        for position, value in enumerate(array.reshape(-1).tolist()):
            if not isinstance(value, (int, float)):
                raise InputError(f"{what} must be numbers, got {value!r} at position {position}")
    if array.ndim not in (1, 2):
        raise InputError(f"{what} must be 1-D or 2-D (examples x outputs), got shape {array.shape}")
    array = array.astype(np.float64)
    return array[:, np.newaxis] if array.ndim == 1 else array


def _check_lengths(predictions, references, sample_weight):
    if len(predictions) != len(references):
        raise InputError(
            f"predictions and references differ in length: "
            f"{len(predictions)} predictions, {len(references)} references"
        )
    if sample_weight is not None and len(sample_weight) != len(references):
        raise InputError(
            f"sample_weight has {len(sample_weight)} values for {len(references)} examples"
        )


def _one_example(prediction, reference, sample_weight):
    """``add_batch`` arguments for a single example."""
    return {
        "predictions": _to_numpy(prediction, "prediction")[np.newaxis],
        "references": _to_numpy(reference, "reference")[np.newaxis],
        "sample_weight": None if sample_weight is None else [sample_weight],
    }


def _as_weights(sample_weight):
    if sample_weight is None:
        return None
    weights = _to_numpy(sample_weight, "sample_weight")
    if weights.ndim != 1:
        raise InputError(f"sample_weight must be 1-D, got shape {weights.shape}")
    return weights.astype(np.float64)


# ---------------------------------------------------------------- accumulated state

class _ConfusionCounts:
    """Summed weight of every (reference, prediction) pair seen: all a classification metric needs."""

    def __init__(self):
        self.counts = {}
        self.size = 0

    def prepare(self, predictions, references, sample_weight):
        """Check and convert a batch without changing the counts, so a bad batch changes nothing."""
        predictions = _as_labels(predictions, "predictions")
        references = _as_labels(references, "references")
        weights = _as_weights(sample_weight)
        _check_lengths(predictions, references, weights)
        return predictions, references, weights

    def absorb(self, batch):
        predictions, references, weights = batch
        if len(references) == 0:
            return
        pairs, index = np.unique(np.stack([references, predictions], axis=1), axis=0, return_inverse=True)
        sums = np.bincount(index.reshape(-1), weights=weights, minlength=len(pairs))
        for (reference, prediction), amount in zip(pairs.tolist(), sums.tolist()):
            key = (reference, prediction)
            self.counts[key] = self.counts.get(key, 0) + amount
        self.size += len(references)

    def copy(self):
        other = _ConfusionCounts()
        other.counts = dict(self.counts)
        other.size = self.size
        return other

    def labels(self):
        """Every label seen among references or predictions, sorted."""
        return sorted({label for pair in self.counts for label in pair})

    def matrix(self, labels):
        """Counts as a dense matrix over ``labels``: rows are references, columns predictions."""
        position = {label: i for i, label in enumerate(labels)}
        table = np.zeros((len(labels), len(labels)), dtype=np.float64)
        for (reference, prediction), amount in self.counts.items():
            table[position[reference], position[prediction]] += amount
        return table


class _RunningValues:
    """Every prediction, reference and weight seen; correlations and errors need them all."""

    def __init__(self):
        self.predictions = []
        self.references = []
        self.weights = []
        self.size = 0

    def prepare(self, predictions, references, sample_weight):
        """Check and convert a batch without keeping it (see ``_ConfusionCounts.prepare``)."""
        predictions = _as_values(predictions, "predictions")
        references = _as_values(references, "references")
        weights = _as_weights(sample_weight)
        _check_lengths(predictions, references, weights)
        # sklearn lets a 1-D side meet an (n, 1) side; any other mismatch of outputs is an error.
        if predictions.shape[1] != references.shape[1]:
            raise InputError(
                f"predictions have {predictions.shape[1]} outputs per example "
                f"but references have {references.shape[1]}"
            )
        if self.predictions and len(predictions) and predictions.shape[1] != self.predictions[0].shape[1]:
            raise InputError(
                f"this batch has {predictions.shape[1]} outputs per example, "
                f"earlier ones had {self.predictions[0].shape[1]}"
            )
        return predictions, references, weights

    def absorb(self, batch):
        predictions, references, weights = batch
        if len(references) == 0:
            return
        self.predictions.append(predictions)
        self.references.append(references)
        self.weights.append(np.ones(len(references)) if weights is None else weights)
        self.size += len(references)

    def copy(self):
        other = _RunningValues()
        other.predictions = list(self.predictions)
        other.references = list(self.references)
        other.weights = list(self.weights)
        other.size = self.size
        return other

    def arrays(self):
        return (np.concatenate(self.predictions), np.concatenate(self.references),
                np.concatenate(self.weights))


# ---------------------------------------------------------------- metrics

class Metric:
    """A metric that scores predictions against references; use :func:`load` to make one.

    ``defaults`` lists the keyword arguments ``compute`` takes; ``load(name, **config)`` can
    change their defaults for this object.
    """

    name = ""
    defaults = {}
    takes_sample_weight = True
    _state_type = _ConfusionCounts

    def __init__(self, **config):
        self._check_kwargs(config, "load()")
        self._loaded_with = config
        self.config = {**self.defaults, **config}
        self._state = self._state_type()

    def __repr__(self):
        config = "".join(f", {key}={value!r}" for key, value in self._loaded_with.items())
        return f"metrics.load({self.name!r}{config})"

    def add_batch(self, *, predictions, references, sample_weight=None):
        """Add a batch of examples, to be scored by the next ``compute()``."""
        self._state.absorb(self._prepare(predictions, references, sample_weight))

    def add(self, *, prediction, reference, sample_weight=None):
        """Add one example."""
        self.add_batch(**_one_example(prediction, reference, sample_weight))

    def compute(self, *, predictions=None, references=None, sample_weight=None, **kwargs):
        """Score everything added so far plus ``predictions``/``references`` if given, then reset.

        If scoring fails, the examples added before the call are kept.
        """
        result = self._result(predictions, references, sample_weight, kwargs)
        self._state = self._state_type()
        return result

    def _result(self, predictions, references, sample_weight, kwargs):
        """The result dict, leaving ``self`` unchanged."""
        self._check_kwargs(kwargs, "compute()")
        state = self._state
        if predictions is not None or references is not None:
            if predictions is None or references is None:
                raise InputError("compute() needs both predictions and references, or neither")
            batch = self._prepare(predictions, references, sample_weight)
            state = state.copy()
            state.absorb(batch)
        elif sample_weight is not None:
            # Classification metrics keep counts, not examples, so weights cannot be applied later.
            raise InputError("pass sample_weight together with the examples it weighs, "
                             "to compute() or to add_batch()")
        if state.size == 0:
            raise InputError(f"{self.name}: no examples to score (empty input); "
                             "pass predictions= and references= or call add_batch() first")
        return {self.name: self._score(state, **{**self.config, **kwargs})}

    def _prepare(self, predictions, references, sample_weight):
        if sample_weight is not None and not self.takes_sample_weight:
            raise TypeError(f"{self.name} does not take sample_weight")
        return self._state.prepare(predictions, references, sample_weight)

    def _check_kwargs(self, kwargs, where):
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            accepted = ", ".join(self.defaults) or "none"
            raise TypeError(f"{self.name} {where} got unexpected keyword argument(s) "
                            f"{', '.join(unknown)}; it accepts: {accepted}")

    def _score(self, state, **kwargs):
        raise NotImplementedError


class Accuracy(Metric):
    """Fraction of predictions equal to their reference (the weighted count if not ``normalize``)."""

    name = "accuracy"
    defaults = {"normalize": True}

    def _score(self, state, normalize):
        correct = sum(amount for (reference, prediction), amount in state.counts.items()
                      if reference == prediction)
        if not normalize:
            return float(correct)
        return float(correct / sum(state.counts.values()))


class _PrecisionRecallF1(Metric):
    """Shared by precision, recall and F1: scikit-learn's ``precision_recall_fscore_support``."""

    defaults = {"average": "binary", "pos_label": 1, "labels": None, "zero_division": "warn"}

    def _score(self, state, average, pos_label, labels, zero_division):
        if average not in _AVERAGES:
            raise InputError(f"average={average!r} is not one of {list(_AVERAGES)}")
        zero_value = _zero_division_value(zero_division)
        present = state.labels()
        if average == "binary":
            # As in sklearn: "binary" means at most two distinct labels, and `labels` is ignored.
            if len(present) > 2:
                raise InputError(
                    f"the data has {len(present)} classes but average='binary'; "
                    "choose average='macro', 'micro', 'weighted' or None"
                )
            if _as_labels([pos_label], "pos_label")[0] not in present and len(present) == 2:
                raise InputError(f"pos_label={pos_label!r} is not a valid label; it should be one of {present}")
            labels = [pos_label]
        elif labels is None:
            labels = present
        labels = _as_labels(labels, "labels").tolist()

        every = sorted(set(present) | set(labels))
        table = state.matrix(every)
        chosen = [every.index(label) for label in labels]
        true_positives = np.diag(table)[chosen]
        predicted = table.sum(axis=0)[chosen]
        actual = table.sum(axis=1)[chosen]
        if average == "micro":
            true_positives, predicted, actual = (np.array([a.sum()]) for a in (true_positives, predicted, actual))

        scores = _precision_recall_f1(true_positives, predicted, actual, zero_value)[self._which]
        if average is None:
            return [float(score) for score in scores]
        return float(_nan_average(scores, actual if average == "weighted" else None))


class Precision(_PrecisionRecallF1):
    """Fraction of positive predictions that are right."""

    name = "precision"
    _which = 0


class Recall(_PrecisionRecallF1):
    """Fraction of positive references that are found."""

    name = "recall"
    _which = 1


class F1(_PrecisionRecallF1):
    """Harmonic mean of precision and recall."""

    name = "f1"
    _which = 2


class MatthewsCorrelation(Metric):
    """Matthews correlation coefficient, multi-class form (0.0 when undefined, as in sklearn)."""

    name = "matthews_correlation"

    def _score(self, state):
        table = state.matrix(state.labels())
        actual = table.sum(axis=1)
        predicted = table.sum(axis=0)
        total = table.sum()
        covariance = np.trace(table) * total - actual @ predicted
        variance_product = (total**2 - predicted @ predicted) * (total**2 - actual @ actual)
        if variance_product == 0:
            return 0.0
        return float(covariance / np.sqrt(variance_product))


class _Correlation(Metric):
    """Shared by the correlation metrics: one value per example, no weights."""

    takes_sample_weight = False
    _state_type = _RunningValues

    def _pair(self, state):
        predictions, references, _ = state.arrays()
        if predictions.shape[1] != 1:
            raise InputError(f"{self.name} needs one value per example, got {predictions.shape[1]}")
        return predictions[:, 0], references[:, 0]


class PearsonR(_Correlation):
    """Pearson correlation; NaN when an input is constant or contains NaN, as in scipy."""

    name = "pearsonr"

    def _score(self, state):
        return _pearson(*self._pair(state))


class SpearmanR(_Correlation):
    """Spearman rank correlation, tied values sharing their average rank, as in scipy."""

    name = "spearmanr"

    def _score(self, state):
        predictions, references = self._pair(state)
        if np.isnan(predictions).any() or np.isnan(references).any():
            return math.nan
        return _pearson(_average_ranks(predictions), _average_ranks(references))


class _Error(Metric):
    """Shared by the error metrics: sklearn's ``multioutput`` choices for 2-D values."""

    defaults = {"multioutput": "uniform_average"}
    _state_type = _RunningValues

    def _score(self, state, multioutput, **options):
        predictions, references, weights = state.arrays()
        errors = self._per_output(predictions - references, weights, **options)
        if isinstance(multioutput, str):
            if multioutput == "raw_values":
                return [float(error) for error in errors]
            if multioutput != "uniform_average":
                raise InputError(f"multioutput={multioutput!r} is not 'raw_values', "
                                 "'uniform_average' or a list of weights, one per output")
            multioutput = None
        return float(np.average(errors, weights=multioutput))


class MeanSquaredError(_Error):
    """Mean squared error; ``squared=False`` gives its root, per output, as sklearn did."""

    name = "mse"
    defaults = {**_Error.defaults, "squared": True}

    def _per_output(self, differences, weights, squared):
        errors = np.average(differences**2, axis=0, weights=weights)
        return errors if squared else np.sqrt(errors)


class MeanAbsoluteError(_Error):
    """Mean absolute error."""

    name = "mae"

    def _per_output(self, differences, weights):
        return np.average(np.abs(differences), axis=0, weights=weights)


_METRICS = {metric.name: metric for metric in (
    Accuracy, F1, Precision, Recall, MatthewsCorrelation, PearsonR, SpearmanR,
    MeanSquaredError, MeanAbsoluteError,
)}


def load(name, **config):
    """The metric called ``name``; ``config`` sets defaults for its ``compute()`` keyword arguments."""
    if name in ("seqeval", "squad"):  # structured predictions (tag sequences, answer texts): their own module
        from .structured_metrics import Squad, SeqEval
        return (SeqEval if name == "seqeval" else Squad)(**config)
    if name not in _METRICS:
        raise InputError(f"unknown metric {name!r}; available: {', '.join([*_METRICS, 'seqeval', 'squad'])}")
    return _METRICS[name](**config)


# ---------------------------------------------------------------- combining

class CombinedMetrics:
    """Several metrics fed the same examples, their results merged into one dict."""

    def __init__(self, metrics):
        self.metrics = metrics

    def __repr__(self):
        return f"metrics.combine({self.metrics!r})"

    def add_batch(self, *, predictions, references, sample_weight=None):
        # Check the batch against every metric before any of them keeps it, so they stay in step.
        batches = [metric._prepare(predictions, references, sample_weight) for metric in self.metrics]
        for metric, batch in zip(self.metrics, batches):
            metric._state.absorb(batch)

    def add(self, *, prediction, reference, sample_weight=None):
        self.add_batch(**_one_example(prediction, reference, sample_weight))

    def compute(self, *, predictions=None, references=None, sample_weight=None, **kwargs):
        """Like :meth:`Metric.compute`; each keyword argument goes to the metrics that take it."""
        unused = sorted(set(kwargs) - {key for metric in self.metrics for key in metric.defaults})
        if unused:
            raise TypeError(f"no combined metric takes keyword argument(s) {', '.join(unused)}")
        merged = {}
        # Score with every metric before resetting any, so a failure leaves all of them intact.
        for metric in self.metrics:
            own = {key: value for key, value in kwargs.items() if key in metric.defaults}
            merged.update(metric._result(predictions, references, sample_weight, own))
        for metric in self.metrics:
            metric._state = metric._state_type()
        return merged


def combine(names_or_metrics):
    """One object computing several metrics, given as names, metric objects or a mix."""
    metrics = [load(item) if isinstance(item, str) else item for item in names_or_metrics]
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise TypeError(f"combine() takes metric names or metrics, got {metric!r}")
    names = [metric.name for metric in metrics]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"combine() got {', '.join(repeated)} more than once; "
                         "their results would overwrite each other")
    if not metrics:
        raise InputError("combine() needs at least one metric")
    return CombinedMetrics(metrics)


# ---------------------------------------------------------------- plain functions

def confusion_matrix(predictions, references, num_labels):
    """Counts with rows = reference (true) label and columns = predicted label, labels 0..num_labels-1."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise InputError(f"num_labels must be a positive integer, got {num_labels!r}")
    predictions = _as_labels(predictions, "predictions")
    references = _as_labels(references, "references")
    _check_lengths(predictions, references, None)
    if len(references) == 0:
        raise InputError("confusion_matrix: no examples (empty input)")
    for what, labels in (("predictions", predictions), ("references", references)):
        outside = (labels < 0) | (labels >= num_labels)
        if outside.any():
            raise InputError(f"{what} contain label {labels[np.argmax(outside)]}, "
                             f"outside 0..{num_labels - 1} (num_labels={num_labels})")
    flat = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels).tolist()


def per_class_report(predictions, references, num_labels):
    """Precision, recall, F1 and support (number of references) of each label 0..num_labels-1."""
    table = np.array(confusion_matrix(predictions, references, num_labels))
    support = table.sum(axis=1)
    scores = _precision_recall_f1(np.diag(table), table.sum(axis=0), support, 0.0)
    return [
        {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for p, r, f, s in zip(*scores, support)
    ]


# ---------------------------------------------------------------- arithmetic

def _zero_division_value(zero_division):
    """sklearn's ``zero_division``: "warn" and 0 give 0.0 (without the warning here), 1 gives 1.0, or NaN."""
    if isinstance(zero_division, str):
        if zero_division == "warn":
            return 0.0
    elif isinstance(zero_division, (int, float)) and (zero_division in (0, 1) or math.isnan(zero_division)):
        return float(zero_division)
    raise InputError(f"zero_division={zero_division!r} is not one of 'warn', 0, 1 or nan")


def _precision_recall_f1(true_positives, predicted, actual, zero_value):
    """Per-label precision, recall and F1 from counts; a zero denominator gives ``zero_value``."""
    def divide(numerator, denominator):
        numerator = np.asarray(numerator, dtype=np.float64)
        denominator = np.asarray(denominator, dtype=np.float64)
        zero = denominator == 0
        return np.where(zero, zero_value, numerator / np.where(zero, 1.0, denominator))

    # F1 straight from counts, 2tp / (2tp + fp + fn), so it is defined even when precision is not.
    return (divide(true_positives, predicted), divide(true_positives, actual),
            divide(2 * np.asarray(true_positives), np.asarray(predicted) + np.asarray(actual)))


def _nan_average(scores, weights):
    """Mean of the non-NaN scores (NaN comes from zero_division=nan), as sklearn averages."""
    keep = ~np.isnan(scores)
    if not keep.any():
        return math.nan
    if weights is None or weights[keep].sum() == 0:
        # All-zero weights (no references of any chosen label): sklearn falls back to a plain mean.
        return scores[keep].mean()
    return np.average(scores[keep], weights=weights[keep])


def _pearson(x, y):
    """Pearson correlation of two 1-D arrays; NaN if either is constant (scipy's convention)."""
    if np.isnan(x).any() or np.isnan(y).any() or (x == x[0]).all() or (y == y[0]).all():
        return math.nan
    # Normalising before the dot product, as scipy does, keeps large values from overflowing.
    x = x - x.mean()
    y = y - y.mean()
    r = np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y))
    return float(np.clip(r, -1.0, 1.0))


def _average_ranks(values):
    """Ranks 1..n, tied values all getting the mean of the ranks they span."""
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[group.reshape(-1)]
