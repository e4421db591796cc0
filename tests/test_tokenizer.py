"""tuneforge.tokenizer against the reference: Transformers' AutoTokenizer loading the same folders.

Every expected output here comes from the reference tokenizer (or from the data itself), never from
tuneforge's own output.
"""
import collections
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.tokenizer import AutoTokenizer, BatchEncoding, PreTrainedTokenizerFast

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sentences(sst2):
    # Short phrases from train plus full sentences from test, so truncation at 16 really cuts.
    texts = [s for s, _ in sst2("train", 300)] + [s for s, _ in sst2("test", 300)]
    assert len(texts) >= 500
    return texts


@pytest.fixture(scope="module")
def pairs(sst2):
    texts = [s for s, _ in sst2("test", 301)]
    result = list(zip(texts[:-1], texts[1:]))
    assert len(result) >= 100
    return result


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def minilm_ref(minilm_dir, transformers):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def _write_wordpiece_folder(folder, texts, config):
    """A small BERT-style vocab.txt from the words of `texts`, plus single characters and ## pieces."""
    folder.mkdir(parents=True, exist_ok=True)
    words = collections.Counter(w for text in texts for w in text.lower().split() if w.isalpha())
    chars = sorted({c for text in texts for c in text + text.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [w for w, _ in words.most_common(300)]
    vocab += ["##s", "##ing", "##ed", "##ly", "##er"]
    vocab += chars + ["##" + c for c in chars]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory, sst2):
    texts = [s for s, _ in sst2("train", 400)]
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}
    return _write_wordpiece_folder(tmp_path_factory.mktemp("wordpiece"), texts, config)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, sst2):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        [s for s, _ in sst2("train", 400)],
        vocab_size=600,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    trainer.save_model(str(folder))  # vocab.json + merges.txt
    config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": 64}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    return folder


def assert_same_encoding(ours, ref):
    """Same keys, same values; tensors also of the same kind, dtype and shape."""
    assert isinstance(ours, BatchEncoding)
    assert list(ours.keys()) == list(ref.keys())
    for key in ref.keys():
        expected, got = ref[key], ours[key]
        if isinstance(expected, torch.Tensor):
            assert isinstance(got, torch.Tensor), key
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert torch.equal(got, expected), key
        elif isinstance(expected, np.ndarray):
            assert isinstance(got, np.ndarray), key
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert np.array_equal(got, expected), key
        else:
            assert got == expected, key


def outcome(tokenizer, *args, **kwargs):
    """The tokenizer's output as a plain dict, or the fact that it raised (the backend rejects some pairs)."""
    try:
        return dict(tokenizer(*args, **kwargs))
    except Exception:
        return "raised"


# ---- MiniLM: ids against the reference -----------------------------------------------------------

CALL_SETTINGS = [
    {},
    {"truncation": True},
    {"truncation": True, "max_length": 16},
    {"max_length": 16},  # a max_length alone truncates, as in the reference
    {"padding": True},
    {"padding": "longest", "truncation": True, "max_length": 16},
    {"padding": "max_length", "truncation": True, "max_length": 40},
    {"padding": "max_length", "truncation": True},  # pads to model_max_length (512)
    {"padding": True, "pad_to_multiple_of": 8},
    {"padding": False, "truncation": "longest_first", "max_length": 24},
    {"return_attention_mask": False, "return_token_type_ids": False},
    {"add_special_tokens": False, "truncation": True, "max_length": 16},
    {"padding": True, "return_length": True},
]


@pytest.mark.parametrize("settings", CALL_SETTINGS, ids=repr)
def test_batch_of_sentences_matches_reference(minilm, minilm_ref, sentences, settings):
    ours = minilm(sentences, **settings)
    ref = minilm_ref(sentences, **settings)
    assert_same_encoding(ours, ref)
    if settings.get("max_length") == 16 and settings.get("add_special_tokens", True):
        # The setting really truncates: some inputs hit the limit, none exceed it.
        assert max(len(ids) for ids in ours["input_ids"]) == 16


