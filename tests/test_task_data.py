"""The task recipes' data side: tokenizer features (word_ids, offsets, overflow windows) identical to the reference on
real CoNLL sentences and SQuAD contexts, the collators, QA pre/post-processing, and prediction that streams."""
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge import (AutoConfig, AutoModelForTokenClassification, AutoTokenizer, DataCollatorForMultipleChoice,
                       DataCollatorForTokenClassification, DefaultDataCollator, Trainer, TrainingArguments)
from tuneforge.question_answering import postprocess_qa_predictions, prepare_train_features
from tuneforge.token_classification import read_conll, tokenize_and_align_labels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def conll_sentences():
    path = DATA / "conll2003" / "train.txt"
    if not path.exists():
        pytest.skip(f"CoNLL-2003 not found at {path}")
    return read_conll(path)[:300]


@pytest.fixture(scope="module")
def squad_records():
    path = DATA / "squad" / "dev.json"
    if not path.exists():
        pytest.skip(f"SQuAD not found at {path}")
    from tuneforge.question_answering import read_squad_json
    records = read_squad_json(path)
    contexts = sorted({r["context"]: r for r in records}.values(), key=lambda r: -len(r["context"]))
    return contexts[:100]  # the 100 longest contexts, each with one of its questions


def test_word_ids_and_offsets_match_reference_on_300_conll_sentences(tokenizers, conll_sentences):
    ref, ours = tokenizers
    words = [s["tokens"] for s in conll_sentences]
    kwargs = dict(is_split_into_words=True, truncation=True, max_length=32, return_offsets_mapping=True)
    expected, got = ref(words, **kwargs), ours(words, **kwargs)
    assert dict(got) == {k: [list(map(tuple, r)) if k == "offset_mapping" else r for r in v]
                         for k, v in expected.items()}
    assert all(got.word_ids(i) == expected.word_ids(i) for i in range(len(words)))
    assert any(None in got.word_ids(i)[1:-1] or len(got.word_ids(i)) == 32 for i in range(len(words)))
    # The recipe's label alignment on top: first sub-token labelled, the rest -100.
    aligned = tokenize_and_align_labels({"tokens": words, "tags": [[1] * len(w) for w in words]}, ours)
    for i, labels in enumerate(aligned["labels"]):
        word_ids = aligned.word_ids(i)
        firsts = [k for k, w in enumerate(word_ids) if w is not None and (k == 0 or word_ids[k - 1] != w)]
        assert [k for k, label in enumerate(labels) if label != -100] == firsts


def test_overflow_windows_match_reference_on_100_long_contexts(tokenizers, squad_records):
    ref, ours = tokenizers
    questions = [r["question"].strip() for r in squad_records]
    contexts = [r["context"] for r in squad_records]
    kwargs = dict(max_length=384, truncation="only_second", stride=128, return_overflowing_tokens=True,
                  return_offsets_mapping=True, padding="max_length")
    expected, got = ref(questions, contexts, **kwargs), ours(questions, contexts, **kwargs)
    assert len(got["input_ids"]) > len(questions), "some contexts need several windows"
    for key in expected:
        want = expected[key] if key != "offset_mapping" else [list(map(tuple, r)) for r in expected[key]]
        assert got[key] == want, key
    assert all(got.sequence_ids(i) == expected.sequence_ids(i) for i in range(len(got["input_ids"])))
    # The recipe's training labels come out the same from both tokenizers' windows.
    columns = {k: [r[k] for r in squad_records] for k in ("id", "question", "context", "answers")}
    mine = prepare_train_features(columns, ours)
    theirs = prepare_train_features(columns, ref)
    assert mine["start_positions"] == theirs["start_positions"] and mine["end_positions"] == theirs["end_positions"]
    assert any(s > 0 for s in mine["start_positions"]) and 0 in mine["start_positions"]


def test_truncation_only_second_error_is_one_clear_line(tokenizers):
    _, ours = tokenizers
    with pytest.raises(ValueError, match="max_length=8 with truncation='only_second'"):
        ours("a question far too long for eight tokens", "context", max_length=8, truncation="only_second")


