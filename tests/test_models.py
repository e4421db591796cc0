"""Models and checkpoint folders against the reference (transformers), plus the bad-input contract."""
import json
import logging
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuneforge import AutoConfig, AutoModel, AutoModelForSequenceClassification
from tuneforge.checkpoint_io import CheckpointError

transformers = pytest.importorskip("transformers")

TINY = {
    "bert": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, type_vocab_size=2),
    "roberta": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1),
    "xlm-roberta": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1),
    "distilbert": dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64),
}


def reference_model(model_type, task, tmp_path, **extra):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **TINY[model_type], **extra)
    cls = transformers.AutoModel if task == "base" else transformers.AutoModelForSequenceClassification
    model = cls.from_config(config).eval()
    folder = tmp_path / f"{model_type}-{task}"
    model.save_pretrained(folder)
    return model, folder


def padded_batch(pad_id, vocab=99, lengths=(7, 3, 12, 1), extra_padding=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra_padding
    ids = torch.full((len(lengths), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        tokens = torch.randint(3, vocab, (n,), generator=g)
        tokens[tokens == pad_id] = 5
        ids[row, :n] = tokens
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_tiny_backbone_matches_reference(model_type, tmp_path):
    ref, folder = reference_model(model_type, "base", tmp_path)
    ours = AutoModel.from_pretrained(folder)
    ids, mask = padded_batch(ref.config.pad_token_id)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    assert torch.all(got[~real] == 0), "padding positions are never computed"


@pytest.mark.parametrize("model_type", sorted(TINY))
@pytest.mark.parametrize("problem_type,num_labels", [("single_label_classification", 3),
                                                     ("multi_label_classification", 4), ("regression", 1)])
def test_tiny_classifier_logits_and_loss_match_reference(model_type, problem_type, num_labels, tmp_path):
    ref, folder = reference_model(model_type, "cls", tmp_path, num_labels=num_labels, problem_type=problem_type)
    ours = AutoModelForSequenceClassification.from_pretrained(folder)
    ids, mask = padded_batch(ref.config.pad_token_id)
    g = torch.Generator().manual_seed(1)
    if problem_type == "single_label_classification":
        labels = torch.randint(0, num_labels, (ids.shape[0],), generator=g)
    elif problem_type == "multi_label_classification":
        labels = torch.randint(0, 2, (ids.shape[0], num_labels), generator=g).float()
    else:
        labels = torch.randn(ids.shape[0], generator=g)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-4)


def test_problem_type_inferred_like_reference(tmp_path):
    _, folder = reference_model("bert", "cls", tmp_path, num_labels=3)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ids, mask = padded_batch(0)
    model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 0]))
    assert model.config.problem_type == "single_label_classification"


NO_DROPOUT = {"bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
              "distilbert": dict(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)}


@pytest.mark.parametrize("model_type", sorted(TINY))
@pytest.mark.parametrize("lengths,extra_padding", [((12, 7, 3, 12, 1, 6, 3, 11, 12), 2), ((5, 5, 5), 0)],
                         ids=["padded-groups", "no-padding"])
def test_gradients_match_reference(model_type, lengths, extra_padding, tmp_path):
    """Training depends on backward too: parameter gradients equal the reference's, also in the last block,
    which computes only the first token of each sequence (several groups, some of equal-length sequences)."""
    dropout = NO_DROPOUT["distilbert" if model_type == "distilbert" else "bert"]
    ref, folder = reference_model(model_type, "cls", tmp_path, num_labels=3, **dropout)
    ours = AutoModelForSequenceClassification.from_pretrained(folder).train()
    ref.train()
    ids, mask = padded_batch(ref.config.pad_token_id, lengths=lengths, extra_padding=extra_padding)
    labels = torch.arange(len(lengths)) % 3
    ref(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours(ids, attention_mask=mask, labels=labels).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-6, rtol=1e-4, msg=name)



