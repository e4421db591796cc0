"""GPT-2: config, embeddings, blocks, backbone, causal-LM, sequence-classification, token-classification and
question-answering heads, top to bottom.

Pre-norm decoder blocks with LayerNorm, GELU MLP and learned positions. Its linear layers are "Conv1D": weights
stored (in, out), kept so here so that names and shapes equal the checkpoint's (transformer.h.0.attn.c_attn.weight).
Every tensor after the embeddings is packed: (N, H) holds only the batch's real tokens (see attention.Packing).
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
from .layers import Dropout, ModelOutput, activation, check_positions
from .losses import sequence_classification_loss

# ---------------------------------------------------------------------------------------------------- config

GPT2_DEFAULTS = {
    "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
    "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": None, "tie_word_embeddings": True,
}
# Options of the reference's GPT-2 that change the maths and are not implemented here: refused by name.
_NOT_IMPLEMENTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                    "reorder_and_upcast_attn": False, "add_cross_attention": False}


def check_config(c: Config) -> None:
    for key, supported in _NOT_IMPLEMENTED.items():
        if getattr(c, key) != supported:
            raise InputError(f"{key}={getattr(c, key)!r} is not supported (only {supported!r})")
    if c.n_embd % c.n_head:
        raise InputError(f"n_embd {c.n_embd} is not a multiple of n_head {c.n_head}")
    activation(c.activation_function)

# ---------------------------------------------------------------------------------------------------- blocks


class Conv1D(nn.Module):
    """A linear layer with its weight stored (in, out), as GPT-2's checkpoints hold it: y = x W + b."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight)


class GPT2Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c_attn = Conv1D(c.n_embd, 3 * c.n_embd)
        self.c_proj = Conv1D(c.n_embd, c.n_embd)
        self.num_heads = c.n_head
        self.attn_dropout, self.resid_dropout = c.attn_pdrop, Dropout(c.resid_pdrop)

    def forward(self, x: Tensor, packing: Packing, cache=None) -> Tensor:  # (N, H)
        a = attend(self.c_attn(x), packing, self.num_heads, causal=True,
                   dropout_p=self.attn_dropout if self.training else 0.0, cache=cache)  # (N, H)
        return self.resid_dropout(self.c_proj(a))


class GPT2MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        inner = c.n_inner or 4 * c.n_embd
        self.c_fc, self.c_proj = Conv1D(c.n_embd, inner), Conv1D(inner, c.n_embd)
        self.act, self.dropout = activation(c.activation_function), Dropout(c.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act.forward(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-norm block: x = x + Attn(ln_1(x)); x = x + MLP(ln_2(x))."""

    def __init__(self, c: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.mlp = GPT2MLP(c)

    def forward(self, x: Tensor, packing: Packing, cache=None) -> Tensor:
        x = x + self.attn(self.ln_1(x), packing, cache)
        return x + self.mlp(self.ln_2(x))  # (N, H)

# -------------------------------------------------------------------------------------------------- backbone


class GPT2Model(PreTrainedModel):
    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__(config)
        check_config(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
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
        check_positions(int(positions.max()) + 1, self.config.n_positions)
        x = self.drop(self.wte(packing.pack(input_ids)) + self.wpe(positions))  # (N, H)
        for i, block in enumerate(self.h):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, packing, use_reentrant=False)
            else:
                x = block(x, packing, None if cache is None else cache.layers[i])
        return self.ln_f(x), packing

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> ModelOutput:
        x, packing = self.encode(input_ids, attention_mask, position_ids)
        return ModelOutput(last_hidden_state=packing.unpack(x, input_ids.shape[1]))  # (B, T, H), zeros at padding

# ----------------------------------------------------------------------------------------------------- heads


class GPT2LMHeadModel(PreTrainedModel):
    base_model_prefix = "transformer"
    tied_weights = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None, num_items_in_batch=None) -> ModelOutput:
        x, packing = self.transformer.encode(input_ids, attention_mask, position_ids)
        return lm_logits_and_loss(self.lm_head, x, packing, input_ids.shape[1], labels, num_items_in_batch)

    generate = generate
    count_loss_items = staticmethod(count_lm_targets)


class GPT2ForSequenceClassification(PreTrainedModel):
    """Classifies each sequence by its last real token, the only one that has seen the whole text."""

    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.transformer.encode(input_ids, attention_mask, position_ids)
        rows = last_token_rows(input_ids, attention_mask, packing, self.config.pad_token_id)  # (B,)
        logits = self.score(x[rows])  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits)


class GPT2ForTokenClassification(PreTrainedModel):
    """A label per token over the real tokens (packed); each token sees only those before it."""

    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        # The reference's rule: classifier_dropout, else hidden_dropout, else 0.1.
        drop = next((v for v in (getattr(config, "classifier_dropout", None), getattr(config, "hidden_dropout", None))
                     if v is not None), 0.1)
        self.dropout = Dropout(drop)
        self.classifier = nn.Linear(config.n_embd, config.num_labels, bias=True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.transformer.encode(input_ids, attention_mask, position_ids)  # (N, H)
        return token_logits_and_loss(self.classifier, self.dropout(x), packing, input_ids.shape[1], labels)


class GPT2ForQuestionAnswering(PreTrainedModel):
    """Start and end logits of the answer span over the real tokens (packed); each token sees only those before it.
    Like this file's other heads it takes no token_type_ids (GPT-2's tokenizer makes none)."""

    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> ModelOutput:
        x, packing = self.transformer.encode(input_ids, attention_mask, position_ids)  # (N, H)
        return span_logits_and_loss(self.qa_outputs, x, packing, attention_mask, input_ids.shape[1],
                                    start_positions, end_positions)
