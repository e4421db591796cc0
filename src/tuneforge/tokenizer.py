"""Tokenizers: load a pretrained tokenizer folder and turn text into model inputs.

`AutoTokenizer.from_pretrained(folder)` returns a `PreTrainedTokenizerFast`, a thin layer over a
`tokenizers.Tokenizer` (the Rust backend) that behaves like the Transformers tokenizer of the same
name: `tokenizer(texts, truncation=True, padding=...)` returns a `BatchEncoding` of plain Python lists
(or tensors), `tokenizer.pad(...)` pads already-tokenized examples for a data collator, and
`save_pretrained` writes a folder that both this library and Transformers load to the same ids.

Padding and truncation come from the caller's arguments, call by call. The backend keeps no padding or
truncation setting between calls: some tokenizer.json files ship with a fixed padding (128 tokens, say)
that would otherwise silently apply to every call.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .errors import InputError

logger = logging.getLogger("tuneforge")

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
WORDPIECE_VOCAB_FILE = "vocab.txt"
BPE_VOCAB_FILE = "vocab.json"
BPE_MERGES_FILE = "merges.txt"
MODEL_CONFIG_FILE = "config.json"
# Transformers 5 saves a single chat template as chat_template.jinja and named extra ones in
# additional_chat_templates/NAME.jinja; older folders keep them in tokenizer_config.json.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
_FILES_LOOKED_FOR = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    WORDPIECE_VOCAB_FILE,
    BPE_VOCAB_FILE,
    BPE_MERGES_FILE,
    MODEL_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
)

# Transformers stores "no maximum length" as int(1e30), which round-trips through JSON as
# 1000000000000000019884624838656. We keep the same public value so code comparing against it works,
# and treat anything this large as "the checkpoint declares no maximum length".
VERY_LARGE_INTEGER = int(1e30)
_UNSET_MAX_LENGTH = 1e29

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")


# --------------------------------------------------------------------------------------------------
# What a reference tokenizer class implies
#
# tokenizer_config.json names a Transformers class ("BertTokenizer", "RobertaTokenizerFast", ...). We do
# not have those classes, but three things about them matter for identical outputs: which inputs the model
# takes (BERT-style models take token_type_ids, RoBERTa and GPT-2 do not), which special tokens the class
# falls back to when the config does not name them, and how the class builds its pipeline from bare
# vocabulary files when there is no tokenizer.json.
# --------------------------------------------------------------------------------------------------

_WITH_TOKEN_TYPES = ("input_ids", "token_type_ids", "attention_mask")
_WITHOUT_TOKEN_TYPES = ("input_ids", "attention_mask")

_BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_ROBERTA_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_GPT2_SPECIAL_TOKENS = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
_DEBERTA_SPECIAL_TOKENS = {**_BERT_SPECIAL_TOKENS, "bos_token": "[CLS]", "eos_token": "[SEP]"}
_QWEN2_SPECIAL_TOKENS = {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


@dataclass(frozen=True)
class _ReferenceClass:
    model_input_names: tuple[str, ...]
    default_special_tokens: dict = field(default_factory=dict)
    # How the class builds its pipeline from vocabulary files: "wordpiece" (vocab.txt), "roberta", "gpt2" or
    # "qwen2" (byte-level BPE from vocab.json + merges.txt); None when it needs a tokenizer.json.
    vocab_pipeline: str | None = None


_BERT = _ReferenceClass(_WITH_TOKEN_TYPES, _BERT_SPECIAL_TOKENS, "wordpiece")
_ROBERTA = _ReferenceClass(_WITHOUT_TOKEN_TYPES, _ROBERTA_SPECIAL_TOKENS, "roberta")
_DEBERTA = _ReferenceClass(("input_ids", "attention_mask", "token_type_ids"), _DEBERTA_SPECIAL_TOKENS)

# Keyed by class name without a "Fast" suffix: Transformers 5 treats "XTokenizerFast" and "XTokenizer" alike.
_REFERENCE_CLASSES = {
    "BertTokenizer": _BERT,
    # Transformers resolves these names to BertTokenizer itself.
    "ElectraTokenizer": _BERT,
    "MobileBertTokenizer": _BERT,
    "SqueezeBertTokenizer": _BERT,
    "LayoutLMTokenizer": _BERT,
    "ConvBertTokenizer": _BERT,
    # A BertTokenizer subclass whose model takes no token_type_ids.
    "DistilBertTokenizer": _ReferenceClass(_WITHOUT_TOKEN_TYPES, _BERT_SPECIAL_TOKENS, "wordpiece"),
    "RobertaTokenizer": _ROBERTA,
    "BartTokenizer": _ROBERTA,
    "LongformerTokenizer": _ROBERTA,
    "GPT2Tokenizer": _ReferenceClass(_WITHOUT_TOKEN_TYPES, _GPT2_SPECIAL_TOKENS, "gpt2"),
    "DebertaTokenizer": _DEBERTA,
    "DebertaV2Tokenizer": _DEBERTA,
    "Qwen2Tokenizer": _ReferenceClass(_WITHOUT_TOKEN_TYPES, _QWEN2_SPECIAL_TOKENS, "qwen2"),
}

# Transformers' generic class (PreTrainedTokenizerFast is an alias of it): tokenizer.json as it is.
_GENERIC_CLASS = "TokenizersBackend"

# When tokenizer_config.json names no class, Transformers picks one from the model's config.json.
_CLASS_BY_MODEL_TYPE = {
    "bert": "BertTokenizer",
    "distilbert": "BertTokenizer",
    "electra": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "gpt2": "GPT2Tokenizer",
    "deberta": "DebertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
    "qwen2": "Qwen2Tokenizer",
    "qwen2_moe": "Qwen2Tokenizer",
    "qwen3": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer",
    # No class of their own (mistral's needs mistral-common, which we do not mirror): tokenizer.json as is.
    "llama": _GENERIC_CLASS,
    "mistral": _GENERIC_CLASS,
}


# --------------------------------------------------------------------------------------------------
# BatchEncoding
# --------------------------------------------------------------------------------------------------


class TokenSpan(NamedTuple):
    start: int
    end: int


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict of input_ids, attention_mask, ... with attribute access.

    Values are lists of Python ints unless tensors were requested (`tensor_type="pt"` or `"np"`).
    `encodings` keeps the backend's `tokenizers.Encoding` objects when the batch came from text.
    """

    def __init__(self, data=None, encodings=None, tensor_type=None):
        super().__init__(data or {})
        self._encodings = encodings
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name):
        # Only called when normal attribute lookup fails, so dict methods keep priority over keys.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def encodings(self):
        return self.__dict__.get("_encodings")

    # What each token came from (rows from text only; the reference's names and rules).

    def _encoding(self, batch_index: int, what: str):
        if not self._encodings:
            raise InputError(f"{what}() needs a batch encoded from text by the tokenizer (this one has no encodings)")
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index, "tokens").tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's word (None for special tokens and padding): several tokens share the word they split."""
        return self._encoding(batch_index, "word_ids").word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's text: 0 for the first, 1 for the second of a pair, None for special tokens and padding."""
        return self._encoding(batch_index, "sequence_ids").sequence_ids

    def _batch_and_index(self, batch_or_index: int, index: int | None, what: str) -> tuple[int, int]:
        if index is not None:
            return batch_or_index, index
        if self._encodings is not None and len(self._encodings) > 1:
            raise InputError(f"{what}() on a batch needs the batch index and the index")
        return 0, batch_or_index

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        batch, token = self._batch_and_index(batch_or_token_index, token_index, "token_to_word")
        encoding = self._encoding(batch, "token_to_word")
        return encoding.word_ids[token + len(encoding.ids) if token < 0 else token]

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        batch, token = self._batch_and_index(batch_or_token_index, token_index, "token_to_sequence")
        encoding = self._encoding(batch, "token_to_sequence")
        return encoding.sequence_ids[token + len(encoding.ids) if token < 0 else token]

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        batch, char = self._batch_and_index(batch_or_char_index, char_index, "char_to_token")
        return self._encoding(batch, "char_to_token").char_to_token(char, sequence_index)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0):
        """(start, end) tokens of a word, or None."""
        batch, word = self._batch_and_index(batch_or_word_index, word_index, "word_to_tokens")
        span = self._encoding(batch, "word_to_tokens").word_to_tokens(word, sequence_index)
        return None if span is None else TokenSpan(*span)

    def convert_to_tensors(self, tensor_type):
        """Turn every value into a torch tensor ("pt") or numpy array ("np"), in place."""
        if tensor_type not in ("pt", "np"):
            raise InputError(f"return_tensors must be None, 'pt' or 'np', got {tensor_type!r}")
        for key, value in list(self.items()):
            if tensor_type == "pt" and not isinstance(value, torch.Tensor):
                self[key] = _as_torch(key, value)
            elif tensor_type == "np" and not isinstance(value, np.ndarray):
                self[key] = _as_numpy(value)
        return self

    def to(self, device, non_blocking=False):
        """Move every tensor value to `device`; other values are left alone. Returns self."""
        for key, value in list(self.items()):
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device, non_blocking=non_blocking)
        return self


