"""Read a llama.cpp GGUF file as a Hugging Face checkpoint: a config.json-style dict, a float32 state dict under HF
key names, and the tokenizer its metadata describes.

The semantics follow the reference (transformers' GGUF loading): the same metadata -> config mapping, dequantisation
through `gguf.quants.dequantize`, llama.cpp's Q/K row permutation undone, and the same tokenizer built from the
vocabulary, merges and token types. `gguf` is an optional extra (`tuneforge[gguf]`), imported only when a file is read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_io import CheckpointError

logger = logging.getLogger("tuneforge")

# GGUF general.architecture -> HF model_type
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2"}

# llama.cpp tensor names -> HF key prefixes. Top-level tensors, then the per-block ones (blk.N.<name>).
_DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_DECODER_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GPT2_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
             "output": "lm_head"}
_GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
               "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# HF GPT-2 keeps these as Conv1D weights, (in, out); llama.cpp stores them (out, in) like every other linear.
_GPT2_TRANSPOSED = {"attn_qkv", "attn_output", "ffn_up", "ffn_down"}

# llama.cpp token types (llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4


class GGUFError(CheckpointError):
    """A GGUF file that cannot be used, with one line saying which and why."""


@dataclass
class GGUFCheckpoint:
    config: dict  # config.json-style, "model_type" included
    state_dict: dict[str, torch.Tensor]  # HF key names, float32


# ----------------------------------------------------------------------------------------------- reading


def _open(path):
    """(GGUFReader over `path`, its metadata as plain Python values), or one GGUFError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if len(magic) < 4 and b"GGUF".startswith(magic):
        raise GGUFError(f"{path} is truncated: {len(magic)} bytes, not even the GGUF header")
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")
    from gguf import GGUFReader
    try:
        reader = GGUFReader(path)
        # strings are decoded here, lazily, so a corrupt one surfaces here too
        return reader, {key: field.contents() for key, field in reader.fields.items()}
    except (ValueError, IndexError, KeyError, OverflowError) as e:  # what the reader raises on a short/bad file
        raise GGUFError(f"{path} is truncated or corrupt and cannot be read as GGUF ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _architecture(path, meta: dict) -> str:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path} holds architecture {arch!r}, which tuneforge cannot load; supported: "
                        f"{', '.join(ARCHITECTURES)}")
    return arch


def _model_type(arch: str, meta: dict) -> str:
    # The reference's quirk, kept for parity: a "llama" file becomes "mistral" only when general.name is exactly
    # "mistral" (it tests list membership). Real Mistral files load as llama, which is the same network here.
    if arch == "llama" and meta.get("general.name") == "mistral":
        return "mistral"
    return ARCHITECTURES[arch]


