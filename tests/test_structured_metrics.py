"""seqeval and squad metrics against the seqeval package and SQuAD v1.1's official scoring rules."""
import random

import pytest

from tuneforge import metrics

seqeval = pytest.importorskip("seqeval")
from seqeval.metrics import accuracy_score, classification_report  # noqa: E402
from seqeval import scheme as schemes  # noqa: E402

PREFIXES = {"IOB1": "IOB", "IOB2": "IOB", "IOE1": "IOE", "IOE2": "IOE", "IOBES": "IOBES", "BILOU": "BILOU"}


def reference_seqeval(predictions, references, suffix=False, scheme=None, mode=None, zero_division="warn"):
    """What evaluate's seqeval module computes, from the seqeval package."""
    report = classification_report(references, predictions, suffix=suffix, output_dict=True,
                                   scheme=None if scheme is None else getattr(schemes, scheme), mode=mode,
                                   zero_division=zero_division)
    report.pop("macro avg"), report.pop("weighted avg")
    overall = report.pop("micro avg")
    scores = {name: {"precision": s["precision"], "recall": s["recall"], "f1": s["f1-score"], "number": s["support"]}
              for name, s in report.items()}
    scores.update(overall_precision=overall["precision"], overall_recall=overall["recall"],
                  overall_f1=overall["f1-score"], overall_accuracy=accuracy_score(references, predictions))
    return scores


def random_tags(rng, prefixes, n, suffix=False):
    out = []
    for _ in range(n):
        sentence = []
        for _ in range(rng.randint(1, 9)):
            prefix = rng.choice(prefixes + "OO")
            if prefix == "O":
                sentence.append("O")
            else:
                kind = rng.choice(["PER", "LOC", "MISC"])
                sentence.append(f"{kind}-{prefix}" if suffix else f"{prefix}-{kind}")
        out.append(sentence)
    return out


def assert_same(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert got[key] == pytest.approx({k: float(v) for k, v in value.items()}, abs=1e-12), key
        else:
            assert got[key] == pytest.approx(float(value), abs=1e-12), key


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("scheme", sorted(PREFIXES))
@pytest.mark.parametrize("mode", [None, "strict"])
def test_seqeval_equals_the_seqeval_package_on_random_sequences(scheme, mode):
    rng = random.Random(f"{scheme}-{mode}")
    metric = metrics.load("seqeval")
    for chunk in range(10):  # 10 x 100 = 1,000 random sequence pairs per scheme and mode
        refs = random_tags(rng, PREFIXES[scheme], 100)
        preds = [[rng.choice([t, t, t] + random_tags(rng, PREFIXES[scheme], 1)[0][:1]) for t in s] for s in refs]
        got = metric.compute(predictions=preds, references=refs, scheme=scheme, mode=mode)
        assert_same(got, reference_seqeval(preds, refs, scheme=scheme, mode=mode))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("zero_division", ["warn", 1])
def test_seqeval_suffix_zero_division_and_auto_detected_scheme(zero_division):
    rng = random.Random(3)
    refs = random_tags(rng, "IOB", 200, suffix=True)
    preds = [[rng.choice([t, "O", "PER-I", "LOC-B"]) for t in s] for s in refs]
    got = metrics.load("seqeval", suffix=True).compute(predictions=preds, references=refs, zero_division=zero_division)
    assert_same(got, reference_seqeval(preds, refs, suffix=True, zero_division=zero_division))
    refs, preds = [["B-PER", "I-PER", "O"]], [["O", "O", "O"]]
    got = metrics.load("seqeval").compute(predictions=preds, references=refs, mode="strict",
                                          zero_division=zero_division)
    assert_same(got, reference_seqeval(preds, refs, mode="strict", zero_division=zero_division))


def test_seqeval_batches_and_bad_input():
    metric = metrics.load("seqeval")
    metric.add_batch(predictions=[["B-PER", "I-PER"]], references=[["B-PER", "I-PER"]])
    metric.add(prediction=["O", "B-LOC"], reference=["B-LOC", "O"])
    result = metric.compute()
    assert result["PER"]["f1"] == 1.0 and result["LOC"]["f1"] == 0.0 and result["overall_f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="row 0: 2 predicted tags but 1 reference"):
        metric.compute(predictions=[["O", "O"]], references=[["O"]])
    with pytest.raises(TypeError, match="position 0: tag 3 is not a tag name"):
        metric.compute(predictions=[[3]], references=[["O"]])
    with pytest.raises(ValueError, match="Invalid token is found: E-PER"):
        metric.compute(predictions=[["E-PER"]], references=[["B-PER"]], mode="strict", scheme="IOB2")


def test_squad_scores_follow_the_official_normalisation():
    squad = metrics.load("squad")
    refs = [{"id": "1", "answers": {"text": ["the Eiffel Tower", "Eiffel"], "answer_start": [0, 4]}},
            {"id": "2", "answers": {"text": ["in 1889"], "answer_start": [3]}},
            {"id": "3", "answers": {"text": ["Paris, France"], "answer_start": [0]}}]
    preds = [{"id": "1", "prediction_text": "Eiffel tower!"}, {"id": "2", "prediction_text": "1889"},
             {"id": "3", "prediction_text": "London"}]
    result = squad.compute(predictions=preds, references=refs)
    # 1: exact after normalisation; 2: F1 2*(1/1*1/2)/(1+1/2) = 2/3; 3: nothing in common.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="question '2'.*has no prediction"):
        squad.compute(predictions=preds[:1], references=refs[:2])
