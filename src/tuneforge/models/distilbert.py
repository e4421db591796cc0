"""DistilBERT: config, embeddings, blocks, backbone, task heads (sequence and token classification, question
answering, multiple choice).

Submodule names equal the checkpoint keys (transformer.layer.0.attention.q_lin.weight, ...). As in bert.py,
everything after the embeddings runs on packed real tokens (N, H).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from .base import PreTrainedModel
from .attention import Packing, self_attention, trim_padding
from .config import Config
from .layers import Dropout, LayerStack, ModelOutput, activation, check_positions, post_attention
from .heads import flatten_choices, span_logits_and_loss, token_logits_and_loss
from .losses import multiple_choice_loss, sequence_classification_loss

DISTILBERT_DEFAULTS = {
    "model_type": "distilbert", "vocab_size": 30522, "max_position_embeddings": 512, "sinusoidal_pos_embds": False,
    "n_layers": 6, "n_heads": 12, "dim": 768, "hidden_dim": 3072, "dropout": 0.1, "attention_dropout": 0.1,
    "activation": "gelu", "initializer_range": 0.02, "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
    "pad_token_id": 0,
}


def DistilBertConfig(**values) -> Config:
    return Config(DISTILBERT_DEFAULTS, **values)


class Embeddings(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=1e-12)
        self.dropout = Dropout(c.dropout)
        self.max_positions = c.max_position_embeddings

    def forward(self, input_ids: Tensor, packing: Packing) -> Tensor:
        batch, seq_len = input_ids.shape
        check_positions(seq_len, self.max_positions)
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)  # (B, T)
        x = self.word_embeddings(packing.pack(input_ids)) + self.position_embeddings(packing.pack(positions))
        return self.dropout(self.LayerNorm(x))  # (N, H)


class TransformerBlock(nn.Module):
    """Post-norm block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, c: Config):
        super().__init__()
        d = c.dim
        self.attention = nn.ModuleDict({"q_lin": nn.Linear(d, d), "k_lin": nn.Linear(d, d), "v_lin": nn.Linear(d, d),
                                        "out_lin": nn.Linear(d, d)})
        self.sa_layer_norm = nn.LayerNorm(d, eps=1e-12)
        self.ffn = nn.ModuleDict({"lin1": nn.Linear(d, c.hidden_dim), "lin2": nn.Linear(c.hidden_dim, d)})
        self.output_layer_norm = nn.LayerNorm(d, eps=1e-12)
        self.act = activation(c.activation)
        self.num_heads = c.n_heads
        self.attention_dropout, self.hidden_dropout = c.attention_dropout, c.dropout

    def forward(self, x: Tensor, packing: Packing, heads_only: bool = False) -> Tensor:  # x: (N, H)
        attn = self.attention
        attention_p, hidden_p = (self.attention_dropout, self.hidden_dropout) if self.training else (0.0, 0.0)
        h = x[packing.starts] if heads_only else x  # the rows that go on: (B, H) or (N, H)
        a = self_attention(h, x, packing, attn.q_lin, attn.k_lin, attn.v_lin, self.num_heads, attention_p)  # like h
        # h = LN(out_lin(a) + h); LN(dropout(FFN(h)) + h), with no dropout after out_lin: like h
        return post_attention(a, h, attn.out_lin, self.sa_layer_norm, self.ffn.lin1, self.act, self.ffn.lin2,
                              self.output_layer_norm, 0.0, hidden_p)


class DistilBertModel(PreTrainedModel):
    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__(config)
        if config.dim % config.n_heads:
            raise InputError(f"dim {config.dim} is not a multiple of n_heads {config.n_heads}")
        self.embeddings = Embeddings(config)
        self.transformer = LayerStack(TransformerBlock(config) for _ in range(config.n_layers))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               heads_only: bool = False) -> tuple[Tensor, Packing]:
        """-> packed hidden states (N, H), or with heads_only each row's first token (B, H), and the packing."""
        input_ids, attention_mask = trim_padding(input_ids, attention_mask)
        packing = Packing.from_mask(attention_mask, input_ids.shape, input_ids.device)
        return self.transformer(self.embeddings(input_ids, packing), packing, heads_only), packing

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> ModelOutput:
        x, packing = self.encode(input_ids, attention_mask)
        return ModelOutput(last_hidden_state=packing.unpack(x, input_ids.shape[1]))  # (B, T, H), zeros at padding


class DistilBertForSequenceClassification(PreTrainedModel):
    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = Dropout(config.seq_classif_dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        first, _ = self.distilbert.encode(input_ids, attention_mask, heads_only=True)  # (B, H)
        pooled = nn.functional.relu(self.pre_classifier(first))  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits)


class DistilBertForTokenClassification(PreTrainedModel):
    """A label per token: reads every real token (packed), never padding."""

    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.distilbert.encode(input_ids, attention_mask)  # (N, H)
        return token_logits_and_loss(self.classifier, self.dropout(x), packing, input_ids.shape[1], labels)


class DistilBertForQuestionAnswering(PreTrainedModel):
    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__(config)
        if config.num_labels != 2:
            raise InputError(f"DistilBertForQuestionAnswering needs num_labels=2 (start and end), got "
                             f"{config.num_labels}")
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.num_labels)
        self.dropout = Dropout(config.qa_dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, start_positions: Tensor | None = None,
                end_positions: Tensor | None = None) -> ModelOutput:
        x, packing = self.distilbert.encode(input_ids, attention_mask)  # (N, H)
        return span_logits_and_loss(self.qa_outputs, self.dropout(x), packing, attention_mask, input_ids.shape[1],
                                    start_positions, end_positions)


class DistilBertForMultipleChoice(PreTrainedModel):
    """Scores each (B, C, T) choice by its first token; the last block computes only those tokens."""

    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, 1)
        self.dropout = Dropout(config.seq_classif_dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        num_choices = input_ids.shape[1]
        first, _ = self.distilbert.encode(*flatten_choices(input_ids, attention_mask), heads_only=True)  # (B*C, H)
        pooled = nn.functional.relu(self.pre_classifier(first))  # (B*C, H)
        logits = self.classifier(self.dropout(pooled)).view(-1, num_choices)  # (B, C)
        loss = None if labels is None else multiple_choice_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits)