@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("backward_under_autocast", [True, False], ids=["trainer", "torch-recipe"])
def test_training_under_bf16_autocast_stays_close_to_float32(model_type, dropout, backward_under_autocast, tmp_path):
    """Under autocast (the Trainer's bf16=True, or torch's recipe: forward under autocast, backward after it) the
    written-out attention sees bfloat16 and float32 tensors and must still run its backward; the gradients stay
    close to float32's (same dropout masks)."""
    rates = {"bert": dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout),
             "distilbert": dict(dropout=dropout, attention_dropout=dropout, seq_classif_dropout=dropout)}
    _, folder = reference_model(model_type, "cls", tmp_path, num_labels=3, **rates[model_type])
    model = AutoModelForSequenceClassification.from_pretrained(folder).train()
    ids, mask = padded_batch(0, lengths=(12, 7, 3, 12, 1, 6))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(ids, attention_mask=mask, labels=labels).loss
            if backward_under_autocast:
                loss.backward()
        if not backward_under_autocast:
            loss.backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert torch.isfinite(grads[1]).all()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99

def test_padding_max_length_equals_dynamic_padding(tmp_path):
    _, folder = reference_model("bert", "cls", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    short_ids, short_mask = padded_batch(0, extra_padding=0)
    long_ids, long_mask = padded_batch(0, extra_padding=50)
    with torch.no_grad():
        torch.testing.assert_close(model(long_ids, attention_mask=long_mask).logits,
                                   model(short_ids, attention_mask=short_mask).logits, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------- packaged MiniLM


def test_minilm_hidden_states_match_reference(minilm_dir, sst2):
    sentences = [s for s, _ in sst2("test", limit=32)]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    ours = AutoModel.from_pretrained(minilm_dir)
    with torch.no_grad():
        expected = ref(**batch)
        got = ours(**batch)
    real = batch["attention_mask"].bool()
    assert (~real).any(), "the batch must contain padding"
    torch.testing.assert_close(got.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)


def test_minilm_classifier_round_trip_with_reference(minilm_dir, sst2, tmp_path):
    """Ours saves a fine-tuned classifier with string labels; the reference loads it with equal logits, and back."""
    labels = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, id2label=labels)
    with torch.no_grad():  # stand-in for fine-tuning: move every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    model.save_pretrained(tmp_path / "ours")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok([s for s, _ in sst2("test", limit=16)], padding=True, return_tensors="pt")

    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert ref.config.id2label == labels and ref.config.label2id == {"negative": 0, "positive": 1}
    with torch.no_grad():
        torch.testing.assert_close(ref(**batch).logits, model(**batch).logits, atol=1e-4, rtol=0)

    ref.save_pretrained(tmp_path / "theirs")
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "theirs")
    assert back.config.id2label == labels
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, ref(**batch).logits, atol=1e-4, rtol=0)


def test_fresh_head_is_reported_in_one_warning(minilm_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "Some weights of BertForSequenceClassification were not initialized" in messages[0]
    assert "['classifier.bias', 'classifier.weight']" in messages[0]
    assert "pooler" not in messages[0]


def test_config_overrides_pass_through(minilm_dir):
    config = AutoConfig.from_pretrained(minilm_dir, num_labels=5, hidden_dropout_prob=0.0,
                                        problem_type="multi_label_classification")
    assert config.num_labels == 5 and config.id2label[4] == "LABEL_4" and config.hidden_dropout_prob == 0.0
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, id2label={0: "bad", 1: "good"})
    assert model.config.label2id == {"bad": 0, "good": 1} and model.classifier.out_features == 2
    with pytest.raises(TypeError, match="num_lables"):
        AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_lables=5)


