"""tuneforge.metrics against the libraries `evaluate` delegates to: scikit-learn and scipy."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tuneforge import metrics

CLASSIFICATION = ["accuracy", "f1", "precision", "recall", "matthews_correlation"]
REGRESSION = ["pearsonr", "spearmanr", "mse", "mae"]
AVERAGED = ["f1", "precision", "recall"]
AVERAGES = ["binary", "micro", "macro", "weighted", None]

# sklearn warns about ill-defined scores and ignored pos_label; the values are what is compared.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def sk():
    return pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def stats():
    return pytest.importorskip("scipy.stats")


def classification_data(kind, seed, n=200):
    """(predictions, references, weights) as numpy arrays."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        references = rng.integers(0, 2, n)
        predictions = np.where(rng.random(n) < 0.7, references, 1 - references)
    elif kind == "multiclass":
        references = rng.integers(0, 5, n)
        predictions = np.where(rng.random(n) < 0.5, references, rng.integers(0, 5, n))
    elif kind == "absent":
        # Label 3 is never predicted and label 5 is predicted but never a reference.
        references = rng.integers(0, 5, n)
        predictions = np.where(rng.random(n) < 0.5, references, rng.choice([0, 1, 2, 4, 5], n))
        predictions[predictions == 3] = 5
    elif kind == "shifted_binary":
        # Two labels, neither of them 0: pos_label has to be chosen.
        references = rng.integers(0, 2, n) * 5 + 2
        predictions = np.where(rng.random(n) < 0.6, references, 9 - references)
    weights = rng.random(n) * 2
    return predictions, references, weights


def sklearn_score(sk, name, predictions, references, **kwargs):
    """What `evaluate` returns for `name`: the sklearn function of the same name."""
    function = {
        "accuracy": sk.accuracy_score,
        "f1": sk.f1_score,
        "precision": sk.precision_score,
        "recall": sk.recall_score,
        "matthews_correlation": sk.matthews_corrcoef,
    }[name]
    return function(references, predictions, **kwargs)


def assert_same(ours, expected):
    """Equal up to float rounding, NaN equal to NaN, lists compared item by item."""
    if isinstance(expected, np.ndarray) or isinstance(ours, list):
        assert isinstance(ours, list)
        np.testing.assert_allclose(ours, np.asarray(expected, dtype=float), rtol=1e-12, atol=1e-12)
        return
    assert isinstance(ours, float)
    if math.isnan(expected):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(float(expected), rel=1e-12, abs=1e-12)


def assert_same_results(ours, expected):
    """Two result dicts with the same keys and the same values up to float rounding."""
    assert list(ours) == list(expected)
    for key in expected:
        assert_same(ours[key], expected[key])


# ---------------------------------------------------------------- classification against sklearn

