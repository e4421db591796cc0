"""Decoder families (Llama, Mistral, Qwen2, Qwen3, GPT-2) against the reference on tiny random configs: backbone,
causal LM and sequence classification (logits, losses, gradients), generation, folders both ways, and the specs."""
import json

import pytest
import torch

from tuneforge import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from tuneforge.checkpoint_io import CheckpointError

transformers = pytest.importorskip("transformers")

LLAMA_LIKE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = {
    "llama": LLAMA_LIKE,
    "llama3-rope": {**LLAMA_LIKE, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "rope_theta": 500000.0,
                                                      "original_max_position_embeddings": 16}},
    "llama-tied-bias": {**LLAMA_LIKE, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True},
    "mistral": {**LLAMA_LIKE, "sliding_window": 4},
    "qwen2": {**LLAMA_LIKE, "num_key_value_heads": 1},
    "qwen3": {**LLAMA_LIKE, "head_dim": 16},
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}
MODEL_TYPE = {"llama3-rope": "llama", "llama-tied-bias": "llama"}
CLASSES = {"base": (transformers.AutoModel, AutoModel),
           "causal_lm": (transformers.AutoModelForCausalLM, AutoModelForCausalLM),
           "sequence_classification": (transformers.AutoModelForSequenceClassification,
                                       AutoModelForSequenceClassification)}


def reference_model(name, task, folder, **extra):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(MODEL_TYPE.get(name, name), **TINY[name], **extra)
    model = CLASSES[task][0].from_config(config).eval()
    model.save_pretrained(folder)
    return model


