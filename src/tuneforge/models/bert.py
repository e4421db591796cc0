"""BERT and RoBERTa (incl. XLM-RoBERTa, MiniLM): config, embeddings, encoder, pooler, task heads (sequence and token
classification, question answering, multiple choice).

Reads top to bottom. Submodule names equal the checkpoint keys (embeddings.word_embeddings.weight,
encoder.layer.0.attention.self.query.weight, ...), so loading is a strict state-dict load. Every tensor after the
embeddings is packed: (N, H) holds only the batch's real tokens; see attention.Packing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from .base import PreTrainedModel
from .attention import Packing, self_attention, trim_padding
from .config import Config
from .layers import Dropout, LayerStack, ModelOutput, activation, check_positions, post_attention
from .heads import flatten_choices, masked_lm_logits_and_loss, span_logits_and_loss, token_logits_and_loss
from .losses import multiple_choice_loss, sequence_classification_loss

# ---------------------------------------------------------------------------------------------------- config

BERT_DEFAULTS = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "classifier_dropout": None,
    "position_embedding_type": "absolute",
}
ROBERTA_DEFAULTS = {**BERT_DEFAULTS, "model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514,
                    "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
                    "eos_token_id": 2}
XLM_ROBERTA_DEFAULTS = {**ROBERTA_DEFAULTS, "model_type": "xlm-roberta", "vocab_size": 250002}


def BertConfig(**values) -> Config:
    return Config(BERT_DEFAULTS, **values)


def RobertaConfig(**values) -> Config:
    return Config(ROBERTA_DEFAULTS, **values)


def is_roberta(config: Config) -> bool:
    return config.model_type in ("roberta", "xlm-roberta")


def check_config(config: Config) -> None:
    if config.position_embedding_type != "absolute":
        raise InputError(f"position_embedding_type={config.position_embedding_type!r} is not supported "
                         "(only 'absolute')")
    if config.hidden_size % config.num_attention_heads:
        raise InputError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                         f"{config.num_attention_heads}")

# ------------------------------------------------------------------------------------------------ embeddings


class BertEmbeddings(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size,
                                                padding_idx=c.pad_token_id if is_roberta(c) else None)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.roberta_positions = is_roberta(c)
        self.pad_token_id = c.pad_token_id
        self.max_positions = c.max_position_embeddings

    def position_ids(self, input_ids: Tensor) -> Tensor:
        batch, seq_len = input_ids.shape
        if self.roberta_positions:
            # RoBERTa numbers real tokens from pad_token_id + 1 (fairseq's convention).
            real = input_ids.ne(self.pad_token_id).long()
            positions = torch.cumsum(real, 1) * real + self.pad_token_id  # (B, T)
            check_positions(int(positions.max()) + 1, self.max_positions)
            return positions
        check_positions(seq_len, self.max_positions)
        return torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)  # (B, T)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor | None,
                packing: Packing) -> Tensor:
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        ids = packing.pack(input_ids)  # (N,)
        types = torch.zeros_like(ids) if token_type_ids is None else packing.pack(token_type_ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(packing.pack(position_ids.expand_as(input_ids)))  # (N, H)
        return self.dropout(self.LayerNorm(x))

# ---------------------------------------------------------------------------------------------------- blocks


class BertLayer(nn.Module):
    """Post-norm transformer block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, c: Config):
        super().__init__()
        h, i = c.hidden_size, c.intermediate_size
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict({"query": nn.Linear(h, h), "key": nn.Linear(h, h), "value": nn.Linear(h, h)}),
            "output": nn.ModuleDict({"dense": nn.Linear(h, h), "LayerNorm": nn.LayerNorm(h, eps=c.layer_norm_eps)}),
        })
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(h, i)})
        self.output = nn.ModuleDict({"dense": nn.Linear(i, h), "LayerNorm": nn.LayerNorm(h, eps=c.layer_norm_eps)})
        self.act = activation(c.hidden_act)
        self.num_heads = c.num_attention_heads
        self.attention_dropout, self.hidden_dropout = c.attention_probs_dropout_prob, c.hidden_dropout_prob

    def forward(self, x: Tensor, packing: Packing, heads_only: bool = False) -> Tensor:  # x: (N, H)
        attn, out = self.attention.self, self.attention.output
        attention_p, hidden_p = (self.attention_dropout, self.hidden_dropout) if self.training else (0.0, 0.0)
        h = x[packing.starts] if heads_only else x  # the rows that go on: (B, H) or (N, H)
        a = self_attention(h, x, packing, attn.query, attn.key, attn.value, self.num_heads, attention_p)  # like h
        # h = LN(h + dropout(out(a))); LN(h + dropout(MLP(h))): like h
        return post_attention(a, h, out.dense, out.LayerNorm, self.intermediate.dense, self.act, self.output.dense,
                              self.output.LayerNorm, hidden_p, hidden_p)


class BertPooler(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, first_tokens: Tensor) -> Tensor:  # (B, H)
        return torch.tanh(self.dense(first_tokens))

# -------------------------------------------------------------------------------------------------- backbone


class BertModel(PreTrainedModel):
    """The encoder. Also RoBERTa's: the families differ only in position numbering and defaults."""

    base_model_prefix = "bert"

    def __init__(self, config: Config, add_pooling_layer: bool = True):
        super().__init__(config)
        check_config(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = LayerStack(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
               position_ids: Tensor | None = None, heads_only: bool = False) -> tuple[Tensor, Packing]:
        """-> packed hidden states (N, H), or with heads_only each row's first token (B, H), and the packing."""
        input_ids, attention_mask, token_type_ids, position_ids = trim_padding(
            input_ids, attention_mask, token_type_ids, position_ids)
        packing = Packing.from_mask(attention_mask, input_ids.shape, input_ids.device)
        x = self.embeddings(input_ids, token_type_ids, position_ids, packing)  # (N, H)
        return self.encoder(x, packing, heads_only), packing

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None) -> ModelOutput:
        x, packing = self.encode(input_ids, attention_mask, token_type_ids, position_ids)
        hidden = packing.unpack(x, input_ids.shape[1])  # (B, T, H), zeros at padding
        pooled = self.pooler(x[packing.first_tokens]) if self.pooler is not None else None
        return ModelOutput(last_hidden_state=hidden, pooler_output=pooled)