def _as_torch(key, value):
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return torch.from_numpy(np.array(value))
    if _is_empty(value):
        return torch.tensor(value, dtype=torch.int64)
    try:
        return torch.tensor(value)
    except (ValueError, TypeError) as error:
        raise InputError(
            f"Unable to create a tensor from '{key}': the sequences probably have different lengths. "
            "Pass padding=True (and truncation=True) to get batched tensors of one length."
        ) from error


def _as_numpy(value):
    if _is_empty(value):
        return np.asarray(value, dtype=np.int64)
    lengths = {len(row) for row in value} if value and isinstance(value[0], (list, tuple)) else set()
    if len(lengths) > 1:
        # Like Transformers, ragged rows become an object array instead of an error.
        ragged = np.empty(len(value), dtype=object)
        ragged[:] = [np.asarray(row) for row in value]
        return ragged
    return np.asarray(value)


def _is_empty(value):
    """True for [], [[]], [[], []]: no numbers to infer a dtype from."""
    if isinstance(value, (list, tuple)):
        return all(_is_empty(item) for item in value)
    return False


def _to_python(value):
    """Tensors and arrays (or lists of them) as nested Python lists; anything else unchanged."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (int, float, bool, str)):
            return list(value)
        return [_to_python(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------------
# Reading a tokenizer folder
# --------------------------------------------------------------------------------------------------


def _locate_tokenizer_files(name_or_path, revision=None, token=None, hub=None) -> tuple[Path, dict[str, Path]]:
    """The folder and the tokenizer files in it (a local folder, or a hub id fetched through the cache)."""
    from .checkpoint_io import is_local
    if not is_local(name_or_path):
        from .hub import DEFAULT_ALLOW_PATTERNS, resolve_folder
        patterns = (*DEFAULT_ALLOW_PATTERNS, CHAT_TEMPLATE_FILE, f"{CHAT_TEMPLATE_DIR}/*.jinja")
        name_or_path = resolve_folder(str(name_or_path), revision=revision, token=token, allow_patterns=patterns,
                                      **(hub or {}))
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Tokenizer folder not found: '{folder}'. Pass a local folder containing {TOKENIZER_FILE}, "
            f"{WORDPIECE_VOCAB_FILE}, or {BPE_VOCAB_FILE} + {BPE_MERGES_FILE}, or a hub id."
        )
    found = {name: folder / name for name in _FILES_LOOKED_FOR if (folder / name).is_file()}
    has_bpe_files = BPE_VOCAB_FILE in found and BPE_MERGES_FILE in found
    if TOKENIZER_FILE not in found and WORDPIECE_VOCAB_FILE not in found and not has_bpe_files:
        raise OSError(
            f"No tokenizer files in '{folder}': looked for {TOKENIZER_FILE}, {WORDPIECE_VOCAB_FILE} (WordPiece) "
            f"and {BPE_VOCAB_FILE} + {BPE_MERGES_FILE} (byte-level BPE)."
        )
    return folder, found


def _locate_gguf(name_or_path, gguf_file, revision=None, token=None, hub=None) -> Path:
    """The GGUF file `gguf_file` in a local folder, or fetched (that file alone) from a hub repo."""
    from .checkpoint_io import is_local
    folder = Path(name_or_path)
    if not is_local(name_or_path):
        from .hub import resolve_folder
        folder = resolve_folder(str(name_or_path), revision=revision, token=token, allow_patterns=[str(gguf_file)],
                                **(hub or {}))
    path = folder / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: '{path}'")
    return path


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_content(value):
    """A special token as saved (a string, or an AddedToken as a dict or object) reduced to its text."""
    if isinstance(value, Mapping):
        return value["content"]
    return getattr(value, "content", value)


def _read_settings(folder: Path, files: dict[str, Path], overrides: dict) -> dict:
    """tokenizer_config.json, then special_tokens_map.json, then the caller's keyword arguments; later wins.

    Chat template files (chat_template.jinja, additional_chat_templates/) win over the config's
    "chat_template", as in Transformers; a chat_template keyword argument wins over both.
    """
    config = _read_json(files[TOKENIZER_CONFIG_FILE]) if TOKENIZER_CONFIG_FILE in files else {}
    settings = dict(config)
    # Transformers reads special_tokens_map.json only for folders whose config has no added_tokens_decoder
    # (folders written before that key existed); newer folders keep the special tokens in the config.
    if SPECIAL_TOKENS_MAP_FILE in files and "added_tokens_decoder" not in config:
        settings.update(_read_json(files[SPECIAL_TOKENS_MAP_FILE]))
    templates = _read_chat_templates(folder)
    if templates is not None:
        settings["chat_template"] = templates
    settings.update(overrides)
    return _normalize_settings(settings)


def _normalize_settings(settings: dict) -> dict:
    """Special tokens (saved as strings or AddedToken dicts) as their text; extra special tokens as a list."""
    for name in SPECIAL_TOKEN_NAMES:
        if settings.get(name) is not None:
            settings[name] = _token_content(settings[name])
    # "additional_special_tokens" is the older name; newer configs may map names to tokens.
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
    if isinstance(extra, Mapping):
        extra = list(extra.values())
    settings["extra_special_tokens"] = [_token_content(token) for token in extra]
    return settings


def _read_chat_templates(folder: Path):
    """chat_template.jinja (the default) and additional_chat_templates/NAME.jinja: a string, a dict, or None."""
    templates = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    for path in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
        templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def _resolve_class_name(settings: dict, files: dict[str, Path]) -> str:
    """The reference tokenizer class this folder asks for, or the one Transformers would pick."""
    name = settings.get("tokenizer_class")
    if not name and MODEL_CONFIG_FILE in files:
        name = _CLASS_BY_MODEL_TYPE.get(_read_json(files[MODEL_CONFIG_FILE]).get("model_type"))
    if not name:
        if TOKENIZER_FILE in files:
            return "PreTrainedTokenizerFast"
        return "BertTokenizer" if WORDPIECE_VOCAB_FILE in files else "RobertaTokenizer"
    # "BertTokenizerFast" and "BertTokenizer" are the same class in Transformers 5, which saves the short name.
    return name.removesuffix("Fast") if name.removesuffix("Fast") in _REFERENCE_CLASSES else name


def _load_backend(files: dict[str, Path], reference: _ReferenceClass | None, settings: dict) -> Tokenizer:
    """The Rust tokenizer: tokenizer.json when present, otherwise built from the vocabulary files."""
    has_bpe_files = BPE_VOCAB_FILE in files and BPE_MERGES_FILE in files
    pipeline = reference.vocab_pipeline if reference is not None else None
    if TOKENIZER_FILE in files:
        backend = Tokenizer.from_file(str(files[TOKENIZER_FILE]))
        _apply_config_to_pipeline(backend, settings)
        if pipeline == "qwen2":
            # Qwen2Tokenizer keeps only the vocabulary, merges and post-processor of tokenizer.json.
            _set_qwen2_pipeline(backend, settings)
    elif has_bpe_files and (pipeline in ("roberta", "gpt2", "qwen2") or WORDPIECE_VOCAB_FILE not in files):
        backend = _byte_level_bpe_backend(files[BPE_VOCAB_FILE], files[BPE_MERGES_FILE], pipeline, settings)
    else:
        backend = _wordpiece_backend(files[WORDPIECE_VOCAB_FILE], settings)
    backend.no_padding()
    backend.no_truncation()
    return backend


def _apply_config_to_pipeline(backend: Tokenizer, settings: dict) -> None:
    """Let explicit config values for lowercasing and prefix spaces override tokenizer.json.

    Transformers' BertTokenizer and RobertaTokenizer rebuild these pipeline pieces from the config, so the
    config wins when the two disagree.
    """
    normalizer = backend.normalizer
    if isinstance(normalizer, normalizers.BertNormalizer):
        if settings.get("do_lower_case") is not None:
            normalizer.lowercase = settings["do_lower_case"]
        if "strip_accents" in settings:
            normalizer.strip_accents = settings["strip_accents"]
        if settings.get("tokenize_chinese_chars") is not None:
            normalizer.handle_chinese_chars = settings["tokenize_chinese_chars"]
    pre_tokenizer = backend.pre_tokenizer
    if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) and settings.get("add_prefix_space") is not None:
        pre_tokenizer.add_prefix_space = settings["add_prefix_space"]


def _wordpiece_backend(vocab_file: Path, settings: dict) -> Tokenizer:
    """BERT's pipeline, built from vocab.txt the way Transformers' BertTokenizer builds it."""
    backend = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token=settings["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=settings.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # Register the special tokens first: the template needs their ids, which may be new ones.
    _add_special_tokens(backend, _named_special_tokens(settings))
    cls, sep = settings["cls_token"], settings["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    return backend


# Qwen2Tokenizer's pre-tokenizer split (Transformers' PRETOKENIZE_REGEX for Qwen2).
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
                r"""|\s+(?!\S)|\s+""")


def _byte_level_bpe_backend(vocab_file: Path, merges_file: Path, pipeline: str | None, settings: dict) -> Tokenizer:
    """RoBERTa's (or GPT-2's, or Qwen2's) byte-level BPE pipeline, built from vocab.json + merges.txt."""
    add_prefix_space = bool(settings.get("add_prefix_space", False))
    backend = Tokenizer(
        models.BPE.from_file(
            str(vocab_file),
            str(merges_file),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    if pipeline == "qwen2":
        _set_qwen2_pipeline(backend, settings)
    _add_special_tokens(backend, _named_special_tokens(settings))
    if pipeline in ("gpt2", "qwen2"):
        # GPT-2 adds no special tokens around its inputs; a pair is just A then B.
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    else:
        cls, sep = settings["cls_token"], settings["sep_token"]
        backend.post_processor = processors.RobertaProcessing(
            (sep, backend.token_to_id(sep)),
            (cls, backend.token_to_id(cls)),
            trim_offsets=bool(settings.get("trim_offsets", True)),
            add_prefix_space=add_prefix_space,
        )
    return backend


def _set_qwen2_pipeline(backend: Tokenizer, settings: dict) -> None:
    """Qwen2Tokenizer's normalizer, pre-tokenizer and decoder."""
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(settings.get("add_prefix_space", False)), use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()


def _check_side(name: str, value) -> str:
    if value not in ("right", "left"):
        raise InputError(f"{name} must be 'right' or 'left', got {value!r}")
    return value


def _named_special_tokens(settings: dict) -> list[str]:
    tokens = [settings.get(name) for name in SPECIAL_TOKEN_NAMES] + list(settings.get("extra_special_tokens", []))
    return list(dict.fromkeys(token for token in tokens if token is not None))


def _add_special_tokens(backend: Tokenizer, tokens: list[str]) -> None:
    """Make each token a special added token of the backend, unless it already is an added token.

    Added tokens are matched in raw text before normalization ("[CLS]" in a sentence stays one token) and
    are dropped by decode(skip_special_tokens=True). A token already in the vocabulary keeps its id.
    """
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    missing = [token for token in tokens if token not in present]
    if missing:
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------


def _special_token_property(name):
    def get(self):
        return self._special_tokens.get(name)

    def set(self, value):
        self._special_tokens[name] = None if value is None else _token_content(value)

    return property(get, set, doc=f"The {name.replace('_', ' ')} as a string, or None when the tokenizer has none.")


def _special_token_id_property(name):
    def get(self):
        token = self._special_tokens.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def set(self, value):
        self._special_tokens[name] = None if value is None else self._tokenizer.id_to_token(int(value))

    return property(get, set, doc=f"The id of the {name.replace('_', ' ')}, or None when the tokenizer has none.")


class PreTrainedTokenizerFast:
    """A tokenizer over a `tokenizers.Tokenizer`, with the Transformers call and padding semantics.

    Usually made by `AutoTokenizer.from_pretrained(folder)`. Constructed directly, it takes over the given
    backend (its stored padding and truncation are cleared, missing special tokens are added to it);
    `tokenizer_class` names the Transformers class this tokenizer stands for, which decides the default
    `model_input_names` and is written to tokenizer_config.json on save.
    """

    # Padding positions get this segment id, as in Transformers.
    pad_token_type_id = 0
    is_fast = True

    bos_token = _special_token_property("bos_token")
    bos_token_id = _special_token_id_property("bos_token")
    eos_token = _special_token_property("eos_token")
    eos_token_id = _special_token_id_property("eos_token")
    unk_token = _special_token_property("unk_token")
    unk_token_id = _special_token_id_property("unk_token")
    sep_token = _special_token_property("sep_token")
    sep_token_id = _special_token_id_property("sep_token")
    pad_token = _special_token_property("pad_token")
    pad_token_id = _special_token_id_property("pad_token")
    cls_token = _special_token_property("cls_token")
    cls_token_id = _special_token_id_property("cls_token")
    mask_token = _special_token_property("mask_token")
    mask_token_id = _special_token_id_property("mask_token")

    def __init__(
        self,
        tokenizer_object: Tokenizer | None = None,
        *,
        tokenizer_file: str | Path | None = None,
        name_or_path: str = "",
        tokenizer_class: str = "PreTrainedTokenizerFast",
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        model_input_names=None,
        clean_up_tokenization_spaces: bool = False,
        extra_special_tokens=(),
        chat_template=None,
        chat_control_tokens=None,
        **special_tokens,
    ):
        if tokenizer_object is None and tokenizer_file is None:
            raise InputError("Pass a tokenizers.Tokenizer (tokenizer_object) or the path of a tokenizer.json")
        if tokenizer_object is None:
            tokenizer_object = Tokenizer.from_file(str(tokenizer_file))
        unknown = set(special_tokens) - set(SPECIAL_TOKEN_NAMES)
        if unknown:
            raise TypeError(f"Unexpected keyword arguments: {sorted(unknown)}")

        self._tokenizer = tokenizer_object
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        if self._tokenizer.post_processor is None:
            # As the reference: a template that adds nothing, so that a pair's overflowing windows still tell the
            # second text's tokens (sequence_ids 1; the backend's default forgets them past the first window).
            self._tokenizer.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1",
                                                                           special_tokens=[])
        self.name_or_path = str(name_or_path)
        self.tokenizer_class = tokenizer_class
        if model_max_length is None or model_max_length >= _UNSET_MAX_LENGTH:
            model_max_length = VERY_LARGE_INTEGER
        self.model_max_length = int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        if model_input_names is None:
            reference = _REFERENCE_CLASSES.get(tokenizer_class)
            model_input_names = reference.model_input_names if reference is not None else _WITHOUT_TOKEN_TYPES
        self.model_input_names = list(model_input_names)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self._special_tokens = {name: special_tokens.get(name) for name in SPECIAL_TOKEN_NAMES}
        for name, value in self._special_tokens.items():
            if value is not None:
                self._special_tokens[name] = _token_content(value)
        self._extra_special_tokens = [_token_content(token) for token in extra_special_tokens]
        self.chat_template = chat_template
        if chat_control_tokens is not None and not isinstance(chat_control_tokens, (list, tuple)):
            raise TypeError(f"chat_control_tokens must be a list of strings, got {chat_control_tokens!r}")
        # Added tokens that count as control tokens for apply_chat_template(sanitize_control_tokens=True).
        self.chat_control_tokens = None if chat_control_tokens is None else list(chat_control_tokens)
        _add_special_tokens(self._tokenizer, self.all_special_tokens)
        self._warned_about_length = False

    @property
    def padding_side(self) -> str:
        """Where padding goes: "right" (the default) or "left" (decoders generating from a batch)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value):
        self._padding_side = _check_side("padding_side", value)

    @property
    def truncation_side(self) -> str:
        """Which end truncation cuts: "right" (the default) or "left"."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value):
        self._truncation_side = _check_side("truncation_side", value)

    @property
    def chat_template(self):
        """The Jinja chat template: a string, a dict of named templates, or None."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value):
        if isinstance(value, (list, tuple)):  # tokenizer_config.json's form for named templates
            try:
                value = {entry["name"]: entry["template"] for entry in value}
            except (TypeError, KeyError):
                raise InputError("a list of chat templates must hold {'name': ..., 'template': ...} dicts") from None
        if not (value is None or isinstance(value, str)
                or (isinstance(value, dict) and all(isinstance(t, str) for t in value.values()))):
            raise TypeError(f"chat_template must be a string or a dict of named strings, got {type(value).__name__}")
        self._chat_template = value

    # ---- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> PreTrainedTokenizerFast:
        """Load the tokenizer of a checkpoint folder; keyword arguments override its tokenizer_config.json.

        `gguf_file=NAME` reads the tokenizer stored in the GGUF file NAME of the folder (or hub repo) instead.
        """
        from .checkpoint_io import pop_hub_options
        revision, token = kwargs.pop("revision", None), kwargs.pop("token", None)
        hub = pop_hub_options(kwargs, "AutoTokenizer.from_pretrained")  # cache_dir, trust_remote_code, ...
        if kwargs.pop("use_fast", True) is False:
            raise InputError("AutoTokenizer.from_pretrained(use_fast=False) is not supported: tuneforge's tokenizers "
                             "are the fast (tokenizers) ones; leave use_fast out or pass True")
        gguf_file = kwargs.pop("gguf_file", None)
        if gguf_file is not None:
            from .gguf_io import read_gguf_tokenizer
            backend, gguf_settings = read_gguf_tokenizer(_locate_gguf(pretrained_model_name_or_path, gguf_file,
                                                                      revision, token, hub))
            # gguf_io's backend already adds BOS / EOS as the file's add_bos_token / add_eos_token say.
            settings = _normalize_settings({**gguf_settings, **kwargs})
            class_name = _GENERIC_CLASS
        else:
            folder, files = _locate_tokenizer_files(pretrained_model_name_or_path, revision, token, hub)
            settings = _read_settings(folder, files, kwargs)
            class_name = _resolve_class_name(settings, files)
            reference = _REFERENCE_CLASSES.get(class_name)
            if reference is not None:
                for name, default in reference.default_special_tokens.items():
                    settings.setdefault(name, default)
            backend = _load_backend(files, reference, settings)
        for side in ("padding_side", "truncation_side"):
            if settings.get(side) not in (None, "right", "left"):
                raise InputError(f"{side} must be 'right' or 'left', got {settings[side]!r} (loading "
                                 f"'{pretrained_model_name_or_path}')")
        return cls(
            backend,
            name_or_path=str(pretrained_model_name_or_path),
            tokenizer_class=class_name,
            model_max_length=settings.get("model_max_length"),
            padding_side=settings.get("padding_side") or "right",
            truncation_side=settings.get("truncation_side") or "right",
            model_input_names=settings.get("model_input_names"),
            clean_up_tokenization_spaces=settings.get("clean_up_tokenization_spaces", False),
            extra_special_tokens=settings["extra_special_tokens"],
            chat_template=settings.get("chat_template"),
            chat_control_tokens=settings.get("chat_control_tokens"),
            **{name: settings.get(name) for name in SPECIAL_TOKEN_NAMES},
        )

    # ---- vocabulary and special tokens -----------------------------------------------------------

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: token for name, token in self._special_tokens.items() if token is not None}

    @property
    def extra_special_tokens(self) -> list[str]:
        return list(self._extra_special_tokens)

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = list(self.special_tokens_map.values()) + self._extra_special_tokens
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def convert_tokens_to_ids(self, tokens):
        """Id of a token (or ids of a list of tokens); unknown tokens map to the unknown token's id."""
        if isinstance(tokens, str):
            token_id = self._tokenizer.token_to_id(tokens)
            if token_id is None and self.unk_token is not None:
                return self._tokenizer.token_to_id(self.unk_token)
            return token_id
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Token of an id (or tokens of a list of ids), optionally leaving out special tokens."""
        ids = _to_python(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skipped]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Tokens joined into text by the backend's decoder (the reference's rule; spaces without one)."""
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    # ---- encoding ---------------------------------------------------------------------------------

    def __call__(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        stride: int = 0,
        is_split_into_words: bool = False,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Tokenize one text (or pair) or a batch of them into model inputs.

        A single string gives flat lists; a list of strings gives one list per text. padding: False /
        "do_not_pad", True / "longest" (pad to the longest in the batch) or "max_length". truncation: False /
        "do_not_truncate", True / "longest_first", "only_first" or "only_second". max_length defaults to
        model_max_length when truncating or padding to "max_length"; a max_length given alone truncates.

        is_split_into_words: each text is a list of words (pre-tokenized); `word_ids(i)` then maps tokens to
        them. return_overflowing_tokens: what truncation cuts off becomes further rows (windows overlapping by
        `stride` tokens), with `overflow_to_sample_mapping` naming each row's input. return_offsets_mapping:
        each token's (start, end) characters in its text (in its word, for pre-tokenized input).
        """
        if text is None:
            raise InputError("text must be a string or a list of strings, got None")
        padding, truncation, max_length = self._resolve_strategies(padding, truncation, max_length, pad_to_multiple_of)
        if not isinstance(stride, int) or stride < 0:
            raise InputError(f"stride must be a non-negative integer, got {stride!r}")

        if is_split_into_words:
            return self._call_split_into_words(
                text, text_pair, add_special_tokens, padding, truncation, max_length, pad_to_multiple_of,
                padding_side, return_tensors, return_token_type_ids, return_attention_mask, return_length, stride,
                return_overflowing_tokens, return_special_tokens_mask, return_offsets_mapping)
        is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("when text is a batch (a list), text_pair must be a list of the same length")
            if text_pair is not None and len(text_pair) != len(text):
                raise InputError(f"text has {len(text)} items but text_pair has {len(text_pair)}")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            # Transformers treats an empty second text as no second text.
            inputs = [(text, text_pair)] if text_pair else [text]
        for item in inputs:
            for part in item if isinstance(item, tuple) else (item,):
                if not isinstance(part, str):
                    raise TypeError(
                        f"texts must be strings (pass is_split_into_words=True for lists of words), got {type(part).__name__}"
                    )

        return self._encode_inputs(
            inputs, is_batched, False, add_special_tokens, padding, truncation, max_length, pad_to_multiple_of,
            padding_side, return_tensors, return_token_type_ids, return_attention_mask, return_length, stride,
            return_overflowing_tokens, return_special_tokens_mask, return_offsets_mapping)

    def _call_split_into_words(self, text, text_pair, *options) -> BatchEncoding:
        """Pre-tokenized input: one list of words (or a pair of them), or a batch of such lists."""
        def is_words(value):
            return isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value)

        is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        if is_batched:
            if text_pair is not None and (not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text)):
                raise InputError("when text is a batch of word lists, text_pair must be a list of as many word lists")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            inputs = [(text, text_pair)] if text_pair else [text]
        for row, item in enumerate(inputs):
            for part in item if isinstance(item, tuple) else (item,):
                if not is_words(part):
                    raise TypeError(f"is_split_into_words=True takes lists of words (strings); input {row} is "
                                    f"{type(part).__name__}{'' if not isinstance(part, (list, tuple)) else ' of ' + ', '.join(sorted({type(w).__name__ for w in part}))}")
        inputs = [tuple(list(p) for p in item) if isinstance(item, tuple) else list(item) for item in inputs]
        return self._encode_inputs(inputs, is_batched, True, *options)

    def _encode_inputs(self, inputs, is_batched, is_pretokenized, add_special_tokens, padding, truncation, max_length,
                       pad_to_multiple_of, padding_side, return_tensors, return_token_type_ids, return_attention_mask,
                       return_length, stride, return_overflowing_tokens, return_special_tokens_mask,
                       return_offsets_mapping) -> BatchEncoding:
        with self._padding_and_truncation(padding, truncation, max_length, pad_to_multiple_of, padding_side, stride):
            try:
                encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                                         is_pretokenized=is_pretokenized)
            except Exception as error:  # the backend's errors are plain Exceptions (e.g. a pair too long)
                if "Truncation error" not in str(error):
                    raise
                raise InputError(f"cannot truncate to max_length={max_length} with truncation={truncation!r}: "
                                 f"{str(error).replace('Truncation error: ', '')} (the other text alone is too "
                                 "long)") from None
        # As the reference: overflowing windows follow their input as further rows.
        rows, sample_mapping = [], []
        for i, encoding in enumerate(encodings):
            windows = [encoding] + (list(encoding.overflowing) if return_overflowing_tokens else [])
            rows.extend(windows)
            sample_mapping.extend([i] * len(windows))

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data = {"input_ids": [encoding.ids for encoding in rows]}
        if return_token_type_ids:
            data["token_type_ids"] = [encoding.type_ids for encoding in rows]
        if return_attention_mask:
            data["attention_mask"] = [encoding.attention_mask for encoding in rows]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [encoding.special_tokens_mask for encoding in rows]
        if return_offsets_mapping:
            data["offset_mapping"] = [encoding.offsets for encoding in rows]
        if return_length:
            data["length"] = [len(encoding.ids) for encoding in rows]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_mapping
        encodings = rows

        if max_length is None:
            self._warn_if_too_long(data["input_ids"])
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            # One text: flat lists. ("length" stays a one-item list, as in Transformers.)
            data = {key: value[0] if value and isinstance(value[0], list) else value for key, value in data.items()}
        return BatchEncoding(data, encodings, tensor_type=return_tensors)

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, **kwargs):
        """The input_ids of one text (or pair); keyword arguments as for calling the tokenizer."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The tokens of a text (as strings), without special tokens unless asked for."""
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def _resolve_strategies(self, padding, truncation, max_length, pad_to_multiple_of):
        """The caller's padding/truncation arguments as explicit strategies and length, by Transformers' rules."""
        # Transformers' backward-compatible rule: a max_length on its own means "truncate to it".
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"

        if padding is True:
            if max_length is not None and truncation in (None, False, "do_not_truncate"):
                logger.warning(
                    "max_length is ignored when padding=True and there is no truncation; "
                    "use padding='max_length' to pad to max_length."
                )
            padding = "longest"
        elif padding is False or padding is None:
            padding = "do_not_pad"
        elif padding not in PADDING_STRATEGIES:
            raise InputError(f"padding must be True, False or one of {PADDING_STRATEGIES}, got {padding!r}")

        if truncation is True:
            truncation = "longest_first"
        elif truncation is False or truncation is None:
            truncation = "do_not_truncate"
        elif truncation not in TRUNCATION_STRATEGIES:
            raise InputError(f"truncation must be True, False or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")

        if max_length is None:
            # Without a declared model maximum there is nothing to pad or truncate to.
            has_model_max = self.model_max_length < _UNSET_MAX_LENGTH
            if padding == "max_length":
                if has_model_max:
                    max_length = self.model_max_length
                else:
                    padding = "do_not_pad"
            if truncation != "do_not_truncate":
                if has_model_max:
                    max_length = self.model_max_length
                else:
                    truncation = "do_not_truncate"

        if padding != "do_not_pad" and (self.pad_token is None or self.pad_token_id is None):
            raise InputError(
                "Asking to pad but the tokenizer has no padding token; set one, e.g. tokenizer.pad_token = "
                "tokenizer.eos_token."
            )
        if (
            truncation != "do_not_truncate"
            and padding != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise InputError(
                f"Truncation and padding are both on but the truncation length ({max_length}) is not a multiple "
                f"of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return padding, truncation, max_length

    @contextmanager
    def _padding_and_truncation(self, padding, truncation, max_length, pad_to_multiple_of, padding_side, stride=0):
        """Configure the backend for one call and clear it afterwards, so no setting outlives the call."""
        backend = self._tokenizer
        try:
            if truncation != "do_not_truncate":
                backend.enable_truncation(max_length, stride=stride, strategy=truncation,
                                          direction=self.truncation_side)
            if padding != "do_not_pad":
                backend.enable_padding(
                    direction=_check_side("padding_side", padding_side or self.padding_side),
                    pad_id=self.pad_token_id,
                    pad_type_id=self.pad_token_type_id,
                    pad_token=self.pad_token,
                    length=max_length if padding == "max_length" else None,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            yield backend
        finally:
            backend.no_truncation()
            backend.no_padding()

    def _warn_if_too_long(self, batch_ids):
        # Only a warning: the model raises the hard error when it gets more positions than it has.
        longest = max((len(ids) for ids in batch_ids), default=0)
        if longest > self.model_max_length and not self._warned_about_length:
            logger.warning(
                "Token indices sequence length is longer than the specified maximum sequence length for this "
                f"model ({longest} > {self.model_max_length}). Pass truncation=True to cut inputs to that length."
            )
            self._warned_about_length = True

    # ---- padding already-tokenized inputs ---------------------------------------------------------

    def pad(
        self,
        encoded_inputs,
        padding=True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad tokenized examples to one length, as a dynamic-padding data collator needs.

        Takes a list of dicts (one per example) or a dict of lists (or a single example's dict). Keys other
        than input_ids / token_type_ids / attention_mask / special_tokens_mask (labels, say) pass through
        untouched, and are stacked along with the rest when tensors are requested. Tensor inputs give
        tensors of the same kind back unless return_tensors says otherwise.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0].keys()}
        else:
            encoded_inputs = dict(encoded_inputs)  # never modify the caller's dict

        main_input = self.model_input_names[0]
        if main_input not in encoded_inputs:
            raise InputError(
                f"pad() needs '{main_input}' in its inputs, got the keys {list(encoded_inputs.keys())}"
            )
        ids = encoded_inputs[main_input]
        if ids is None or len(ids) == 0:
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return BatchEncoding(encoded_inputs)

        if return_tensors is None:
            first = ids[0]
            if isinstance(first, (list, tuple)):
                first = next((row[0] for row in ids if len(row) > 0), first)
            if isinstance(first, torch.Tensor):
                return_tensors = "pt"
            elif isinstance(first, np.ndarray):
                return_tensors = "np"
        encoded_inputs = {key: _to_python(value) for key, value in encoded_inputs.items()}
        ids = encoded_inputs[main_input]

        padding, _, max_length = self._resolve_strategies(padding, False, max_length, None)

        if not isinstance(ids[0], (list, tuple)):
            example = self._pad_example(
                encoded_inputs, max_length, padding, pad_to_multiple_of, padding_side, return_attention_mask
            )
            return BatchEncoding(example, tensor_type=return_tensors)

        batch_size = len(ids)
        if any(len(value) != batch_size for value in encoded_inputs.values()):
            raise InputError("pad(): every key must hold one value per example")
        if padding == "longest":
            max_length = max(len(row) for row in ids)
            padding = "max_length"
        batch = {}
        for i in range(batch_size):
            example = {key: value[i] for key, value in encoded_inputs.items()}
            padded = self._pad_example(
                example, max_length, padding, pad_to_multiple_of, padding_side, return_attention_mask
            )
            for key, value in padded.items():
                batch.setdefault(key, []).append(value)
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad_example(self, example, max_length, padding, pad_to_multiple_of, padding_side, return_attention_mask):
        main_input = self.model_input_names[0]
        ids = example[main_input]
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        if padding == "longest":
            max_length = len(ids)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of != 0:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of

        padded = dict(example)
        if return_attention_mask and "attention_mask" not in padded:
            padded["attention_mask"] = [1] * len(ids)
        elif not return_attention_mask:
            padded.pop("attention_mask", None)

        missing = max_length - len(ids) if padding != "do_not_pad" and max_length is not None else 0
        if missing > 0:
            side = padding_side or self.padding_side
            if side not in ("right", "left"):
                raise InputError(f"padding_side must be 'right' or 'left', got {side!r}")
            fill_values = {
                main_input: self.pad_token_id,
                "attention_mask": 0,
                "token_type_ids": self.pad_token_type_id,
                "special_tokens_mask": 1,
            }
            for key, fill in fill_values.items():
                if key in padded:
                    filler = [fill] * missing
                    padded[key] = list(padded[key]) + filler if side == "right" else filler + list(padded[key])
        return padded

    # ---- chat templates ---------------------------------------------------------------------------

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """The template source apply_chat_template uses.

        `chat_template` is a template, or the name of one of the tokenizer's named templates; without it, the
        tokenizer's own ("tool_use" when there are tools and it has one, else "default").
        """
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None:
                return templates.get(chat_template, chat_template)
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise InputError(f"The tokenizer has several chat templates and none named 'default': pass "
                             f"chat_template= one of {sorted(templates)}")
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise InputError(f"The tokenizer of '{self.name_or_path}' has no chat template (no {CHAT_TEMPLATE_FILE} "
                             f"and no 'chat_template' in {TOKENIZER_CONFIG_FILE}): pass chat_template= or set "
                             "tokenizer.chat_template")
        return templates

    def apply_chat_template(
        self,
        conversation,
        tools=None,
        documents=None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        sanitize_control_tokens: bool = False,
        padding=False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        return_assistant_tokens_mask: bool = False,
        tokenizer_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render a conversation (a list of {"role", "content"} dicts), or a batch of them, with the chat template.

        As in Transformers 5: tokenize=False gives the text (a list of texts for a batch); otherwise a
        BatchEncoding of input_ids and attention_mask (special tokens come from the template, none are added),
        or only the input_ids with return_dict=False. return_assistant_tokens_mask adds "assistant_masks": 1 for
        tokens the template marks with {% generation %}. The special tokens (bos_token, ...) and any other
        keyword arguments are template variables; tokenizer_kwargs go to the tokenizer call (padding_side=, ...).
        sanitize_control_tokens encodes control tokens that appear in the user's strings as plain text.
        A template that fails raises a one-line ChatTemplateError (a ValueError) with its own message.
        """
        from . import chat_template as templating

        if not tokenize:
            return_dict = False
        if return_assistant_tokens_mask and not return_dict:
            raise InputError("return_assistant_tokens_mask=True needs return_dict=True and tokenize=True")
        source = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise InputError("Cannot apply a chat template to an empty conversation: give at least one message")
        is_batched = isinstance(conversation, (list, tuple)) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        conversations = [templating.normalize_conversation(c) for c in (conversation if is_batched else [conversation])]
        if continue_final_message and add_generation_prompt:
            raise InputError("continue_final_message and add_generation_prompt cannot both be set: the first "
                             "continues the final message, the second starts a new assistant message")
        if continue_final_message and return_assistant_tokens_mask:
            raise InputError("continue_final_message cannot be combined with return_assistant_tokens_mask")
        if sanitize_control_tokens:
            if not tokenize or return_assistant_tokens_mask:
                raise InputError("sanitize_control_tokens=True needs tokenize=True and no return_assistant_tokens_mask")
            pattern = templating.control_token_pattern(self._control_tokens(source))
            conversations, tools, documents, kwargs = templating.mark_control_tokens(
                [conversations, tools, documents, kwargs], pattern)
        if "padding_side" in kwargs:  # as in Transformers, a template variable, not a padding setting
            logger.warning("apply_chat_template(padding_side=...) only reaches the template; pad on a side with "
                           "tokenizer_kwargs={'padding_side': ...} or tokenizer.padding_side")
        if return_assistant_tokens_mask and not re.search(r"\{%-?\s*generation\s*-?%\}", source):
            logger.warning("return_assistant_tokens_mask=True but the chat template has no {% generation %} "
                           "block, so every mask is 0")

        texts, spans = templating.render(
            source, conversations, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, track_generation=return_assistant_tokens_mask,
            variables={**self.special_tokens_map, **kwargs},
        )
        if not tokenize:
            return texts if is_batched else texts[0]
        call = dict(padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                    **(tokenizer_kwargs or {}))
        if sanitize_control_tokens:
            out = self._encode_marked(texts if is_batched else texts[0], **call)
        else:
            out = self(texts if is_batched else texts[0], add_special_tokens=False, **call)
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            masks = [_assistant_mask(encoding.offsets, marked) for encoding, marked in zip(out.encodings, spans)]
            out["assistant_masks"] = masks if is_batched or return_tensors else masks[0]
            if return_tensors:
                out.convert_to_tensors(return_tensors)
        return out

    def _control_tokens(self, source: str) -> list[str]:
        """Tokens that sanitize_control_tokens encodes as text in user input (as Transformers picks them).

        Special tokens, plus the added tokens in chat_control_tokens when set, else the added tokens that the
        template itself writes (in its text or string literals), whitespace tokens aside.
        """
        from .chat_template import template_literals
        added = self._tokenizer.get_added_tokens_decoder().values()
        if self.chat_control_tokens is not None:
            wanted = set(self.chat_control_tokens)
            return [token.content for token in added if token.special or token.content in wanted]
        literals = template_literals(source)
        return [token.content for token in added
                if token.special or (token.content in literals and not token.content.isspace())]

    def _encode_marked(self, text, padding=False, truncation=False, max_length=None, return_tensors=None,
                       pad_to_multiple_of=None, padding_side=None, return_attention_mask=None):
        """Token ids of chats whose user-written control tokens are marked: those become plain text."""
        from .chat_template import split_marked
        padding, truncation, max_length = self._resolve_strategies(padding, truncation, max_length, pad_to_multiple_of)
        added = [token.content for token in self._tokenizer.get_added_tokens_decoder().values()]
        newline = self._tokenizer.encode("\n", add_special_tokens=False).ids
        batch = []
        for chat in [text] if isinstance(text, str) else text:
            pieces = split_marked(chat, added)
            ids = self._tokenizer.encode(pieces[0], add_special_tokens=False).ids
            for i, piece in enumerate(pieces[1:], start=1):
                if not piece:
                    continue
                as_text = i % 2 == 1  # odd pieces are the marked tokens
                piece_ids = self._encode_piece(piece, as_text, newline)
                if as_text and self._tokenizer.token_to_id(piece) in piece_ids:
                    raise InputError(f"Cannot sanitize {piece!r}: the tokenizer makes that token from plain text")
                ids += piece_ids
            if truncation != "do_not_truncate" and max_length is not None:
                ids = ids[:max_length] if self.truncation_side == "right" else ids[-max_length:]
            batch.append(ids)
        return self.pad({"input_ids": batch[0] if isinstance(text, str) and not return_tensors else batch},
                        padding=padding, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
                        padding_side=padding_side, return_attention_mask=return_attention_mask,
                        return_tensors=return_tensors)

    def _encode_piece(self, piece: str, as_text: bool, newline: list[int]) -> list[int]:
        """Ids of a piece from inside a chat; as_text: without matching any added token."""
        def encode(text):
            if not as_text:
                return self._tokenizer.encode(text, add_special_tokens=False).ids
            backend = self._tokenizer
            if backend.normalizer is not None:
                text = backend.normalizer.normalize_str(text)
            splits = [split for split, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer \
                else [text]
            return [token.id for split in splits for token in backend.model.tokenize(split)]
        # After a newline, so a SentencePiece pipeline adds no prefix space; then drop the newline's ids.
        ids = encode("\n" + piece)
        return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)

    # ---- decoding ---------------------------------------------------------------------------------

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None):
        """Text of a sequence of ids; a batch (list of lists, 2-D tensor) gives a list of texts."""
        token_ids = _to_python(token_ids)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self._decode_one(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in token_ids]
        return self._decode_one(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(
        self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ):
        """Texts of a batch of id sequences."""
        texts = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        return [texts] if isinstance(texts, str) else texts

    def _decode_one(self, ids, skip_special_tokens, clean_up_tokenization_spaces):
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        # Like Transformers, never for BPE: the clean-up was written for WordPiece and would drop real spaces.
        if clean_up_tokenization_spaces and not isinstance(self._tokenizer.model, models.BPE):
            for spaced, joined in _TOKENIZATION_SPACES:
                text = text.replace(spaced, joined)
        return text

    # ---- saving -----------------------------------------------------------------------------------

    def save_pretrained(self, save_directory) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the chat templates.

        Returns the paths written. The chat template goes to chat_template.jinja (named extra templates to
        additional_chat_templates/NAME.jinja), as Transformers 5 writes it. Transformers' AutoTokenizer loads
        the folder to the same ids and template, as does `from_pretrained` here.
        """
        folder = Path(save_directory)
        template_files = self._chat_template_files(folder)
        folder.mkdir(parents=True, exist_ok=True)

        config = {
            "tokenizer_class": self.tokenizer_class,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "model_input_names": self.model_input_names,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self._pipeline_settings(),
            **self.special_tokens_map,
        }
        if self._extra_special_tokens:
            config["extra_special_tokens"] = list(self._extra_special_tokens)
        if self.chat_control_tokens is not None:
            config["chat_control_tokens"] = list(self.chat_control_tokens)

        config_path = folder / TOKENIZER_CONFIG_FILE
        special_tokens_path = folder / SPECIAL_TOKENS_MAP_FILE
        tokenizer_path = folder / TOKENIZER_FILE
        _write_json(config_path, config)
        _write_json(special_tokens_path, self.special_tokens_map)
        # Save a copy so a padding or truncation set on backend_tokenizer by hand is not written out.
        backend = Tokenizer.from_str(self._tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(tokenizer_path))
        for path, template in template_files.items():
            path.parent.mkdir(exist_ok=True)
            path.write_text(template, encoding="utf-8")
        return (str(config_path), str(special_tokens_path), str(tokenizer_path), *map(str, template_files))

    def _chat_template_files(self, folder: Path) -> dict[Path, str]:
        """Where save_pretrained writes each chat template; a name that would leave the folder is an error."""
        templates = self.chat_template
        templates = {"default": templates} if isinstance(templates, str) else templates or {}
        files = {}
        for name, template in templates.items():
            # Names come from downloaded configs: none may reach outside the folder.
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise InputError(f"Invalid chat template name {name!r}: it must be a plain file name")
            path = folder / CHAT_TEMPLATE_FILE if name == "default" else folder / CHAT_TEMPLATE_DIR / f"{name}.jinja"
            files[path] = template
        return files

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload tokenizer with tuneforge", revision: str | None = None) -> str:
        """Save the tokenizer (as `save_pretrained` does) and upload it to the hub repo `repo_id` in one commit.

        The repo is created if missing (a bare name goes to the token owner's namespace). Returns the commit
        URL; failures raise `tuneforge.hub.HubError` (an OSError) with one line that never holds the token.
        """
        import tempfile

        from .hub import push_folder
        with tempfile.TemporaryDirectory(prefix="tuneforge-tokenizer-") as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, token=token, private=private, commit_message=commit_message,
                               revision=revision)

    def _pipeline_settings(self) -> dict:
        """Config values describing the backend's normalizer and pre-tokenizer.

        Transformers' BertTokenizer and RobertaTokenizer rebuild these pieces from the config rather than
        taking them from tokenizer.json, so the config must describe what the backend really does.
        """
        settings = {}
        normalizer = self._tokenizer.normalizer
        if isinstance(normalizer, normalizers.BertNormalizer):
            settings["do_lower_case"] = normalizer.lowercase
            settings["strip_accents"] = normalizer.strip_accents
            settings["tokenize_chinese_chars"] = normalizer.handle_chinese_chars
        pre_tokenizer = self._tokenizer.pre_tokenizer
        if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel):
            settings["add_prefix_space"] = pre_tokenizer.add_prefix_space
        return settings

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path='{self.name_or_path}', tokenizer_class='{self.tokenizer_class}', "
            f"vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side='{self.padding_side}', special_tokens={self.special_tokens_map})"
        )


# The replacements Transformers' clean_up_tokenization_spaces makes, in its order.
_TOKENIZATION_SPACES = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _assistant_mask(offsets, spans) -> list[int]:
    """1 for each token overlapping a {% generation %} span (so a span cut by truncation keeps the rest)."""
    mask = [0] * len(offsets)
    span = 0
    for i, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[i] = 1
    return mask


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(folder)`, as in Transformers; every folder gives a PreTrainedTokenizerFast."""

    def __init__(self):
        raise TypeError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained(folder)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast.from_pretrained(pretrained_model_name_or_path, **kwargs)
