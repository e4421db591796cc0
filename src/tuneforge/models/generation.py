"""Text generation for causal LMs, enough to try a fine-tuned model: greedy or sampled (temperature, top-k, top-p),
max_new_tokens, eos, batched prompts (left or right padded) over a KV cache. Not a serving engine.

The prompt runs packed, like training (no padding compute); each step then runs one token per sequence against
the cache. A model generates with `generate = generate` in its class, and has `base_model.encode(..., cache=)`
and `lm_head`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError
from ..checkpoint_io import atomic_write
from .attention import KVCache

GENERATION_CONFIG_FILE = "generation_config.json"
# The fields generate() implements, with the reference's defaults (max_length None: 20 new tokens).
IMPLEMENTED = {"max_length": None, "max_new_tokens": None, "do_sample": False, "temperature": 1.0, "top_k": 50,
               "top_p": 1.0, "eos_token_id": None, "pad_token_id": None, "bos_token_id": None}
# Fields that change no output of generate() here.
INERT = {"transformers_version", "_from_model_config", "use_cache", "return_dict_in_generate", "output_scores",
         "output_logits", "output_attentions", "output_hidden_states", "cache_implementation", "cache_config",
         "compile_config", "disable_compile", "low_memory", "return_legacy_cache", "prefill_chunk_size",
         "decoder_start_token_id", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
         "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size",
         "assistant_early_exit", "assistant_lookbehind", "target_lookbehind", "generation_kwargs",
         "trust_remote_code"}
# Fields we do not implement, with the value that means "off": any other value is refused by name.
OFF = {"num_beams": 1, "num_beam_groups": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
       "min_length": 0, "min_new_tokens": None, "length_penalty": 1.0, "num_return_sequences": 1,
       "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0, "min_p": None,
       "bad_words_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
       "begin_suppress_tokens": None, "encoder_repetition_penalty": 1.0, "penalty_alpha": None,
       "renormalize_logits": False, "stop_strings": None, "assistant_model": None, "sequence_bias": None,
       "exponential_decay_length_penalty": None, "guidance_scale": None, "max_time": None, "constraints": None,
       "force_words_ids": None, "dola_layers": None, "token_healing": False, "top_h": None,
       "watermarking_config": None, "remove_invalid_values": False, "early_stopping": False,
       "encoder_no_repeat_ngram_size": 0}
NEW_TOKENS_BY_DEFAULT = 20  # the reference's default when neither max_new_tokens nor max_length is set


class GenerationConfig:
    """generation_config.json as an object. Only the values that were set are kept and written back (the reference
    tells set values from defaults: a written default would change its behaviour on our folders); unset fields read
    as the reference's defaults."""

    def __init__(self, **values):
        self.__dict__["_values"] = dict(values)

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        if name in IMPLEMENTED:
            return IMPLEMENTED[name]
        if name in OFF:
            return OFF[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        self._values[name] = value

    @classmethod
    def from_pretrained(cls, folder) -> GenerationConfig:
        path = Path(folder) / GENERATION_CONFIG_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path} is not a valid generation config ({e})") from None
        if not isinstance(values, dict):
            raise InputError(f"{path} is not a valid generation config (not a JSON object)")
        return cls(**values)

    @classmethod
    def from_model_config(cls, config) -> GenerationConfig:
        values = {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return cls(**{k: v for k, v in values.items() if v is not None}, _from_model_config=True)

    @classmethod
    def for_model(cls, folder, config) -> GenerationConfig:
        """The folder's generation_config.json, else the model config's special tokens (as the reference does)."""
        if (Path(folder) / GENERATION_CONFIG_FILE).is_file():
            return cls.from_pretrained(folder)
        return cls.from_model_config(config)

    def to_dict(self) -> dict:
        return dict(self._values)

    def save_pretrained(self, folder) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(folder) / GENERATION_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def updated(self, **overrides) -> GenerationConfig:
        """These settings with the caller's; anything that would change the output and is not implemented (from the
        caller or from the file) is refused by name."""
        merged = GenerationConfig(**{**self._values, **overrides})
        for key, value in merged.to_dict().items():
            if key in IMPLEMENTED or key in INERT:
                continue
            if key not in OFF:
                if value is None:
                    continue
                raise InputError(f"generation setting {key}={value!r} is not known to tuneforge's generate()")
            if value != OFF[key] and value is not None:
                raise InputError(f"generation setting {key}={value!r} is not implemented "
                                 f"(tuneforge generates greedily or by sampling; set {key}={OFF[key]!r})")
        return merged

    def __repr__(self) -> str:
        return f"GenerationConfig({json.dumps(self.to_dict(), sort_keys=True)})"


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def choose_next(logits: Tensor, g: GenerationConfig, generator: torch.Generator | None = None) -> Tensor:
    """(B, V) logits -> (B,) token ids: the most likely, or a sample after temperature, top-k and top-p (in the
    reference's order)."""
    if not g.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / g.temperature
    if g.top_k and g.top_k < logits.shape[-1]:
        kth = logits.topk(g.top_k, -1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if g.top_p < 1.0:
        ordered, order = logits.sort(-1)  # ascending
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - g.top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model, input_ids: Tensor, attention_mask: Tensor | None = None, generation_config=None,
             generator: torch.Generator | None = None, **overrides) -> Tensor:
    """(B, T) prompts -> (B, T + new) the prompts followed by the generated tokens; a sequence that has ended (eos)
    is filled with pad_token_id (eos when there is none), as in the reference."""
    g = (generation_config or getattr(model, "generation_config", None)
         or GenerationConfig.from_model_config(model.config)).updated(**overrides)
    if g.do_sample and (g.temperature is None or g.temperature <= 0):
        raise InputError(f"temperature must be > 0 when sampling, got {g.temperature}")
    batch, width = input_ids.shape
    pad_id = g.pad_token_id
    if attention_mask is not None:
        mask = attention_mask
    elif pad_id is not None and pad_id not in _ids(g.eos_token_id) and bool((input_ids == pad_id).any()):
        mask = input_ids.ne(pad_id).long()  # the reference's rule: padding is never computed on
    else:
        mask = torch.ones_like(input_ids)
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise InputError(f"prompt row {int((lengths == 0).nonzero()[0])} has no tokens (its attention_mask is all 0)")
    from .registry import position_limit
    limit, longest = position_limit(model.config), int(lengths.max())
    if g.max_new_tokens is not None:
        new = g.max_new_tokens
    elif g.max_length is not None:
        new = g.max_length - width
    else:
        new = min(NEW_TOKENS_BY_DEFAULT, limit - longest)
    if new < 1:
        raise InputError(f"nothing to generate: the prompts are {width} tokens and max_length is {g.max_length}; "
                         "set max_new_tokens")
    if longest + new - 1 > limit:  # the last new token is never fed back
        raise InputError(f"a prompt of {longest} tokens plus max_new_tokens={new} is more than this model's "
                         f"position limit of {limit} tokens; shorten the prompt or generate fewer tokens")
    eos = torch.tensor(_ids(g.eos_token_id), device=input_ids.device)
    pad = g.pad_token_id if g.pad_token_id is not None else (_ids(g.eos_token_id) or [0])[0]
    was_training = model.training
    model.eval()
    try:
        base = model.base_model
        cache = KVCache(batch, longest + new, len(model.blocks()))
        x, packing = base.encode(input_ids, mask, cache=cache)  # the prompts, packed
        logits = model.lm_head(x[packing.last_tokens])  # (B, V) in input order
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        out = []
        cache.decoding = True
        for step in range(new):
            token = choose_next(logits, g, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            out.append(token)
            finished |= torch.isin(token, eos)
            if bool(finished.all()) or step == new - 1:
                break
            x, _ = base.encode(token[:, None], None, cache=cache)  # one token per sequence: (B, H)
            logits = model.lm_head(x)
    finally:
        model.train(was_training)
    return torch.cat([input_ids, torch.stack(out, 1)], 1)