class RobertaModel(BertModel):
    base_model_prefix = "roberta"

# ----------------------------------------------------------------------------------------------------- heads


class BertForSequenceClassification(PreTrainedModel):
    base_model_prefix = "bert"

    def __init__(self, config: Config):
        super().__init__(config)
        self.bert = BertModel(config)
        drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        first, _ = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids, heads_only=True)
        pooled = self.bert.pooler(first)  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits)


class RobertaClassificationHead(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        drop = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        self.dropout = Dropout(drop)
        self.out_proj = nn.Linear(c.hidden_size, c.num_labels)

    def forward(self, first_tokens: Tensor) -> Tensor:  # (B, H) the <s> token of each sequence
        x = torch.tanh(self.dense(self.dropout(first_tokens)))
        return self.out_proj(self.dropout(x))  # (B, num_labels)


class RobertaForSequenceClassification(PreTrainedModel):
    base_model_prefix = "roberta"

    def __init__(self, config: Config):
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        first, _ = self.roberta.encode(input_ids, attention_mask, token_type_ids, position_ids, heads_only=True)
        logits = self.classifier(first)  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(logits, labels, self.config)
        return ModelOutput(loss=loss, logits=logits)


def _classifier_dropout(c: Config) -> Dropout:
    return Dropout(c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob)


class BertForTokenClassification(PreTrainedModel):
    """A label per token: reads every real token (packed), never padding."""

    base_model_prefix = "bert"

    def __init__(self, config: Config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, (RobertaModel if is_roberta(config) else BertModel)(
            config, add_pooling_layer=False))
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        encoder = getattr(self, self.base_model_prefix)
        x, packing = encoder.encode(input_ids, attention_mask, token_type_ids, position_ids)  # (N, H)
        return token_logits_and_loss(self.classifier, self.dropout(x), packing, input_ids.shape[1], labels)


class RobertaForTokenClassification(BertForTokenClassification):
    base_model_prefix = "roberta"


class BertForQuestionAnswering(PreTrainedModel):
    """Start and end logits of the answer span over the real tokens (question, context and special tokens)."""

    base_model_prefix = "bert"

    def __init__(self, config: Config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, (RobertaModel if is_roberta(config) else BertModel)(
            config, add_pooling_layer=False))
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, start_positions: Tensor | None = None,
                end_positions: Tensor | None = None) -> ModelOutput:
        encoder = getattr(self, self.base_model_prefix)
        x, packing = encoder.encode(input_ids, attention_mask, token_type_ids, position_ids)  # (N, H)
        return span_logits_and_loss(self.qa_outputs, x, packing, attention_mask, input_ids.shape[1],
                                    start_positions, end_positions)


class RobertaForQuestionAnswering(BertForQuestionAnswering):
    base_model_prefix = "roberta"


class BertForMultipleChoice(PreTrainedModel):
    """Scores each (B, C, T) choice by its pooled first token; the last block computes only those tokens."""

    base_model_prefix = "bert"

    def __init__(self, config: Config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, (RobertaModel if is_roberta(config) else BertModel)(config))
        # RoBERTa's head takes hidden_dropout_prob even when classifier_dropout is set (the reference's rule).
        self.dropout = Dropout(config.hidden_dropout_prob) if is_roberta(config) else _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        num_choices = input_ids.shape[1]
        encoder = getattr(self, self.base_model_prefix)
        first, _ = encoder.encode(*flatten_choices(input_ids, attention_mask, token_type_ids, position_ids),
                                  heads_only=True)  # (B*C, H)
        logits = self.classifier(self.dropout(encoder.pooler(first))).view(-1, num_choices)  # (B, C)
        loss = None if labels is None else multiple_choice_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits)


class RobertaForMultipleChoice(BertForMultipleChoice):
    base_model_prefix = "roberta"

# ------------------------------------------------------------------------------------------------ masked LM


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = activation(c.hidden_act)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:  # (M, H)
        return self.LayerNorm(self.act.forward(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then the decoder: its weight is the word embedding's, its bias is `bias` (both tied)."""

    def __init__(self, c: Config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(c)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.predictions = BertLMPredictionHead(c)


class BertForMaskedLM(PreTrainedModel):
    """Predicts the masked tokens; with labels, the head's transform and decoder run on the labelled tokens only
    (DataCollatorForLanguageModeling(mlm=True) labels ~15%), and the logits are made only if read."""

    base_model_prefix = "bert"
    tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: Config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.tie_weights()

    def _tied_keys(self) -> set[str]:
        keys = set(self.tied_weights)  # the bias always; the weight unless the config unties it (default: tied)
        return keys if getattr(self.config, "tie_word_embeddings", True) else keys - {"cls.predictions.decoder.weight"}

    def tie_weights(self) -> None:
        for ours in self._tied_keys():
            owner, name = ours.rsplit(".", 1)
            setattr(self.get_submodule(owner), name, self.get_parameter(self.tied_weights[ours]))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        x, packing = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids)  # (N, H)
        head = self.cls.predictions
        return masked_lm_logits_and_loss(head.transform, head.decoder, x, packing, input_ids.shape[1], labels)