# ------------------------------------------------------------------------------------- weight formats


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def test_sharded_bin_legacy_and_prefix_formats_load_the_same_weights(tmp_path):
    ref, folder = reference_model("bert", "cls", tmp_path, num_labels=2)
    expected = AutoModelForSequenceClassification.from_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    ids, mask = padded_batch(0)
    config = json.loads((folder / "config.json").read_text())

    def folder_with(name, writer):
        out = tmp_path / name
        out.mkdir()
        (out / "config.json").write_text(json.dumps(config))
        writer(out)
        return out

    keys = sorted(state)
    half = len(keys) // 2

    def sharded(out):
        shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
        for shard, names in shards.items():
            save_file({k: state[k] for k in names}, out / shard)
        index = {"metadata": {}, "weight_map": {k: s for s, names in shards.items() for k in names}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index))

    def legacy_bin(out):
        legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                  for k, v in state.items()}
        torch.save(legacy, out / "pytorch_model.bin")

    for writer in (sharded, legacy_bin):
        model = AutoModelForSequenceClassification.from_pretrained(folder_with(writer.__name__, writer))
        torch.testing.assert_close(_logits(model, ids, mask), _logits(expected, ids, mask), atol=0, rtol=0)

    # A classifier checkpoint ('bert.' prefix) loaded as a bare backbone, and a backbone under a head.
    base = AutoModel.from_pretrained(folder)
    ref_base = ref.bert
    with torch.no_grad():
        torch.testing.assert_close(base(ids, attention_mask=mask).last_hidden_state[mask.bool()],
                                   ref_base(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()],
                                   atol=1e-5, rtol=1e-4)