@pytest.mark.parametrize(
    "settings", [{}, {"truncation": True, "max_length": 16}, {"padding": "max_length", "max_length": 32}], ids=repr
)
def test_single_sentences_match_reference(minilm, minilm_ref, sentences, settings):
    for sentence in sentences:
        assert_same_encoding(minilm(sentence, **settings), minilm_ref(sentence, **settings))


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pairs_truncate_like_reference(minilm, minilm_ref, pairs, strategy):
    raised = truncated = 0
    for first, second in pairs:
        ours = outcome(minilm, first, second, truncation=strategy, max_length=16)
        ref = outcome(minilm_ref, first, second, truncation=strategy, max_length=16)
        assert ours == ref, (first, second)
        if ref == "raised":
            raised += 1
        elif len(ref["input_ids"]) == 16:
            truncated += 1
    assert truncated >= 30  # the limit really bites
    if strategy == "longest_first":
        assert raised == 0
    # The tokenizer is usable again after a pair the backend refused.
    assert dict(minilm(pairs[0][0], pairs[0][1])) == dict(minilm_ref(pairs[0][0], pairs[0][1]))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"truncation": True},
        {"truncation": "only_second", "max_length": 64},
        {"truncation": "only_first", "max_length": 64, "padding": True},
        {"truncation": "longest_first", "max_length": 16, "padding": True},
        {"padding": "max_length", "max_length": 128, "truncation": True},
    ],
    ids=repr,
)
def test_batch_of_pairs_matches_reference(minilm, minilm_ref, pairs, settings):
    firsts = [a for a, _ in pairs]
    seconds = [b for _, b in pairs]
    ours = minilm(firsts, seconds, **settings)
    assert_same_encoding(ours, minilm_ref(firsts, seconds, **settings))
    # Second segments carry token type 1, so the pair template really applied.
    assert all(1 in type_ids for type_ids in ours["token_type_ids"])


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize(
    "settings",
    [
        {"padding": True},
        {"padding": "max_length", "truncation": True, "max_length": 16},
        {"padding": True, "return_length": True},
    ],
    ids=repr,
)
def test_tensors_match_reference(minilm, minilm_ref, sentences, pairs, return_tensors, settings):
    batch = sentences[:64]
    assert_same_encoding(
        minilm(batch, return_tensors=return_tensors, **settings),
        minilm_ref(batch, return_tensors=return_tensors, **settings),
    )
    firsts, seconds = [a for a, _ in pairs[:32]], [b for _, b in pairs[:32]]
    assert_same_encoding(
        minilm(firsts, seconds, return_tensors=return_tensors, **settings),
        minilm_ref(firsts, seconds, return_tensors=return_tensors, **settings),
    )
    # A single text with tensors keeps its batch axis.
    assert_same_encoding(
        minilm(batch[0], return_tensors=return_tensors), minilm_ref(batch[0], return_tensors=return_tensors)
    )


def test_left_padding_and_keyword_overrides_match_reference(minilm_dir, transformers, sentences):
    overrides = {"padding_side": "left", "model_max_length": 20}
    ours = AutoTokenizer.from_pretrained(minilm_dir, **overrides)
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir, **overrides)
    assert ours.padding_side == "left" and ours.model_max_length == 20
    for settings in ({"padding": True}, {"padding": "max_length", "truncation": True}, {"truncation": True}):
        assert_same_encoding(ours(sentences, **settings), ref(sentences, **settings))


def test_decoding_matches_reference(minilm, minilm_ref, sentences, pairs):
    batch = minilm(sentences, padding=True)["input_ids"]
    for skip in (False, True):
        expected = minilm_ref.batch_decode(batch, skip_special_tokens=skip)
        assert minilm.batch_decode(batch, skip_special_tokens=skip) == expected
        for ids in batch[:100]:
            assert minilm.decode(ids, skip_special_tokens=skip) == minilm_ref.decode(ids, skip_special_tokens=skip)
            assert minilm.convert_ids_to_tokens(ids, skip_special_tokens=skip) == minilm_ref.convert_ids_to_tokens(
                ids, skip_special_tokens=skip
            )
    pair_ids = minilm(pairs[0][0], pairs[0][1])["input_ids"]
    assert minilm.decode(pair_ids) == minilm_ref.decode(pair_ids)
    # Tensors, numpy arrays and single ids are accepted like the reference does.
    tensor = torch.tensor(batch[:4])
    assert minilm.batch_decode(tensor) == minilm_ref.batch_decode(tensor)
    assert minilm.decode(np.array(batch[0])) == minilm_ref.decode(np.array(batch[0]))
    assert minilm.convert_ids_to_tokens(batch[0][1]) == minilm_ref.convert_ids_to_tokens(batch[0][1])
    assert minilm.decode(batch[0][1]) == minilm_ref.decode(batch[0][1])
    # And the clean-up of tokenization spaces, when asked for, is the reference's.
    for ids in batch[:100]:
        assert minilm.decode(ids, clean_up_tokenization_spaces=True) == minilm_ref.decode(
            ids, clean_up_tokenization_spaces=True
        )