def _config(arch: str, meta: dict, tensor_names: set[str]) -> dict:
    key = lambda name: meta.get(f"{arch}.{name}")  # noqa: E731
    vocab_size = key("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ())) or None
    if arch == "gpt2":
        # The reference names these n_ctx / feed_forward_length, which GPT2Config ignores (it then falls back to
        # n_positions=1024 and n_inner=4*n_embd); we write the names GPT2Config reads.
        config = {"model_type": "gpt2", "vocab_size": vocab_size, "n_embd": key("embedding_length"),
                  "n_layer": key("block_count"), "n_head": key("attention.head_count"),
                  "n_positions": key("context_length"), "n_inner": key("feed_forward_length"),
                  "layer_norm_epsilon": key("attention.layer_norm_epsilon")}
    else:
        heads = key("attention.head_count")
        config = {
            "model_type": _model_type(arch, meta), "vocab_size": vocab_size,
            "hidden_size": key("embedding_length"), "intermediate_size": key("feed_forward_length"),
            "num_hidden_layers": key("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv") or heads,
            "max_position_embeddings": key("context_length"), "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
            "rope_theta": key("rope.freq_base"),
            # The per-head width where the file states it (attention.key_length); for llama the reference reads it
            # from the rotary width, which is the head width there.
            "head_dim": key("attention.key_length") or (key("rope.dimension_count") if arch in ("llama", "mistral")
                                                        else None),
        }
        scaling = key("rope.scaling.type")
        if scaling and scaling != "none":
            config["rope_scaling"] = {"rope_type": scaling, "factor": key("rope.scaling.factor")}
            if key("rope.scaling.original_context_length"):
                config["rope_scaling"]["original_max_position_embeddings"] = key("rope.scaling.original_context_length")
    # llama.cpp writes the output projection only when it is not the embedding matrix
    config["tie_word_embeddings"] = "output.weight" not in tensor_names
    for name, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id"), ("unk_token_id", "unknown_token_id")):
        config[name] = meta.get(f"tokenizer.ggml.{gguf_key}")
    return {k: v for k, v in config.items() if v is not None}


def _hf_name(arch: str, gguf_name: str) -> tuple[str | None, str]:
    """(HF key or None when unmapped, the llama.cpp leaf name such as "attn_q")."""
    top, block = (_GPT2_TOP, _GPT2_BLOCK) if arch == "gpt2" else (_DECODER_TOP, _DECODER_BLOCK)
    layers = "transformer.h" if arch == "gpt2" else "model.layers"
    parts = gguf_name.split(".")  # "blk.3.attn_q.weight" or "token_embd.weight"
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in block:
        return f"{layers}.{parts[1]}.{block[parts[2]]}.{parts[3]}", parts[2]
    if len(parts) == 2 and parts[0] in top:
        return f"{top[parts[0]]}.{parts[1]}", parts[0]
    return None, parts[-2] if len(parts) > 1 else gguf_name


def _dequantizable_types() -> list[str]:
    """The ggml types this gguf version can turn into floats, found by decoding one zero block of each."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, dequantize
    names = []
    for qtype, (_, block_bytes) in GGML_QUANT_SIZES.items():
        try:
            dequantize(np.zeros((1, block_bytes), np.uint8), qtype)
            names.append(qtype.name)
        except NotImplementedError:
            pass
    return names


def _unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp's converter reorders each head's rows from HF's rotate-half layout (first half, second half) to
    # interleaved pairs; this is its inverse: (heads, 2, half) <- (heads, half, 2).
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read_gguf(path) -> GGUFCheckpoint:
    """The config and float32 HF-named state dict of the llama.cpp GGUF file at `path`."""
    from gguf import dequantize
    reader, meta = _open(path)
    arch = _architecture(path, meta)
    config = _config(arch, meta, {t.name for t in reader.tensors})

    state_dict, skipped = {}, []
    for tensor in reader.tensors:
        name, leaf = _hf_name(arch, tensor.name)
        if name is None:  # e.g. rope_freqs.weight, which the reference drops too
            skipped.append(tensor.name)
            continue
        try:
            values = dequantize(tensor.data, tensor.tensor_type)  # (out, in) float32, numpy order
        except NotImplementedError:
            raise GGUFError(f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which gguf cannot "
                            f"dequantize; supported: {', '.join(_dequantizable_types())}") from None
        weight = torch.from_numpy(values if values.flags.writeable else values.copy())  # F32 comes as a memmap view
        if arch == "llama" and leaf in ("attn_q", "attn_k"):
            heads = config.get("num_attention_heads" if leaf == "attn_q" else "num_key_value_heads")
            if not heads or weight.shape[0] % (2 * heads):
                raise GGUFError(f"{path}: tensor {tensor.name} has {weight.shape[0]} rows, which do not split into "
                                f"llama.attention.head_count(_kv) = {heads} heads of rotary pairs")
            weight = _unpermute_rope(weight, heads)
        elif arch == "gpt2" and leaf in _GPT2_TRANSPOSED and name.endswith(".weight"):
            weight = weight.T
        state_dict[name] = weight.float().contiguous()
    if skipped:
        logger.warning("%s: skipped GGUF tensors with no Hugging Face counterpart: %s", path, ", ".join(skipped))
    return GGUFCheckpoint(config=config, state_dict=state_dict)


# --------------------------------------------------------------------------------------------- tokenizer

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex its merges were learned with; any other value keeps GPT-2's own regex.
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT, "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable bytes stand for themselves, the rest move past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """A sentencepiece file without merges: every split of a token into two vocabulary tokens is a merge, ranked by
    the token's score (best first), as the reference's generate_merges does."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in dict(zip(tokens, scores)).items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _byte_level_bpe(meta: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # Tokens are stored as text; one with characters outside the byte alphabet is respelled byte by byte.
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", ())]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                     end_of_word_suffix="", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, alphabet


def _sentencepiece_bpe(meta: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    else:  # read_gguf_tokenizer checked that the scores are there
        merges = _merges_from_scores(tokens, meta["tokenizer.ggml.scores"])
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1)])
    return tokenizer, None


