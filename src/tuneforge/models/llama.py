"""The Llama family: Llama 2/3 (and SmolLM/SmolLM2), Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k norm). Config,
embeddings, blocks, backbone, causal-LM, sequence-classification, token-classification and question-answering
heads, top to bottom.

Pre-norm decoder blocks with RMSNorm, SwiGLU, rotary positions and grouped-query attention. Submodule names equal
the checkpoint keys (model.layers.0.self_attn.q_proj.weight, ...). Every tensor after the embeddings is packed:
(N, H) holds only the batch's real tokens, each sequence attending causally to its own (see attention.Packing), and
positions restart per sequence.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from .attention import KVCache, Packing, attend, trim_padding
from .base import PreTrainedModel
from .config import Config
from .generation import generate
from .heads import count_lm_targets, last_token_rows, lm_logits_and_loss, span_logits_and_loss, token_logits_and_loss
from .layers import Dropout, Linear, ModelOutput, RMSNorm, Rotary, activation, apply_rotary, check_positions
from .losses import sequence_classification_loss

# ---------------------------------------------------------------------------------------------------- config

LLAMA_DEFAULTS = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None,
    "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
}
MISTRAL_DEFAULTS = {**LLAMA_DEFAULTS, "model_type": "mistral", "intermediate_size": 14336, "num_key_value_heads": 8,
                    "max_position_embeddings": 131072, "sliding_window": 4096}
QWEN2_DEFAULTS = {**LLAMA_DEFAULTS, "model_type": "qwen2", "vocab_size": 151936, "intermediate_size": 22016,
                  "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None,
                  "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28, "layer_types": None}
QWEN3_DEFAULTS = {**QWEN2_DEFAULTS, "model_type": "qwen3", "head_dim": 128}
ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(c: Config) -> tuple[float, dict]:
    """(theta, scaling): Transformers 5 writes both in `rope_parameters`, older files `rope_theta` + `rope_scaling`."""
    params = dict(getattr(c, "rope_parameters", None) or c.rope_scaling or {})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    return float(params.pop("rope_theta", c.rope_theta)), params


# Which projections have biases, as the reference builds each family: fixed, or the config field that decides.
_BIASES = {"llama": ("attention_bias", "attention_bias", "mlp_bias"), "mistral": (False, False, False),
           "qwen2": (True, False, False), "qwen3": ("attention_bias", "attention_bias", False)}


def biases(c: Config) -> tuple[bool, bool, bool]:
    """(q/k/v, output, MLP) biases."""
    return tuple(bool(getattr(c, rule)) if isinstance(rule, str) else rule for rule in _BIASES[c.model_type])


def layer_windows(c: Config) -> list[int | None]:
    """Each block's sliding attention window, or None for full attention."""
    n = c.num_hidden_layers
    if c.model_type == "mistral":
        return [c.sliding_window] * n
    if not getattr(c, "use_sliding_window", False) or not c.sliding_window:
        return [None] * n
    types = c.layer_types or ["sliding_attention" if i >= c.max_window_layers else "full_attention" for i in range(n)]
    return [c.sliding_window if t == "sliding_attention" else None for t in types]