def test_tokens_and_vocabulary_match_reference(minilm, minilm_ref, sentences):
    for sentence in sentences[:200]:
        assert minilm.tokenize(sentence) == minilm_ref.tokenize(sentence)
        tokens = minilm_ref.tokenize(sentence)
        assert minilm.convert_tokens_to_ids(tokens) == minilm_ref.convert_tokens_to_ids(tokens)
    assert minilm.convert_tokens_to_ids("notawordpiecetoken") == minilm_ref.convert_tokens_to_ids("notawordpiecetoken")
    assert minilm.vocab_size == minilm_ref.vocab_size
    assert len(minilm) == len(minilm_ref)
    assert minilm.get_vocab() == minilm_ref.get_vocab()
    assert minilm.model_max_length == minilm_ref.model_max_length
    assert minilm.padding_side == minilm_ref.padding_side
    assert minilm.model_input_names == minilm_ref.model_input_names
    assert minilm.special_tokens_map == minilm_ref.special_tokens_map
    assert minilm.all_special_ids == minilm_ref.all_special_ids
    for name in SPECIAL_TOKEN_NAMES:
        assert getattr(minilm, name) == getattr(minilm_ref, name), name
        assert getattr(minilm, name + "_id") == getattr(minilm_ref, name + "_id"), name
    assert str(minilm.name_or_path) == str(minilm_ref.name_or_path)
    assert "vocab_size=30522" in repr(minilm) and "\n" not in repr(minilm)


def test_baked_padding_and_truncation_do_not_leak(minilm_ref, minilm_dir):
    # The packaged tokenizer.json pads to a fixed 128 and truncates at 128.
    baked = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert baked["padding"]["strategy"] == {"Fixed": 128} and baked["truncation"]["max_length"] == 128

    minilm = AutoTokenizer.from_pretrained(minilm_dir)  # fresh: its first call must already be clean
    assert minilm.backend_tokenizer.padding is None and minilm.backend_tokenizer.truncation is None

    assert len(minilm("a short sentence")["input_ids"]) == len(minilm_ref("a short sentence")["input_ids"]) < 128
    batch = minilm(["one", "two words here"], padding=True)
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1]) < 128
    long_text = "word " * 600
    assert len(minilm(long_text)["input_ids"]) == len(minilm_ref(long_text)["input_ids"]) > 512
    assert len(minilm(long_text, truncation=True)["input_ids"]) == minilm_ref.model_max_length
    assert minilm.backend_tokenizer.padding is None and minilm.backend_tokenizer.truncation is None


def test_too_long_input_warns_once(minilm_dir, caplog):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        tokenizer("word " * 600, truncation=True)
        assert not caplog.records
        tokenizer("word " * 600)
        tokenizer("word " * 600)
    warnings = [r for r in caplog.records if r.name == "tuneforge"]
    assert len(warnings) == 1 and "512" in warnings[0].getMessage()


# ---- pad(): dynamic padding for a data collator --------------------------------------------------


def _features(tokenizer, texts, label_key="labels"):
    return [{**tokenizer(text, truncation=True, max_length=40), label_key: i % 2} for i, text in enumerate(texts)]


@pytest.mark.parametrize("label_key", ["labels", "label"])
@pytest.mark.parametrize(
    "settings",
    [
        {"return_tensors": "pt"},
        {"return_tensors": "np"},
        {},
        {"return_tensors": "pt", "pad_to_multiple_of": 8},
        {"padding": "max_length", "max_length": 48, "return_tensors": "pt"},
        {"padding": "longest", "padding_side": "left"},
        {"padding": False},
    ],
    ids=repr,
)
def test_pad_list_of_dicts_matches_reference(minilm, minilm_ref, sentences, label_key, settings):
    features = _features(minilm_ref, sentences[280:312], label_key)
    untouched = json.dumps(features)
    ours = minilm.pad(features, **settings)
    assert_same_encoding(ours, minilm_ref.pad(_features(minilm_ref, sentences[280:312], label_key), **settings))
    assert json.dumps(features) == untouched  # the caller's examples are not modified
    assert list(_to_list(ours[label_key])) == [i % 2 for i in range(32)]


def _to_list(value):
    return value.tolist() if hasattr(value, "tolist") else value