_TOKENIZER_TYPES = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}


def read_gguf_tokenizer(path):
    """(tokenizers.Tokenizer, tokenizer_config-style dict) built from the GGUF file's tokenizer metadata."""
    from tokenizers import AddedToken, Regex, pre_tokenizers
    _, meta = _open(path)
    _architecture(path, meta)
    kind = meta.get("tokenizer.ggml.model")
    if kind not in _TOKENIZER_TYPES:
        raise GGUFError(f"{path} describes tokenizer type {kind!r}, which tuneforge cannot build; supported: "
                        f"{', '.join(_TOKENIZER_TYPES)}")
    needed = ["tokenizer.ggml.tokens"] + (["tokenizer.ggml.scores"] if kind == "llama" and
                                          "tokenizer.ggml.merges" not in meta else [])
    if missing := [k for k in needed if k not in meta]:
        raise GGUFError(f"{path} has a {kind!r} tokenizer but no {' or '.join(missing)} in its metadata")
    tokenizer, alphabet = _TOKENIZER_TYPES[kind](meta)
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)

    # Control tokens (<|im_end|>) stay whole and special. In a byte-level vocabulary one spelled outside the byte
    # alphabet is a llama.cpp mislabel, and adding it would grow the vocabulary, so it is skipped (as the reference).
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, kind_ in zip(tokens, types)
                                  if kind_ == _CONTROL and (alphabet is None or set(t) <= alphabet)])
    vocab = tokenizer.get_vocab()
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t, kind_ in zip(tokens, types)
                          if kind_ == _USER_DEFINED and t in vocab])  # e.g. <think>: matched whole, not special

    split = _PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is not None:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                           pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                    use_regex=False)])

    config = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise; older files have no flag.
    add_bos = meta.get("tokenizer.ggml.add_bos_token", True if kind == "llama" else None)
    add_eos = meta.get("tokenizer.ggml.add_eos_token")
    # a flag for a token the file does not name is dropped, as the reference does
    if add_bos is not None:
        config["add_bos_token"] = add_bos and config["bos_token"] is not None
    if add_eos is not None:
        config["add_eos_token"] = add_eos and config["eos_token"] is not None

    # The named special tokens are special in the tokenizer too, even where the file typed them as normal.
    tokenizer.add_special_tokens([AddedToken(config[n], normalized=False, special=True)
                                  for n in ("bos_token", "eos_token", "unk_token", "pad_token") if config[n]])
    tokenizer.post_processor = _post_processor(config, tokenizer)
    return tokenizer, config


def _post_processor(config: dict, tokenizer):
    """BOS / EOS around each sequence as add_bos_token / add_eos_token say (the reference's template)."""
    from tokenizers import processors
    bos = config["bos_token"] if config.get("add_bos_token") else None
    eos = config["eos_token"] if config.get("add_eos_token") else None
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
    specials = [(t, tokenizer.token_to_id(t)) for t in (bos, eos) if t]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