def batch(lengths=(9, 5, 12, 1), side="right", pad_id=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids, mask = torch.full((len(lengths), width), pad_id), torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.randint(3, 99, (n,), generator=g)
        mask[row, cols] = 1
    return ids, mask


def grads(model):
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(ours, ref):
    """The same parameters got a gradient in both models, and equal ones."""
    ref_grads, our_grads = grads(ref), grads(ours)
    assert ref_grads.keys() == our_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(our_grads[key], ref_grads[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_causal_lm_logits_loss_and_gradients_match_reference(name, tmp_path):
    ref = reference_model(name, "causal_lm", tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :3] = -100  # a prompt that carries no loss
    expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-5, rtol=1e-4)
    assert torch.all(got.logits[~real] == 0), "padding positions are never computed"
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, ref)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("side", ["right", "left"])
def test_tiny_sequence_classification_matches_reference(name, side, tmp_path):
    if side == "left" and name == "gpt2":
        pytest.skip("the reference numbers GPT-2's positions from the grid's first column, padding included")
    ref = reference_model(name, "sequence_classification", tmp_path, num_labels=3)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = batch(side=side)
    labels = torch.tensor([0, 2, 1, 2])
    expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)
    expected.loss.backward()
    got.loss.backward()
    for key, grad in grads(ref).items():
        torch.testing.assert_close(grads(ours)[key], grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen3"])
def test_tiny_backbone_matches_reference(name, tmp_path):
    ref = reference_model(name, "base", tmp_path)
    ours = AutoModel.from_pretrained(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen3", "gpt2"])
def test_greedy_generation_equals_reference_on_left_padded_prompts(name, tmp_path):
    ref = reference_model(name, "causal_lm", tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch(lengths=(6, 3, 9), side="left")
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = ref.generate(input_ids=ids, attention_mask=mask, **settings)
    got = ours.generate(ids, attention_mask=mask, **settings)
    assert torch.equal(got, expected)


def test_generation_stops_at_eos_and_pads_finished_rows(tmp_path):
    reference_model("llama", "causal_lm", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch(lengths=(4, 7), side="left")
    free = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 1])  # make row 0's second new token the end of its text
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    assert out[0, ids.shape[1] + 1] == eos and torch.all(out[0, ids.shape[1] + 2:] == 0)
    row1 = free[1, ids.shape[1]:]
    if eos not in row1.tolist():
        assert torch.equal(out[1, :free.shape[1]], free[1])


def test_sampling_follows_its_settings(tmp_path):
    reference_model("llama", "causal_lm", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch(lengths=(5, 3), side="left")
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    top1 = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(top1, greedy), "top_k=1 keeps only the most likely token"
    draws = [model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, temperature=5.0,
                            generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    with pytest.raises(ValueError, match="num_beams=4 is not implemented"):
        model.generate(ids, max_new_tokens=2, num_beams=4)
    with pytest.raises(ValueError, match="position limit of 64"):
        model.generate(ids, max_new_tokens=61)  # 5 + 61 - 1 positions: the last new token is never fed back
    assert model.generate(ids, attention_mask=mask, max_new_tokens=60).shape == (2, ids.shape[1] + 60)
    with pytest.raises(ValueError, match="min_p=0.5 is not implemented"):
        model.generate(ids, max_new_tokens=2, do_sample=True, min_p=0.5)


def test_our_folder_loads_in_the_reference_with_the_same_logits(tmp_path):
    for name in ("llama-tied-bias", "gpt2"):
        reference_model(name, "causal_lm", tmp_path / "ref")
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(0.01)  # trained a little: the saved weights are ours, not the reference's
        ours.save_pretrained(tmp_path / "ours")
        ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
        ids, mask = batch()
        with torch.no_grad():
            expected, got = ref(input_ids=ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
        if ours.config.tie_word_embeddings:
            assert ours.lm_head.weight is ours.get_input_embeddings().weight


@pytest.mark.parametrize("name,blocks", [("llama", "model.layers"), ("gpt2", "transformer.h")])
def test_spec_names_blocks_and_embeddings(name, blocks, tmp_path):
    reference_model(name, "causal_lm", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.blocks() is model.get_submodule(blocks)
    assert model.get_input_embeddings().weight.shape == (99, 32)


@pytest.mark.parametrize("model_type,values,message", [
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                           "original_max_position_embeddings": 32}}, "rope type 'yarn'"),
    ("llama", {"pretraining_tp": 2}, "pretraining_tp=2"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
])
def test_options_we_do_not_implement_are_refused_by_name(model_type, values, message, tmp_path):
    config = transformers.AutoConfig.for_model(model_type, **TINY[model_type])
    for key, value in values.items():
        setattr(config, key, value)
    config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        AutoConfig.from_pretrained(tmp_path)


def test_a_task_the_family_lacks_is_one_clear_error(tmp_path):
    config = transformers.AutoConfig.for_model("bert", vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=37)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="'bert'.*has no causal_lm model; model types that do: gpt2, llama"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def documented_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False):
    """torch's varlen_attn as its docstring defines it, on CPU: sequences bounded by cu, (W, 0) = causal with W
    tokens to the left, GQA when asked."""
    assert window_size[1] == 0 and q.dtype == k.dtype
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    out = torch.empty_like(q)
    for a, b in zip(cu_q.tolist(), cu_q.tolist()[1:]):
        i = torch.arange(b - a)
        seen = i[None, :] <= i[:, None]
        if window_size[0] >= 0:
            seen &= i[:, None] - i[None, :] <= window_size[0]
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), attn_mask=seen).transpose(0, 1)
    return out


@pytest.mark.parametrize("window,kv_heads", [(None, 4), (None, 2), (3, 2)])
def test_the_cuda_varlen_path_calls_flash_attention_as_documented(window, kv_heads, monkeypatch):
    """CI has no GPU: the varlen call is checked against the documented semantics, on the packing's bounds."""
    from tuneforge.models import attention
    from tuneforge.models.attention import Packing, packed_attention, varlen_attention
    monkeypatch.setattr(attention, "_varlen", lambda: documented_varlen_attn)
    ids, mask = batch(lengths=(9, 5, 12, 1))
    packing = Packing.from_mask(mask, ids.shape, ids.device)
    qkv = torch.randn(sum(packing.lengths), (4 + 2 * kv_heads) * 8, dtype=torch.float64)
    expected = packed_attention(qkv, packing, 4, 0.0, kv_heads, causal=True, window=window)
    torch.testing.assert_close(varlen_attention(qkv, packing, 4, kv_heads, window), expected)


def test_generation_defaults_and_masks_follow_the_reference(tmp_path):
    ref = reference_model("llama", "causal_lm", tmp_path / "ref")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
    ids, mask = batch(lengths=(6, 3), side="left")
    # Neither max_new_tokens nor max_length: 20 new tokens; no attention_mask: padding found by pad_token_id.
    expected = ref.generate(input_ids=ids, attention_mask=mask, do_sample=False)
    assert torch.equal(ours.generate(ids, do_sample=False), expected)
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert "max_length" not in saved and "top_k" not in saved, "only the values that were set are written"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False).shape == expected.shape
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="prompt row 1 has no tokens"):
        ours.generate(ids, attention_mask=empty, max_new_tokens=2)


def test_a_row_without_tokens_is_refused_by_a_classifier(tmp_path):
    reference_model("llama", "sequence_classification", tmp_path, num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = batch(lengths=(4, 2))
    mask[1] = 0
    with pytest.raises(ValueError, match="row 1 of the batch has no tokens"):
        model(ids, attention_mask=mask)


def test_tied_checkpoint_with_a_different_head_stays_untied_as_in_the_reference(tmp_path):
    from safetensors.torch import load_file, save_file
    reference_model("llama-tied-bias", "causal_lm", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["lm_head.weight"] = torch.randn_like(state["model.embed_tokens.weight"])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ours.lm_head.weight is not ours.get_input_embeddings().weight
    assert torch.equal(ours.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(ours.get_input_embeddings().weight, state["model.embed_tokens.weight"])
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits[mask.bool()],
                                   ref(input_ids=ids, attention_mask=mask).logits[mask.bool()], atol=1e-5, rtol=1e-4)