def test_pad_dict_of_lists_and_single_example_match_reference(minilm, minilm_ref, sentences):
    encoded = minilm_ref(sentences[:16])
    as_dict = {key: list(value) for key, value in encoded.items()}
    assert_same_encoding(minilm.pad(as_dict), minilm_ref.pad(dict(as_dict)))
    assert_same_encoding(minilm.pad(as_dict, return_tensors="pt"), minilm_ref.pad(dict(as_dict), return_tensors="pt"))
    single = dict(minilm_ref(sentences[0]))
    settings = {"padding": "max_length", "max_length": 32}
    assert_same_encoding(minilm.pad(dict(single), **settings), minilm_ref.pad(dict(single), **settings))
    # input_ids only (no attention mask yet): the mask is created, as by the reference.
    only_ids = [{"input_ids": ids} for ids in encoded["input_ids"]]
    assert_same_encoding(minilm.pad(only_ids), minilm_ref.pad([dict(f) for f in only_ids]))


def test_pad_tensor_examples_gives_tensors(minilm, minilm_ref, sentences):
    features = [
        {"input_ids": torch.tensor(minilm_ref(s)["input_ids"]), "labels": torch.tensor(1)} for s in sentences[:8]
    ]
    ours = minilm.pad(features)
    ref = minilm_ref.pad([dict(f) for f in features])
    assert_same_encoding(ours, ref)


def test_pad_requires_input_ids(minilm):
    with pytest.raises(ValueError, match="input_ids"):
        minilm.pad([{"labels": 1}])


# ---- BatchEncoding --------------------------------------------------------------------------------


def test_batch_encoding_is_a_dict_with_attributes_and_to(minilm, sentences):
    batch = minilm(sentences[:4], padding=True, return_tensors="pt")
    assert isinstance(batch, dict)
    assert batch.input_ids is batch["input_ids"]
    assert batch.to("cpu") is batch and batch["input_ids"].device.type == "cpu"
    with pytest.raises(AttributeError):
        batch.not_a_key
    assert len(batch.encodings) == 4


def test_datasets_map_accepts_the_output(minilm, minilm_ref, sentences):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"sentence": sentences[:40], "label": [i % 2 for i in range(40)]})
    mapped = data.map(lambda batch: minilm(batch["sentence"], truncation=True), batched=True)
    expected = minilm_ref(sentences[:40], truncation=True)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mapped[key] == expected[key]


# ---- the other loading routes: vocab.txt alone, vocab.json + merges.txt --------------------------