def test_token_classification_collator_pads_labels_with_minus_100(tokenizers):
    transformers = pytest.importorskip("transformers")
    ref_tok, ours = tokenizers
    features = [{"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1], "token_type_ids": [0] * 4,
                 "labels": [-100, 1, 2, -100]},
                {"input_ids": [101, 9, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0] * 3,
                 "labels": [-100, 3, -100]}]
    expected = transformers.DataCollatorForTokenClassification(ref_tok)(features)
    got = DataCollatorForTokenClassification(ours)(features)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    got = DataCollatorForTokenClassification(ours, pad_to_multiple_of=8)(features)
    assert got["labels"].shape == (2, 8) and (got["labels"][:, 4:] == -100).all()


def test_multiple_choice_and_default_collators_match_reference(tokenizers):
    transformers = pytest.importorskip("transformers")
    ref_tok, ours = tokenizers
    prompt = ["The cat sat on the", "A dog"]
    choices = [["mat.", "moon, far away."], ["barks.", "flies loudly."]]
    examples = []
    for p, c, label in zip(prompt, choices, [0, 1]):
        enc = ours([p] * 2, c)
        examples.append({**{k: v for k, v in enc.items()}, "label": label})
    expected = transformers.DataCollatorForMultipleChoice(ref_tok)(examples)
    got = DataCollatorForMultipleChoice(ours)(examples)
    assert got["input_ids"].shape[:2] == (2, 2)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    flat = [{"input_ids": [1, 2], "start_positions": 1, "end_positions": 1}, {"input_ids": [3, 4],
            "start_positions": 0, "end_positions": 1}]
    want = transformers.DefaultDataCollator()(flat)
    have = DefaultDataCollator()(flat)
    assert all(torch.equal(have[k], want[k]) for k in want)


def test_postprocess_picks_the_best_valid_span_over_windows():
    context = "Paris is the capital of France."
    examples = {"id": ["a"], "context": [context]}
    # Two windows; the second holds the best span "France" (tokens 3..3 there).
    offsets = [[None, (0, 5), (6, 8), (9, 12), None], [None, (13, 20), (21, 23), (24, 30), None]]
    features = [{"example_id": "a", "offset_mapping": offsets[0]}, {"example_id": "a", "offset_mapping": offsets[1]}]
    start = np.array([[9.0, 1, 0, 0, 9], [9.0, 0, 0, 5, 9]])
    end = np.array([[9.0, 1, 0, 0, 9], [9.0, 0, 0, 5, 9]])
    answers = postprocess_qa_predictions(examples, features, start, end)
    assert answers == [{"id": "a", "prediction_text": "France"}]  # special tokens and padding never answer
    end[1, 3] = -50  # an end before the start is never taken: the best is then "Paris"
    end[1, 1] = -50
    assert postprocess_qa_predictions(examples, features, start, end)[0]["prediction_text"] == "Paris"


def test_prediction_streams_token_logits_into_one_preallocated_array(tmp_path):
    """20,000 token-classification examples: the only memory that grows is the output arrays, written batch by
    batch into place (numpy allocations traced: the peak stays within the final outputs plus one batch)."""
    config = AutoConfig.for_model("bert", vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=64, num_labels=5)
    model = AutoModelForTokenClassification.from_config(config)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 24, 20_000)
    rows = [{"input_ids": rng.integers(1, 99, n).tolist(), "labels": rng.integers(0, 5, n).tolist()}
            for n in lengths]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=1000, report_to="none",
                             disable_tqdm=True)

    class Tok:
        pad_token_id, padding_side, pad_token_type_id = 0, "right", 0

    trainer = Trainer(model=model, args=args, data_collator=DataCollatorForTokenClassification(Tok()))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        output = trainer.predict(rows)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert output.predictions.shape == (20_000, 23, 5) and output.label_ids.shape == (20_000, 23)
    for i in (0, 123, 19_999):  # each row's own values, in input order, -100 beyond its length
        n = lengths[i]
        assert (output.label_ids[i, :n] == rows[i]["labels"]).all() and (output.label_ids[i, n:] == -100).all()
        beyond = output.predictions[i, n:]  # padding of its batch (never computed: 0) or of the set (-100)
        assert np.isin(beyond, (0.0, -100.0)).all()
    outputs = output.predictions.nbytes + output.label_ids.nbytes
    one_batch = 1000 * 23 * (5 * 4 + 8) * 4  # a batch's logits/labels and their float copies, generously
    assert peak < outputs + one_batch, (peak, outputs)