def check_config(c: Config) -> None:
    """Options of these families that this file does not implement are refused by name, never ignored."""
    _, scaling = rope_parameters(c)
    if scaling.get("rope_type", "default") not in ROPE_TYPES:
        raise InputError(f"rope type {scaling['rope_type']!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if getattr(c, "pretraining_tp", 1) != 1:
        raise InputError(f"pretraining_tp={c.pretraining_tp} is not supported (only 1)")
    heads, kv = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    if heads % kv:
        raise InputError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if c.head_dim is None and c.hidden_size % heads:
        raise InputError(f"hidden_size {c.hidden_size} is not a multiple of num_attention_heads {heads}")
    activation(c.hidden_act)

# ---------------------------------------------------------------------------------------------------- blocks


class LlamaAttention(nn.Module):
    def __init__(self, c: Config, window: int | None):
        super().__init__()
        self.num_heads, self.num_kv_heads = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
        self.head_dim = d = c.head_dim or c.hidden_size // c.num_attention_heads
        qkv_bias, o_bias, _ = biases(c)
        self.q_proj = Linear(c.hidden_size, self.num_heads * d, bias=qkv_bias)
        self.k_proj = Linear(c.hidden_size, self.num_kv_heads * d, bias=qkv_bias)
        self.v_proj = Linear(c.hidden_size, self.num_kv_heads * d, bias=qkv_bias)
        self.o_proj = Linear(self.num_heads * d, c.hidden_size, bias=o_bias)
        if c.model_type == "qwen3":  # RMSNorm over each head's query and key, before the rotation
            self.q_norm, self.k_norm = RMSNorm(d, c.rms_norm_eps), RMSNorm(d, c.rms_norm_eps)
        self.window, self.dropout = window, c.attention_dropout

    def forward(self, x: Tensor, packing: Packing, rotation: tuple[Tensor, Tensor], cache) -> Tensor:  # (N, H)
        n, d = x.shape[0], self.head_dim
        q = self.q_proj(x).view(n, self.num_heads, d)  # (N, nh, d)
        k = self.k_proj(x).view(n, self.num_kv_heads, d)  # (N, nkv, d)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, *rotation), apply_rotary(k, *rotation)
        qkv = torch.cat([q.flatten(1), k.flatten(1), self.v_proj(x)], 1)  # (N, (nh + 2 nkv) d)
        a = attend(qkv, packing, self.num_heads, self.num_kv_heads, causal=True, window=self.window,
                   dropout_p=self.dropout if self.training else 0.0, cache=cache)  # (N, nh d)
        return self.o_proj(a)


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, c: Config):
        super().__init__()
        bias = biases(c)[2]
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=bias)
        self.act = activation(c.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act.forward(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x = x + Attn(norm(x)); x = x + MLP(norm(x))."""

    def __init__(self, c: Config, window: int | None):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = LlamaAttention(c, window)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = LlamaMLP(c)

    def forward(self, x: Tensor, packing: Packing, rotation: tuple[Tensor, Tensor], cache=None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), packing, rotation, cache)
        return x + self.mlp(self.post_attention_layernorm(x))  # (N, H)

# -------------------------------------------------------------------------------------------------- backbone


class LlamaModel(PreTrainedModel):
    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__(config)
        check_config(config)
        if config.head_dim is None:  # written out, as the reference's Llama config does (its Qwen2 cannot read null)
            config.head_dim = config.hidden_size // config.num_attention_heads
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, w) for w in layer_windows(config))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        theta, scaling = rope_parameters(config)
        self.rotary_emb = Rotary(self.layers[0].self_attn.head_dim, theta, scaling)
        self.gradient_checkpointing = False

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
               cache: KVCache | None = None) -> tuple[Tensor, Packing]:
        """-> the final-normed packed hidden states (N, H) and the packing."""
        input_ids, attention_mask, position_ids = trim_padding(input_ids, attention_mask, position_ids)
        packing = Packing.from_positions(attention_mask, position_ids, input_ids.shape, input_ids.device)
        if position_ids is not None:
            positions = packing.pack(position_ids.expand_as(input_ids))
        else:
            positions = packing.positions if cache is None else cache.prepare(packing)  # (N,)
        check_positions(int(positions.max()) + 1, self.config.max_position_embeddings)
        x = self.embed_tokens(packing.pack(input_ids))  # (N, H)
        rotation = self.rotary_emb(positions, x.dtype)
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, packing, rotation, use_reentrant=False)
            else:
                x = block(x, packing, rotation, layer_cache)
        return self.norm(x), packing

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> ModelOutput:
        x, packing = self.encode(input_ids, attention_mask, position_ids)
        return ModelOutput(last_hidden_state=packing.unpack(x, input_ids.shape[1]))  # (B, T, H), zeros at padding

# ----------------------------------------------------------------------------------------------------- heads


class LlamaForCausalLM(PreTrainedModel):
    base_model_prefix = "model"
    tied_weights = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None, num_items_in_batch=None) -> ModelOutput:
        x, packing = self.model.encode(input_ids, attention_mask, position_ids)
        return lm_logits_and_loss(self.lm_head, x, packing, input_ids.shape[1], labels, num_items_in_batch)

    generate = generate
    count_loss_items = staticmethod(count_lm_targets)


class LlamaForSequenceClassification(PreTrainedModel):
    """Classifies each sequence by its last real token, the only one that has seen the whole text."""

    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.model.encode(input_ids, attention_mask, position_ids)
        rows = last_token_rows(input_ids, attention_mask, packing, self.config.pad_token_id)  # (B,)
        logits = self.score(x[rows])  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits)


class LlamaForTokenClassification(PreTrainedModel):
    """A label per token over the real tokens (packed); each token sees only those before it."""

    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__(config)
        self.model = LlamaModel(config)
        # The reference's rule: classifier_dropout, else hidden_dropout, else 0.1.
        drop = next((v for v in (getattr(config, "classifier_dropout", None), getattr(config, "hidden_dropout", None))
                     if v is not None), 0.1)
        self.dropout = Dropout(drop)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=getattr(config, "token_classification_bias", True))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.model.encode(input_ids, attention_mask, position_ids)  # (N, H)
        return token_logits_and_loss(self.score, self.dropout(x), packing, input_ids.shape[1], labels)


class LlamaForQuestionAnswering(PreTrainedModel):
    """Start and end logits of the answer span over the real tokens (packed); each token sees only those before it.
    The backbone is `transformer`, as the reference names it for Llama, Qwen2 and Qwen3 (Mistral's is `model`)."""

    base_model_prefix = "transformer"
    # The family's other heads save the backbone as `model.`: loaded here, their weights land in `transformer.`
    # (the reference leaves the whole backbone freshly initialised when given a causal-LM checkpoint).
    backbone_aliases = ("model",)

    def __init__(self, config: Config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, LlamaModel(config))
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> ModelOutput:
        x, packing = self.base_model.encode(input_ids, attention_mask, position_ids)  # (N, H)
        return span_logits_and_loss(self.qa_outputs, x, packing, attention_mask, input_ids.shape[1],
                                    start_positions, end_positions)


class MistralForQuestionAnswering(LlamaForQuestionAnswering):
    base_model_prefix = "model"
    backbone_aliases = ()


class Qwen2ForQuestionAnswering(LlamaForQuestionAnswering):
    """Llama's, under the name the reference writes in config.json's architectures."""


class Qwen3ForQuestionAnswering(LlamaForQuestionAnswering):
    """Llama's, under the name the reference writes in config.json's architectures."""