def _compare_folder_with_reference(folder, transformers, sentences, pairs, **overrides):
    ours = AutoTokenizer.from_pretrained(folder, **overrides)
    ref = transformers.AutoTokenizer.from_pretrained(folder, **overrides)
    assert ours.model_input_names == ref.model_input_names
    assert ours.special_tokens_map == ref.special_tokens_map
    assert (ours.vocab_size, len(ours)) == (ref.vocab_size, len(ref))
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    all_settings = (
        {},
        {"truncation": True, "max_length": 16},
        {"padding": True},
        {"padding": "max_length", "truncation": True},
    )
    for settings in all_settings:
        assert_same_encoding(ours(sentences, **settings), ref(sentences, **settings))
        assert_same_encoding(ours(firsts, seconds, **settings), ref(firsts, seconds, **settings))
    for strategy in ("longest_first", "only_first", "only_second"):
        for first, second in pairs[:50]:
            assert outcome(ours, first, second, truncation=strategy, max_length=16) == outcome(
                ref, first, second, truncation=strategy, max_length=16
            )
    assert_same_encoding(
        ours(sentences[:16], padding=True, return_tensors="pt"), ref(sentences[:16], padding=True, return_tensors="pt")
    )
    ids = ref(sentences, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(ids[0], skip_special_tokens=skip) == ref.convert_ids_to_tokens(
            ids[0], skip_special_tokens=skip
        )
    return ours, ref


def test_wordpiece_vocab_txt_folder_matches_reference(wordpiece_dir, transformers, sentences, pairs):
    ours, ref = _compare_folder_with_reference(wordpiece_dir, transformers, sentences, pairs)
    assert "token_type_ids" in ours.model_input_names
    # Special tokens in raw text stay single tokens, like the reference.
    assert dict(ours("a [MASK] film [SEP] yes")) == dict(ref("a [MASK] film [SEP] yes"))
    # The small vocabulary leaves many words to pieces and [UNK]: the comparison covers them.
    assert any(ours.unk_token_id in ids for ids in ours(sentences)["input_ids"])


def test_wordpiece_folder_honours_do_lower_case(tmp_path, sst2, transformers, sentences, pairs):
    texts = [s for s, _ in sst2("train", 400)]
    config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": False, "model_max_length": 64}
    folder = _write_wordpiece_folder(tmp_path / "cased", texts, config)
    ours, ref = _compare_folder_with_reference(folder, transformers, sentences[:100], pairs[:50])
    assert ours("The Film")["input_ids"] != ours("the film")["input_ids"]


def test_byte_level_bpe_folder_matches_reference(bpe_dir, transformers, sentences, pairs):
    ours, ref = _compare_folder_with_reference(bpe_dir, transformers, sentences, pairs)
    assert "token_type_ids" not in ours(sentences[0], sentences[1])
    assert ours.bos_token == ref.bos_token and ours.eos_token_id == ref.eos_token_id
    for sentence in sentences[:50]:
        assert ours.tokenize(sentence) == ref.tokenize(sentence)


def test_unset_model_max_length_means_no_limit(tmp_path, sst2, transformers, sentences):
    config = {"tokenizer_class": "BertTokenizer", "model_max_length": 1000000000000000019884624838656}
    folder = _write_wordpiece_folder(tmp_path / "unset", [s for s, _ in sst2("train", 400)], config)
    ours = AutoTokenizer.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.model_max_length >= 1e29
    long_text = " ".join(sentences[300:340])
    for settings in ({"truncation": True}, {"padding": "max_length"}, {"padding": "max_length", "truncation": True}):
        assert_same_encoding(ours(long_text, **settings), ref(long_text, **settings))
    assert len(ours(long_text, truncation=True)["input_ids"]) > 512


# ---- saving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder_fixture", ["minilm_dir", "wordpiece_dir", "bpe_dir"])
def test_save_round_trips_through_the_reference(folder_fixture, request, tmp_path, transformers, sentences, pairs):
    folder = request.getfixturevalue(folder_fixture)
    original_ref = transformers.AutoTokenizer.from_pretrained(folder)
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]

    saved = AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "ours")
    saved_names = sorted(Path(path).name for path in saved)
    assert saved_names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    written = json.loads((tmp_path / "ours" / "tokenizer.json").read_text(encoding="utf-8"))
    assert written["padding"] is None and written["truncation"] is None

    # ours -> reference, and ours -> ours
    for reloaded in (
        transformers.AutoTokenizer.from_pretrained(tmp_path / "ours"),
        AutoTokenizer.from_pretrained(tmp_path / "ours"),
    ):
        assert reloaded.model_input_names == original_ref.model_input_names
        assert reloaded.model_max_length == original_ref.model_max_length
        assert reloaded.special_tokens_map == original_ref.special_tokens_map
        for settings in ({}, {"truncation": True, "max_length": 16, "padding": True}):
            assert dict(reloaded(sentences, **settings)) == dict(original_ref(sentences, **settings))
            assert dict(reloaded(firsts, seconds, **settings)) == dict(original_ref(firsts, seconds, **settings))

    # reference -> ours
    original_ref.save_pretrained(tmp_path / "reference")
    ours = AutoTokenizer.from_pretrained(tmp_path / "reference")
    assert ours.model_input_names == original_ref.model_input_names
    for settings in ({}, {"truncation": True, "max_length": 16, "padding": True}):
        assert_same_encoding(ours(sentences, **settings), original_ref(sentences, **settings))
        assert_same_encoding(ours(firsts, seconds, **settings), original_ref(firsts, seconds, **settings))


# ---- errors ---------------------------------------------------------------------------------------


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        AutoTokenizer.from_pretrained(missing)


@pytest.mark.parametrize("present", [[], ["tokenizer_config.json"], ["tokenizer_config.json", "vocab.json"]])
def test_folder_without_tokenizer_files_is_a_clear_error(tmp_path, present):
    for name in present:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    with pytest.raises(OSError) as error:
        AutoTokenizer.from_pretrained(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for looked_for in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt"):
        assert looked_for in message


def test_bad_arguments_are_rejected(minilm, sentences):
    with pytest.raises(ValueError, match="padding"):
        minilm(sentences[:2], padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        minilm(sentences[:2], truncation="middle")
    with pytest.raises(TypeError):
        minilm(sentences[:2], sentences[0])
    with pytest.raises(ValueError, match="Unable to create a tensor"):
        minilm(sentences[:4], return_tensors="pt")


def test_padding_without_pad_token_is_an_error(bpe_dir):
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="padding token"):
        tokenizer(["a", "bb cc"], padding=True)
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer(["a", "bb cc"], padding=True)["input_ids"][0][-1] == tokenizer.eos_token_id


def test_constructor_takes_a_backend_tokenizer(minilm_dir, minilm_ref, sentences):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast(
        backend, tokenizer_class="BertTokenizer", model_max_length=512, **minilm_ref.special_tokens_map
    )
    assert_same_encoding(tokenizer(sentences, truncation=True), minilm_ref(sentences, truncation=True))