@pytest.mark.parametrize("kind", ["binary", "multiclass", "absent"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", ["accuracy", "matthews_correlation"])
def test_accuracy_and_mcc_match_sklearn(sk, name, kind, weighted):
    predictions, references, weights = classification_data(kind, seed=1)
    extra = {"sample_weight": weights} if weighted else {}
    result = metrics.load(name).compute(predictions=predictions, references=references, **extra)
    assert list(result) == [name]
    assert_same(result[name], sklearn_score(sk, name, predictions, references, **extra))


@pytest.mark.parametrize("weighted", [False, True])
def test_accuracy_unnormalized_matches_sklearn(sk, weighted):
    predictions, references, weights = classification_data("multiclass", seed=2)
    extra = {"sample_weight": weights} if weighted else {}
    result = metrics.load("accuracy").compute(predictions=predictions, references=references,
                                              normalize=False, **extra)
    assert_same(result["accuracy"], sk.accuracy_score(references, predictions, normalize=False, **extra))


@pytest.mark.parametrize("kind", ["binary", "multiclass", "absent"])
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("name", AVERAGED)
@pytest.mark.parametrize("seed", [3, 4])
def test_averaged_scores_match_sklearn(sk, name, average, kind, seed):
    predictions, references, _ = classification_data(kind, seed)
    if average == "binary" and kind != "binary":
        # sklearn refuses binary averaging of multi-class data; so must we.
        with pytest.raises(ValueError):
            sklearn_score(sk, name, predictions, references, average=average)
        with pytest.raises(ValueError, match="average='binary'"):
            metrics.load(name).compute(predictions=predictions, references=references, average=average)
        return
    result = metrics.load(name).compute(predictions=predictions, references=references, average=average)
    assert list(result) == [name]
    assert_same(result[name], sklearn_score(sk, name, predictions, references, average=average))


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
@pytest.mark.parametrize("name", AVERAGED)
def test_sample_weight_matches_sklearn(sk, name, average):
    predictions, references, weights = classification_data("absent", seed=5)
    ours = metrics.load(name).compute(predictions=predictions, references=references,
                                      average=average, sample_weight=weights)[name]
    assert_same(ours, sklearn_score(sk, name, predictions, references, average=average, sample_weight=weights))


@pytest.mark.parametrize("labels", [[0, 2], [4, 1, 3], [1, 7], [3]])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
@pytest.mark.parametrize("name", AVERAGED)
def test_labels_argument_matches_sklearn(sk, name, average, labels):
    # Subsets, reordering, and labels (3, 7) that are never predicted or never seen at all.
    predictions, references, _ = classification_data("absent", seed=6)
    ours = metrics.load(name).compute(predictions=predictions, references=references,
                                      average=average, labels=labels)[name]
    assert_same(ours, sklearn_score(sk, name, predictions, references, average=average, labels=labels))


@pytest.mark.parametrize("pos_label", [2, 7])
@pytest.mark.parametrize("name", AVERAGED)
def test_pos_label_matches_sklearn(sk, name, pos_label):
    predictions, references, _ = classification_data("shifted_binary", seed=7)
    ours = metrics.load(name, pos_label=pos_label).compute(predictions=predictions, references=references)
    assert_same(ours[name], sklearn_score(sk, name, predictions, references, pos_label=pos_label))


@pytest.mark.parametrize("name", AVERAGED)
def test_default_pos_label_missing_from_two_labels_is_an_error(sk, name):
    predictions, references, _ = classification_data("shifted_binary", seed=8)
    with pytest.raises(ValueError):
        sklearn_score(sk, name, predictions, references)
    with pytest.raises(ValueError, match="pos_label=1"):
        metrics.load(name).compute(predictions=predictions, references=references)


@pytest.mark.parametrize("zero_division", ["warn", 0, 1, np.nan])
@pytest.mark.parametrize("average", ["binary", "micro", "macro", "weighted", None])
@pytest.mark.parametrize("name", AVERAGED)
@pytest.mark.parametrize(
    "predictions, references",
    [
        ([0, 0, 0, 0], [0, 1, 0, 1]),  # positive class never predicted
        ([0, 1, 0, 1], [0, 0, 0, 0]),  # positive class never a reference
        ([0, 0, 0], [0, 0, 0]),  # only one label anywhere
        ([1, 1, 0], [1, 1, 0]),
    ],
)
def test_zero_division_matches_sklearn(sk, name, average, zero_division, predictions, references):
    expected = sklearn_score(sk, name, predictions, references, average=average, zero_division=zero_division)
    ours = metrics.load(name).compute(predictions=predictions, references=references,
                                      average=average, zero_division=zero_division)[name]
    assert_same(ours, expected)


def test_zero_division_in_multiclass_matches_sklearn(sk):
    # Label 1 is neither predicted nor a reference once labels= asks for it.
    predictions, references = [0, 2, 2, 0, 3], [0, 2, 0, 3, 3]
    for name in AVERAGED:
        for average in ["micro", "macro", "weighted", None]:
            for zero_division in ["warn", 1, np.nan]:
                options = dict(average=average, labels=[0, 1, 2, 3], zero_division=zero_division)
                ours = metrics.load(name).compute(predictions=predictions, references=references, **options)
                assert_same(ours[name], sklearn_score(sk, name, predictions, references, **options))


def test_matthews_degenerate_cases_match_sklearn(sk):
    for predictions, references in [([1, 1, 1], [0, 1, 0]), ([0, 0], [0, 0]), ([2, 0, 1], [2, 0, 1])]:
        ours = metrics.load("matthews_correlation").compute(predictions=predictions, references=references)
        assert_same(ours["matthews_correlation"], sk.matthews_corrcoef(references, predictions))


def test_boolean_and_float_labels_are_accepted(sk):
    references = np.array([True, False, True, True])
    predictions = np.array([1.0, 0.0, 0.0, 1.0])
    ours = metrics.load("f1").compute(predictions=predictions, references=references)
    assert_same(ours["f1"], sk.f1_score(references.astype(int), predictions.astype(int)))


# ---------------------------------------------------------------- regression against scipy / sklearn

def regression_data(seed, n=150, ties=False, outputs=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if outputs is None else (n, outputs)
    if ties:
        # Few distinct values, so most ranks are shared.
        references = rng.integers(0, 6, shape).astype(float)
        predictions = np.clip(references + rng.integers(-2, 3, shape), 0, 5)
    else:
        references = rng.normal(size=shape)
        predictions = references + rng.normal(scale=0.8, size=shape)
    return predictions, references, rng.random(n)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", ["pearsonr", "spearmanr"])
def test_correlations_match_scipy(stats, name, ties):
    predictions, references, _ = regression_data(seed=10, ties=ties)
    function = stats.pearsonr if name == "pearsonr" else stats.spearmanr
    result = metrics.load(name).compute(predictions=predictions, references=references)
    assert list(result) == [name]
    assert isinstance(result[name], float)
    assert result[name] == pytest.approx(float(function(references, predictions)[0]), abs=1e-12)


@pytest.mark.parametrize(
    "predictions, references",
    [([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), ([3.0, 1.0], [1.0, 2.0])],
)
@pytest.mark.parametrize("name", ["pearsonr", "spearmanr"])
def test_correlation_edge_cases_match_scipy(stats, name, predictions, references):
    function = stats.pearsonr if name == "pearsonr" else stats.spearmanr
    expected = float(function(references, predictions)[0])
    ours = metrics.load(name).compute(predictions=predictions, references=references)[name]
    assert_same(ours, expected)


def test_spearman_uses_average_ranks_for_ties(stats):
    predictions = [1, 2, 2, 2, 3, 3, 10, 0]
    references = [5, 5, 1, 2, 3, 3, 3, 0]
    expected = stats.pearsonr(stats.rankdata(references), stats.rankdata(predictions))[0]
    ours = metrics.load("spearmanr").compute(predictions=predictions, references=references)["spearmanr"]
    assert ours == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("outputs", [None, 3])
def test_errors_match_sklearn(sk, outputs, weighted):
    predictions, references, weights = regression_data(seed=11, outputs=outputs)
    extra = {"sample_weight": weights} if weighted else {}
    modes = ["uniform_average", "raw_values"] + ([[0.2, 0.5, 0.3]] if outputs else [])
    for multioutput in modes:
        cases = [
            ("mse", {}, sk.mean_squared_error),
            ("mse", {"squared": False}, sk.root_mean_squared_error),
            ("mae", {}, sk.mean_absolute_error),
        ]
        for name, options, function in cases:
            ours = metrics.load(name, **options).compute(
                predictions=predictions, references=references, multioutput=multioutput, **extra)
            assert list(ours) == [name]
            expected = function(references, predictions, multioutput=multioutput, **extra)
            assert_same(ours[name], expected)


def test_column_vector_predictions_meet_flat_references(sk):
    predictions, references, _ = regression_data(seed=12)
    ours = metrics.load("mse").compute(predictions=predictions[:, None], references=references)
    assert_same(ours["mse"], sk.mean_squared_error(references, predictions))


# ---------------------------------------------------------------- streaming

def split_into_batches(arrays, seed):
    """The same examples as a list of uneven batches, including an empty one."""
    n = len(arrays[0])
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 6, replace=False))
    cuts = np.concatenate([[0, 0], cuts, [n]])  # [0, 0] gives an empty first batch
    return [[array[start:end] for array in arrays] for start, end in zip(cuts[:-1], cuts[1:])]


STREAMING_CASES = [
    (name, {}) for name in CLASSIFICATION + REGRESSION
] + [("f1", {"average": average}) for average in ["macro", "micro", "weighted", None]]


@pytest.mark.parametrize("name, options", STREAMING_CASES)
def test_add_batch_equals_one_shot(name, options):
    if name in CLASSIFICATION:
        predictions, references, _ = classification_data("binary" if not options else "absent", seed=20)
    else:
        predictions, references, _ = regression_data(seed=20, ties=name == "spearmanr")
    one_shot = metrics.load(name, **options).compute(predictions=predictions, references=references)

    metric = metrics.load(name, **options)
    for batch_predictions, batch_references in split_into_batches([predictions, references], seed=21):
        metric.add_batch(predictions=batch_predictions.tolist(), references=batch_references)
    assert_same_results(metric.compute(), one_shot)

    for prediction, reference in zip(predictions, references):
        metric.add(prediction=prediction, reference=reference)
    assert_same_results(metric.compute(), one_shot)


@pytest.mark.parametrize("name", ["accuracy", "f1", "matthews_correlation", "mse", "mae"])
def test_weighted_batches_equal_weighted_one_shot(name):
    if name in CLASSIFICATION:
        predictions, references, weights = classification_data("binary", seed=22)
    else:
        predictions, references, weights = regression_data(seed=22)
    one_shot = metrics.load(name).compute(predictions=predictions, references=references, sample_weight=weights)
    metric = metrics.load(name)
    for batch in split_into_batches([predictions, references, weights], seed=23):
        metric.add_batch(predictions=batch[0], references=batch[1], sample_weight=batch[2])
    assert_same_results(metric.compute(), one_shot)


def test_compute_with_data_includes_earlier_batches_and_resets():
    predictions, references, _ = classification_data("multiclass", seed=24)
    metric = metrics.load("accuracy")
    metric.add_batch(predictions=predictions[:50], references=references[:50])
    combined = metric.compute(predictions=predictions[50:], references=references[50:])
    assert combined == metrics.load("accuracy").compute(predictions=predictions, references=references)
    with pytest.raises(ValueError, match="empty"):
        metric.compute()


def test_classification_memory_does_not_grow_with_examples():
    metric = metrics.load("f1", average="macro")
    rng = np.random.default_rng(25)
    for _ in range(20):
        metric.add_batch(predictions=rng.integers(0, 3, 500), references=rng.integers(0, 3, 500))
    # One count per (reference, prediction) pair, not per example.
    assert len(metric._state.counts) <= 9
    assert metric._state.size == 10_000


def test_failed_compute_keeps_added_examples():
    metric = metrics.load("f1")
    metric.add_batch(predictions=[0, 1, 2], references=[0, 2, 2])
    with pytest.raises(ValueError, match="average='binary'"):
        metric.compute(predictions=[1], references=[1])
    assert metric.compute(average="micro") == metrics.load("f1", average="micro").compute(
        predictions=[0, 1, 2], references=[0, 2, 2])


def test_bad_batch_changes_nothing():
    metric = metrics.load("accuracy")
    metric.add_batch(predictions=[1, 1], references=[1, 0])
    with pytest.raises(ValueError):
        metric.add_batch(predictions=[1, 0.5], references=[1, 1])
    assert metric.compute() == {"accuracy": 0.5}


# ---------------------------------------------------------------- combine

def test_combine_merges_results():
    predictions, references, _ = classification_data("binary", seed=30)
    names = ["accuracy", "f1", "precision", "recall", "matthews_correlation"]
    expected = {}
    for name in names:
        expected.update(metrics.load(name).compute(predictions=predictions, references=references))
    assert metrics.combine(names).compute(predictions=predictions, references=references) == expected


def test_combine_accepts_metric_objects_and_streams():
    predictions, references, _ = classification_data("multiclass", seed=31)
    combined = metrics.combine(["accuracy", metrics.load("f1", average="macro")])
    for batch_predictions, batch_references in split_into_batches([predictions, references], seed=32):
        combined.add_batch(predictions=batch_predictions, references=batch_references)
    combined.add(prediction=1, reference=1)
    predictions, references = np.append(predictions, 1), np.append(references, 1)
    expected = {
        **metrics.load("accuracy").compute(predictions=predictions, references=references),
        **metrics.load("f1", average="macro").compute(predictions=predictions, references=references),
    }
    assert_same_results(combined.compute(), expected)


def test_combine_routes_keyword_arguments_to_metrics_that_take_them():
    predictions, references, _ = classification_data("multiclass", seed=33)
    result = metrics.combine(["accuracy", "recall"]).compute(
        predictions=predictions, references=references, average="weighted", normalize=False)
    assert result["accuracy"] == metrics.load("accuracy").compute(
        predictions=predictions, references=references, normalize=False)["accuracy"]
    assert result["recall"] == metrics.load("recall").compute(
        predictions=predictions, references=references, average="weighted")["recall"]
    with pytest.raises(TypeError, match="beta"):
        metrics.combine(["accuracy", "recall"]).compute(predictions=[0], references=[0], beta=2)


def test_combine_refuses_the_same_metric_twice():
    with pytest.raises(ValueError, match="f1"):
        metrics.combine(["f1", metrics.load("f1", average="macro")])


# ---------------------------------------------------------------- tensors

def test_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    predictions, references, weights = classification_data("multiclass", seed=40)
    expected = metrics.load("f1", average="macro").compute(
        predictions=predictions, references=references, sample_weight=weights)
    ours = metrics.load("f1", average="macro").compute(
        predictions=torch.tensor(predictions), references=torch.tensor(references),
        sample_weight=torch.tensor(weights))
    assert ours == expected

    values, targets, _ = regression_data(seed=41)
    expected = metrics.load("pearsonr").compute(predictions=values, references=targets)["pearsonr"]
    prediction_tensor = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    ours = metrics.load("pearsonr").compute(predictions=prediction_tensor, references=torch.tensor(targets))
    assert ours["pearsonr"] == pytest.approx(expected, rel=1e-12)

    metric = metrics.load("mae")
    metric.add(prediction=torch.tensor(1.5, dtype=torch.bfloat16), reference=torch.tensor(1.0))
    metric.add_batch(predictions=torch.tensor([2.0, 0.0], dtype=torch.bfloat16), references=[2.0, 1.0])
    assert metric.compute() == {"mae": pytest.approx(0.5)}


def test_metrics_module_does_not_import_torch():
    # Loaded without the package's __init__ (which imports torch for its models): an empty `tuneforge` package
    # whose path is the source folder, so metrics.py's own relative imports (tuneforge.errors) still resolve.
    package = os.path.dirname(metrics.__file__)
    code = (
        "import importlib, sys, types\n"
        "package = types.ModuleType('tuneforge')\n"
        f"package.__path__ = [{package!r}]\n"
        "sys.modules['tuneforge'] = package\n"
        "importlib.import_module('tuneforge.metrics').load('accuracy')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("name", CLASSIFICATION + REGRESSION)
def test_length_mismatch_names_both_lengths(name):
    with pytest.raises(ValueError, match=r"3 predictions, 2 references"):
        metrics.load(name).compute(predictions=[0, 1, 1], references=[0, 1])
    with pytest.raises(ValueError, match=r"1 predictions, 2 references"):
        metrics.load(name).add_batch(predictions=[0], references=[0, 1])


@pytest.mark.parametrize("name", CLASSIFICATION + REGRESSION)
def test_empty_input_is_an_error(name):
    with pytest.raises(ValueError, match="empty"):
        metrics.load(name).compute(predictions=[], references=[])
    with pytest.raises(ValueError, match="empty"):
        metrics.load(name).compute()


@pytest.mark.parametrize("bad, shown", [(0.5, "0.5"), ("cat", "'cat'"), (None, "None"), (float("nan"), "nan")])
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_non_integer_labels_are_named(name, bad, shown):
    with pytest.raises(ValueError, match=f"got {shown} at position 1"):
        metrics.load(name).compute(predictions=[1, bad, 0], references=[1, 1, 0])
    with pytest.raises(ValueError, match=f"references.*got {shown}"):
        metrics.load(name).add_batch(predictions=[1, 1, 0], references=[1, bad, 0])


def test_logits_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="argmax"):
        metrics.load("accuracy").compute(predictions=np.zeros((4, 3)), references=[0, 1, 2, 0])


def test_unknown_metric_lists_the_available_ones():
    with pytest.raises(ValueError) as error:
        metrics.load("bleu")
    message = str(error.value)
    assert "'bleu'" in message
    for name in CLASSIFICATION + REGRESSION:
        assert name in message


def test_unknown_keyword_arguments_are_refused():
    with pytest.raises(TypeError, match="averag"):
        metrics.load("f1", averag="macro")
    with pytest.raises(TypeError, match="average"):
        metrics.load("accuracy").compute(predictions=[0], references=[0], average="macro")
    with pytest.raises(ValueError, match="average="):
        metrics.load("f1").compute(predictions=[0], references=[0], average="mean")


def test_weights_after_the_fact_are_refused():
    metric = metrics.load("accuracy")
    metric.add_batch(predictions=[0, 1], references=[0, 0])
    with pytest.raises(ValueError, match="sample_weight"):
        metric.compute(sample_weight=[1.0, 2.0])
    with pytest.raises(TypeError, match="sample_weight"):
        metrics.load("spearmanr").compute(predictions=[0, 1], references=[0, 1], sample_weight=[1, 1])


# ---------------------------------------------------------------- plain functions

@pytest.mark.parametrize("kind", ["binary", "multiclass", "absent"])
def test_confusion_matrix_matches_sklearn(sk, kind):
    predictions, references, _ = classification_data(kind, seed=50)
    ours = metrics.confusion_matrix(predictions, references, num_labels=7)
    assert ours == sk.confusion_matrix(references, predictions, labels=range(7)).tolist()
    assert all(type(count) is int for row in ours for count in row)


@pytest.mark.parametrize("kind", ["binary", "absent"])
def test_per_class_report_matches_sklearn(sk, kind):
    predictions, references, _ = classification_data(kind, seed=51)
    report = metrics.per_class_report(predictions, references, num_labels=7)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        references, predictions, labels=range(7), zero_division=0)
    assert [row["precision"] for row in report] == pytest.approx(precision.tolist(), abs=1e-12)
    assert [row["recall"] for row in report] == pytest.approx(recall.tolist(), abs=1e-12)
    assert [row["f1"] for row in report] == pytest.approx(f1.tolist(), abs=1e-12)
    assert [row["support"] for row in report] == support.tolist()


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="label 3"):
        metrics.confusion_matrix([0, 3], [0, 1], num_labels=3)
    with pytest.raises(ValueError, match="2 predictions, 1 references"):
        metrics.confusion_matrix([0, 1], [0], num_labels=2)
    with pytest.raises(ValueError, match="empty"):
        metrics.per_class_report([], [], num_labels=2)
    with pytest.raises(ValueError, match="got 1.5"):
        metrics.confusion_matrix([0, 1.5], [0, 1], num_labels=2)