def test_head_size_mismatch_is_an_error_unless_ignored(tmp_path, caplog):
    _, folder = reference_model("bert", "cls", tmp_path, num_labels=2)
    with pytest.raises(CheckpointError, match=r"classifier\.weight is \[2, 32\] in the checkpoint, \[5, 32\] in the model.*ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 5
    assert "found shape [2, 32] in the checkpoint and [5, 32] in the model" in caplog.text
    assert "newly initialized: ['classifier.bias', 'classifier.weight']" in caplog.text


def test_loaded_weights_are_the_files_tensors_yet_training_never_writes_the_file(tmp_path):
    # Loading takes the checkpoint's tensors as the parameters (no second copy in memory); they may be backed by
    # the file's pages, so an in-place update (an optimizer step) must stay in memory, and saving over the same
    # folder must not change what the model holds.
    reference, folder = reference_model("bert", "cls", tmp_path, num_labels=2)
    before = (folder / "model.safetensors").read_bytes()
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    assert (folder / "model.safetensors").read_bytes() == before
    expected = {k: v + 1.0 for k, v in reference.state_dict().items() if v.is_floating_point()}
    model.save_pretrained(folder)  # atomically replaces the file the parameters were read from
    held = {k: v for k, v in model.state_dict().items() if k in expected}
    assert all(torch.equal(held[k], expected[k]) for k in held)
    assert all(p.requires_grad for p in model.parameters())
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    assert all(torch.equal(reloaded[k], held[k]) for k in held)


# ----------------------------------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"model folder {tmp_path / 'nope'} does not exist"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        AutoModel.from_pretrained(tmp_path)


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    supported = "bert, distilbert, gpt2, llama, mistral, qwen2, qwen3, roberta, xlm-roberta"
    with pytest.raises(CheckpointError, match=f"'gpt_neox'.*supported: {supported}"):
        AutoModel.from_pretrained(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    _, folder = reference_model("bert", "base", tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        AutoModel.from_pretrained(folder)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_not_executed(tmp_path):
    _, folder = reference_model("bert", "base", tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "executed"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": _Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin was refused"):
        AutoModel.from_pretrained(folder)
    assert not marker.exists()


def test_text_longer_than_position_limit(tmp_path):
    _, folder = reference_model("bert", "cls", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ids = torch.randint(3, 99, (1, 80))
    with pytest.raises(ValueError, match="longer than this model's position limit of 64 tokens.*truncation=True"):
        model(ids)


@pytest.mark.parametrize("size", [5_000, 200_000])  # random bits from torch's generator, and from numpy's SFC64
@pytest.mark.parametrize("p", [0.1, 0.25, 0.9])
def test_dropout_keeps_the_distribution_and_gradient(size, p):
    from tuneforge.models.layers import Dropout, _dropout_scale
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(size, requires_grad=True)
    ys = [drop(x) for _ in range(1_000_000 // size)]
    kept = torch.stack(ys) != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.002)  # a million draws: sd <= 0.0005
    neighbours = (kept[:, 1:] & kept[:, :-1]).float().mean().item()  # each value has its own bits
    assert neighbours == pytest.approx((1 - p) ** 2, abs=0.003)
    assert not torch.equal(kept[0], kept[1])
    y = ys[0]
    assert torch.allclose(y[kept[0]], torch.full_like(y[kept[0]], 1 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept[0].float() / (1 - p))
    torch.manual_seed(0)
    assert torch.equal(drop(x) != 0, kept[0])  # torch's seed fixes the masks
    assert torch.equal(drop.eval()(x), x)
    assert not _dropout_scale(x, 1.0).any()


def test_first_token_attention_equals_attention_on_projected_keys_and_values():
    """The last block under a classification head folds the key and value projections into its B queries, with a
    LoRA update on the value's (s B A added to its weight); the attention, and every gradient, equal projecting
    all tokens and attending from the first one."""
    import torch.nn.functional as F
    from tuneforge.models.attention import Packing, first_token_attention
    from tuneforge.models.layers import LinearParts
    torch.manual_seed(0)
    lengths = [9, 40, 1, 22, 37, 3, 21, 9]  # not in packing order
    mask = torch.tensor([[1] * n + [0] * (40 - n) for n in lengths])
    packing = Packing.from_mask(mask, mask.shape, "cpu")
    assert len(packing.groups) > 2
    key, value = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
    lora_a, lora_b = torch.randn(4, 32, requires_grad=True), torch.randn(32, 4, requires_grad=True)
    keys, values = LinearParts(key.weight, key.bias), LinearParts(value.weight, value.bias, lora_a, lora_b, 0.5)
    x = torch.randn(len(lengths), 40, 32, requires_grad=True)  # (B, T, H)
    q = torch.randn(len(lengths), 32, requires_grad=True)  # (B, H), one query per sequence in input order
    packed_q = q[torch.argsort(packing.restore)]  # (B, H) in packing order
    got = packing.to_input_order(first_token_attention(packed_q, packing.pack(x), keys, values, packing, 4, 0.0))
    projected = key(x), value(x) + 0.5 * (x @ lora_a.t()) @ lora_b.t()
    k, v = (t.view(len(lengths), 40, 4, 8).transpose(1, 2) for t in projected)  # (B, nh, T, d)
    want = F.scaled_dot_product_attention(q.view(-1, 4, 1, 8), k, v, attn_mask=mask.bool()[:, None, None, :])
    want = want.reshape(len(lengths), 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(want)
    names = ["x", "q", "key.weight", "key.bias", "value.weight", "value.bias", "lora_A", "lora_B"]
    tensors = [x, q, key.weight, key.bias, value.weight, value.bias, lora_a, lora_b]
    grads_got = torch.autograd.grad(got, tensors, upstream)
    grads_want = torch.autograd.grad(want, tensors, upstream)
    for name, a, b in zip(names, grads_got, grads_want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)

    # With dropout, the backward is checked numerically, with the same masks at every evaluation.
    small = Packing.from_mask(mask[:, :6], (len(lengths), 6), "cpu")
    k64, v64 = (LinearParts(m.weight, m.bias) for m in (torch.nn.Linear(32, 32).double() for _ in range(2)))

    def seeded(q, x):
        torch.manual_seed(1)
        return first_token_attention(q, x, k64, v64, small, 4, 0.3)
    inputs = (torch.randn(len(lengths), 32, dtype=torch.float64, requires_grad=True),
              torch.randn(int(mask[:, :6].sum()), 32, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(seeded, inputs)
    assert not torch.allclose(seeded(*inputs), first_token_attention(*inputs, k64, v64, small, 4, 0.0))


def test_attention_groups_equal_one_padded_grid():
    """Bucketing sequences by length for attention changes nothing but the work done."""
    import torch.nn.functional as F
    from tuneforge.models.attention import Packing, packed_attention
    torch.manual_seed(0)
    lengths = [40, 37, 22, 21, 9, 9, 3, 1]
    mask = torch.tensor([[1] * n + [0] * (40 - n) for n in lengths])
    packing = Packing.from_mask(mask, mask.shape, "cpu")
    assert len(packing.groups) > 2 and sum(g.seqs for g in packing.groups) == len(lengths)
    q, k, v = (torch.randn(len(lengths), 40, 4, 8) for _ in range(3))  # (B, T, nh, d)
    qkv = torch.cat([packing.pack(t.flatten(2)) for t in (q, k, v)], 1)  # (N, 3H)
    got = packing.unpack(packed_attention(qkv, packing, 4, 0.0))
    grid = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                          attn_mask=mask.bool()[:, None, None, :]).transpose(1, 2).flatten(2)
    torch.testing.assert_close(got[mask.bool()], grid[mask.bool()], atol=1e-5, rtol=1e-5)


def test_attention_is_the_same_for_any_mask_layout():
    """Packing keeps each sequence's real tokens in order wherever the padding sits (right, left, or gaps), so the
    training, inference and first-token attention give the same rows, and the same gradients, as right padding."""
    from tuneforge.models.attention import Packing, first_token_attention, packed_attention, packed_attention_cpu
    from tuneforge.models.layers import LinearParts
    torch.manual_seed(0)
    lengths = [9, 3, 7, 9, 1, 4]
    right = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    left = right.flip(1)
    gaps = torch.zeros_like(right)
    for row, n in enumerate(lengths):
        gaps[row, torch.randperm(9)[:n].sort().values] = 1
    qkv = torch.randn(int(right.sum()), 3 * 8, dtype=torch.float64)  # packed rows: sequence by sequence, in order
    q, x = torch.randn(len(lengths), 8, dtype=torch.float64), qkv[:, :8]
    key, value = (LinearParts(m.weight, m.bias) for m in (torch.nn.Linear(8, 8).double() for _ in range(2)))
    results = []
    for mask in (right, left, gaps):
        packing = Packing.from_mask(mask, mask.shape, "cpu")
        assert packing.grid_rows is not None
        train_in = qkv.clone().requires_grad_()
        train = packed_attention_cpu(train_in, packing, 2, 0.0)
        train.backward(torch.ones_like(train))
        with torch.no_grad():
            infer = packed_attention(qkv, packing, 2, 0.0)
        first = first_token_attention(q, x.requires_grad_(), key, value, packing, 2, 0.0)
        (dx,) = torch.autograd.grad(first.sum(), x)
        x.requires_grad_(False)
        results.append((train, train_in.grad, infer, first, dx))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            torch.testing.assert_close(got, want)


def test_training_attention_equals_sdpa_and_its_backward_is_exact():
    """The written-out training attention (forward and backward by hand, per length group): without dropout it equals
    SDPA on one padded grid, gradients included; with dropout its backward is checked numerically, in float64 and
    with the same dropout masks at every evaluation, and the dropout is unbiased."""
    import torch.nn.functional as F
    from tuneforge.models.attention import Packing, packed_attention_cpu
    torch.manual_seed(0)
    lengths = [9, 3, 7, 9, 1, 4]  # groups of equal and unequal lengths, not in length order
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    packing = Packing.from_mask(mask, mask.shape, "cpu")
    assert len(packing.groups) > 2 and any(g.key_mask is None for g in packing.groups)
    qkv = torch.randn(len(lengths), 9, 3, 2, 4)  # (B, T, q/k/v, nh, d)
    packed = packing.pack(qkv.flatten(2)).requires_grad_()  # (N, 3H)
    got = packed_attention_cpu(packed, packing, 2, 0.0)
    grid = qkv.clone().requires_grad_()
    want = F.scaled_dot_product_attention(*(grid[:, :, i].transpose(1, 2) for i in range(3)),
                                          attn_mask=mask.bool()[:, None, None, :]).transpose(1, 2).flatten(2)
    want = packing.pack(want)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(got)
    (grad_got,) = torch.autograd.grad(got, packed, upstream)
    (grad_want,) = torch.autograd.grad(want, grid, upstream)
    torch.testing.assert_close(grad_got, packing.pack(grad_want.flatten(2)), atol=1e-5, rtol=1e-5)

    def seeded(x):
        torch.manual_seed(1)
        return packed_attention_cpu(x, packing, 2, 0.3)
    assert torch.autograd.gradcheck(seeded, packed.detach().double().requires_grad_())
    with torch.no_grad():
        dropped = torch.stack([packed_attention_cpu(packed, packing, 2, 0.3) for _ in range(4000)])
    assert not torch.allclose(dropped[0], got)
    torch.testing.assert_close(dropped.mean(0), got.detach(), atol=0.08, rtol=0)


def test_written_out_attention_edge_settings():
    """Attention dropout of 1 keeps nothing (as F.dropout does), and float64 under bf16 autocast stays float64."""
    from tuneforge.models.attention import Packing, self_attention
    packing = Packing.from_mask(torch.tensor([[1, 1, 1], [1, 1, 0]]), (2, 3), "cpu")
    linears = [torch.nn.Linear(8, 8).double() for _ in range(3)]
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    for h in (x, x[packing.starts]):  # all tokens, and the last block's first tokens
        assert not self_attention(h, x, packing, *linears, 2, 1.0).any()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self_attention(h, x, packing, *linears, 2, 0.1)
        assert out.dtype == torch.float64
        out.sum().backward()
        assert x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()

@pytest.mark.parametrize("name", ["gelu", "gelu_new", "relu", "silu", "tanh"])
@pytest.mark.parametrize("out_dropout, mlp_dropout", [(0.0, 0.0), (0.3, 0.2), (0.0, 0.2)])  # BERT's, DistilBERT's
def test_written_out_post_attention_equals_autograd(name, out_dropout, mlp_dropout):
    """The block after attention, with its backward written out, gives autograd's output and gradients for the
    formula, with the same dropout masks, also with some inputs and parameters frozen (their gradients are skipped)."""
    from tuneforge.models.layers import activation, dropout, post_attention
    torch.manual_seed(0)
    out, fc1, fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 20), torch.nn.Linear(20, 8)
    norm1, norm2 = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
    modules = [m.double() for m in (out, norm1, fc1, fc2, norm2)]
    for m in (norm1, norm2):  # not the initial ones and zeros, so that their gradients matter
        torch.nn.init.normal_(m.weight), torch.nn.init.normal_(m.bias)
    act = activation(name)
    a, x = (torch.randn(6, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def want():
        h = norm1(x + dropout(out(a), out_dropout))
        return norm2(h + dropout(fc2(act.forward(fc1(h))), mlp_dropout))

    everything = [a, x] + [p for m in modules for p in m.parameters()]
    for frozen in ([], [fc1.weight, norm1.bias, out.weight, norm2.weight, x],
                   [a, out.bias, norm1.weight, fc1.bias, fc2.weight, norm2.bias]):
        for p in everything:
            p.requires_grad_(all(p is not f for f in frozen))
        tensors = [p for p in everything if p.requires_grad]
        upstream = torch.randn(6, 8, dtype=torch.float64)
        results = []
        for run in (want, lambda: post_attention(a, x, out, norm1, fc1, act, fc2, norm2, out_dropout, mlp_dropout)):
            torch.manual_seed(1)
            y = run()
            results.append((y, torch.autograd.grad(y, tensors, upstream)))
        (y_want, grads_want), (y_got, grads_got) = results
        assert y_got.grad_fn is not None and "PostAttention" in type(y_got.grad_fn).__name__
        torch.testing.assert_close(y_got, y_want, atol=1e-12, rtol=1e-12)
        for i, (got, expected) in enumerate(zip(grads_got, grads_want)):
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10, msg=f"gradient {i}")
    torch.manual_seed(1)
    if out_dropout or mlp_dropout:  # the masks are drawn, and differ from one call to the next
        assert not torch.allclose(post_attention(a, x, out, norm1, fc1, act, fc2, norm2, out_dropout, mlp_dropout),
                                  post_attention(a, x, out, norm1, fc1, act, fc2, norm2, out_dropout, mlp_dropout))


def test_post_attention_keeps_less_for_relu_and_leaves_hooked_or_replaced_modules_to_the_modules():
    import torch.nn.functional as F
    from tuneforge.models.layers import activation, post_attention
    torch.manual_seed(0)
    out, fc1, fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 20), torch.nn.Linear(20, 8)
    norm1, norm2 = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
    a, x = (torch.randn(6, 8, requires_grad=True) for _ in range(2))

    def run(act="gelu", p=0.1):
        return post_attention(a, x, out, norm1, fc1, activation(act), fc2, norm2, p, p)
    for act, kept in (("gelu", 2), ("relu", 1), ("tanh", 1)):  # (6, 20) tensors kept: input and output, or output
        saved = run(act).grad_fn.saved_tensors
        assert sum(t is not None and t.shape == (6, 20) for t in saved) == kept, act
    calls = []
    hook = fc1.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    y = run()
    assert calls == [(6, 20)] and "PostAttention" not in type(y.grad_fn).__name__
    hook.remove()

    class Doubled(torch.nn.Linear):  # a wrapper in place of a Linear, as LoRA libraries put them
        def forward(self, h):
            return 2 * super().forward(h)
    fc2 = Doubled(20, 8)
    h = norm1(x + out(a))
    torch.testing.assert_close(run(p=0.0), norm2(h + 2 * F.linear(F.gelu(fc1(h)), fc2.weight, fc2.bias)))


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_models_pickle(model_type, tmp_path):
    """torch.save(model) pickles the whole module, activations included."""
    _, folder = reference_model(model_type, "cls", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    copy = pickle.loads(pickle.dumps(model))
    ids, mask = padded_batch(0)
    torch.testing.assert_close(copy(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_the_same_gradients(dropout, tmp_path):
    """With dropout, the recomputed forward must draw the same masks as the first one."""
    _, folder = reference_model("distilbert", "cls", tmp_path, num_labels=3, dropout=dropout,
                                attention_dropout=dropout, seq_classif_dropout=dropout)
    ids, mask = padded_batch(0)
    labels = torch.tensor([0, 1, 2, 1])
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForSequenceClassification.from_pretrained(folder).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.distilbert.transformer.gradient_checkpointing
        torch.manual_seed(0)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
@pytest.mark.parametrize("projection", ["query", "key", "value"])
@pytest.mark.parametrize("training", [False, True])
def test_hooked_projections_are_seen_by_every_fast_path(model_type, projection, training, tmp_path):
    """A forward hook (or a LoRA-style replacement) on an attention projection changes what it computes: the fused
    QKV GEMM, the written-out training attention and the folded first-token attention must all see it."""
    names = {"bert": {"query": "query", "key": "key", "value": "value"},
             "distilbert": {"query": "q_lin", "key": "k_lin", "value": "v_lin"}}[model_type]
    extra = (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) if model_type == "bert"
             else dict(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0))
    ref, folder = reference_model(model_type, "cls", tmp_path, num_labels=3, **extra)
    ours = AutoModelForSequenceClassification.from_pretrained(folder)
    for model in (ref, ours):
        for name, module in model.named_modules():
            if name.endswith(names[projection]):
                module.register_forward_hook(lambda m, args, out: out * 3.0 + 0.5)
        model.train(training)
    ids, mask = padded_batch(ref.config.pad_token_id)
    with torch.set_grad_enabled(training):
        expected = ref(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_saved_files_get_a_normal_files_mode(tmp_path):
    """Atomic writes go through a private temporary file; the saved file must still be readable by the group and
    others as the umask allows, like any file the user writes."""
    import os
    _, folder = reference_model("bert", "base", tmp_path)
    model = AutoModel.from_pretrained(folder)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "saved")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "saved" / name).stat().st_mode & 0o777 == 0o644, name


def test_save_pretrained_takes_the_references_arguments(tmp_path):
    """Shards (max_shard_size, with their index), variants, is_main_process and accelerate's save_function, as the
    reference writes and reads them; a second save in another layout leaves no stale weights behind."""
    ref, folder = reference_model("bert", "sequence", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ids, mask = padded_batch(ref.config.pad_token_id)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
    out = tmp_path / "saved"
    model.save_pretrained(out, max_shard_size="20KB", save_function=torch.save)
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert all((out / s).stat().st_size < 20_000 + 2_000 for s in shards)  # a shard, its header aside
    model.save_pretrained(out, variant="v2")
    assert (out / "model.v2.safetensors").is_file()
    for variant in (None, "v2"):  # both layouts load, in the reference too
        for loaded in (AutoModelForSequenceClassification.from_pretrained(out, variant=variant),
                       transformers.AutoModelForSequenceClassification.from_pretrained(out, variant=variant)):
            with torch.no_grad():
                torch.testing.assert_close(loaded.eval()(input_ids=ids, attention_mask=mask).logits, expected,
                                           atol=1e-5, rtol=1e-4)
    model.save_pretrained(out)  # one file again: the shards and their index go
    assert sorted(p.name for p in out.iterdir() if "safetensors" in p.name) == ["model.safetensors",
                                                                                 "model.v2.safetensors"]
    model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()
    with pytest.raises(CheckpointError, match="variant 'v3'.*model.v3.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(out, variant="v3")
    with pytest.raises(ValueError, match="max_shard_size='lots'"):
        model.save_pretrained(out, max_shard_size="lots")
    with pytest.raises(TypeError, match="save_pretrained.*shard_size"):
        model.save_pretrained(out, shard_size="1GB")


def test_from_pretrained_takes_the_keywords_scripts_pass_as_the_reference(tmp_path):
    """dtype / torch_dtype (a dtype, its name, "auto"), device_map in its single-device forms, and the hub and
    loading keywords give the model the reference gives; what tuneforge cannot do is refused by name."""
    ref, folder = reference_model("bert", "sequence", tmp_path)
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    cases = [{}, dict(torch_dtype=torch.bfloat16), dict(dtype="bfloat16"), dict(dtype="auto"), dict(device_map="cpu"),
             dict(device_map="auto"), dict(device_map={"": "cpu"}), dict(device_map=torch.device("cpu")),
             dict(low_cpu_mem_usage=True, force_download=False, local_files_only=True, trust_remote_code=False,
                  cache_dir=str(tmp_path / "cache"), attn_implementation="sdpa")]
    for source in (folder, tmp_path / "bf16"):
        for kwargs in cases:
            ours = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
            theirs = transformers.AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
            for mine, reference in zip(ours.parameters(), theirs.parameters()):
                assert (mine.dtype, mine.device) == (reference.dtype, reference.device), (source.name, kwargs)
    with pytest.raises(ValueError, match=r"trust_remote_code=True\) is refused"):
        AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="device_map='balanced'"):
        AutoModelForSequenceClassification.from_pretrained(folder, device_map="balanced")
