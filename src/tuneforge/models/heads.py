"""What task heads read, by rule: encoders' classification heads read each sequence's first token (LayerStack's
heads_only); decoders' read the last real token (last_token_rows); language-model, token-classification and
span (question-answering) heads read every real token, packed, and never padding."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import InputError
from .attention import Packing
from .layers import ModelOutput, is_plain
from .losses import IGNORE_INDEX, causal_lm_loss, question_answering_loss, token_classification_loss, chunked_lm_loss


def last_token_rows(input_ids: Tensor, attention_mask: Tensor | None, packing: Packing,
                    pad_token_id: int | None) -> Tensor:
    """(B,) packed row of the token a decoder's sequence-classification head reads, by the reference's rule: the
    rightmost token that is not pad_token_id (left or right padding alike). Where that is no real token by the
    attention mask, or no pad_token_id is set (the reference then refuses batches of more than one), it is the last
    real token by the mask."""
    if 0 in packing.lengths:
        row = int(attention_mask.sum(1).eq(0).nonzero()[0])
        raise InputError(f"row {row} of the batch has no tokens (its attention_mask is all 0): nothing to classify")
    last = packing.last_tokens  # (B,)
    if pad_token_id is None:
        return last
    batch, width = input_ids.shape
    columns = torch.arange(width, device=input_ids.device)
    rightmost = (columns * input_ids.ne(pad_token_id)).argmax(-1)  # (B,)
    where = torch.full((batch * packing.seq_len,), -1, dtype=torch.long, device=input_ids.device)
    where[packing.indices if packing.indices is not None else slice(None)] = torch.arange(
        sum(packing.lengths), device=input_ids.device)  # grid position -> packed row
    inside = rightmost < packing.seq_len
    rows = where[torch.arange(batch, device=input_ids.device) * packing.seq_len + rightmost.clamp(max=packing.seq_len - 1)]
    return torch.where(inside & (rows >= 0), rows, last)


def shifted_targets(labels: Tensor, packing: Packing) -> Tensor:
    """(B, T) labels -> (N,) each packed token's target: the label of the next position in its row (-100 after the
    last), as the reference shifts them."""
    shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], 1)
    return packing.pack(shifted[:, :packing.seq_len])


def count_lm_targets(labels: Tensor, attention_mask: Tensor | None = None) -> int:
    """The tokens a language-model loss averages over: labels after the shift that are not -100, read from a real
    token (a padding position predicts nothing here: with left padding the reference trains it on the first token)."""
    kept = labels[:, 1:].ne(IGNORE_INDEX)
    if attention_mask is not None:
        kept &= attention_mask[:, :-1].bool()
    return int(kept.sum())


def lm_logits_and_loss(lm_head: nn.Linear, x: Tensor, packing: Packing, width: int, labels: Tensor | None,
                       num_items_in_batch=None) -> ModelOutput:
    """The language-model head over packed tokens x (N, H): logits (B, width, V), zeros at padding, and with
    labels the next-token loss over the labelled tokens (see vocab_logits_and_loss)."""
    targets = None if labels is None else shifted_targets(labels.to(x.device), packing)  # (N,)
    return vocab_logits_and_loss(lm_head, x, packing, width, targets, num_items_in_batch)


def masked_lm_logits_and_loss(transform: nn.Module, decoder: nn.Linear, x: Tensor, packing: Packing, width: int,
                              labels: Tensor | None) -> ModelOutput:
    """An encoder's masked-LM head, decoder(transform(x)), over packed tokens x (N, H); with labels the loss over the
    labelled tokens (not shifted), and the transform runs on those tokens only."""
    targets = None if labels is None else packing.pack(labels.to(x.device)[:, :packing.seq_len])  # (N,)
    return vocab_logits_and_loss(decoder, x, packing, width, targets, transform=transform)


def vocab_logits_and_loss(decoder: nn.Linear, x: Tensor, packing: Packing, width: int, targets: Tensor | None,
                          num_items_in_batch=None, transform: nn.Module | None = None) -> ModelOutput:
    """A head over the vocabulary on packed tokens x (N, H): logits (B, width, V), zeros at padding; with targets
    (N,) (-100: none) the cross-entropy over the labelled tokens.

    With targets, the loss never holds the (N, V) logits: the head and cross-entropy run a chunk of labelled rows at
    a time (chunked_lm_loss), and `logits` is made from the hidden states only if it is read (as the reference's
    API has it; the Trainer reads it only for compute_metrics). `num_correct` and `num_targets` count the targets
    that are the argmax, for token accuracy."""
    head = decoder if transform is None else nn.Sequential(transform, decoder)
    if targets is None:
        return ModelOutput(logits=packing.unpack(head(x), width))
    kept = targets.ne(IGNORE_INDEX).nonzero().squeeze(1)  # (M,) rows that carry a label
    rows, labelled = x[kept], targets[kept]
    if transform is not None:
        rows = transform(rows)
    if is_plain(decoder, biased=False):
        loss, correct = chunked_lm_loss(rows, decoder.weight, decoder.bias, labelled, num_items_in_batch)
    else:  # a replaced or hooked head (LoRA, ...) is called as a module
        logits = decoder(rows)
        loss = causal_lm_loss(logits, labelled, num_items_in_batch)
        correct = (logits.detach().argmax(-1) == labelled).sum()
    return LMOutput(loss, _DeferredLogits(head, x, packing, width), correct, len(kept))


class _DeferredLogits:
    """The logits of a forward with labels, made when first read, in the grad, inference and autocast modes of
    that forward (so a caller can still backpropagate through them)."""

    def __init__(self, lm_head: nn.Linear, x: Tensor, packing: Packing, width: int):
        self.lm_head, self.x, self.packing, self.width = lm_head, x, packing, width
        device = x.device.type
        self.grad, self.inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        self.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

    def make(self) -> Tensor:
        device = self.x.device.type
        inference = torch.inference_mode() if self.inference else contextlib.nullcontext()
        autocast = torch.autocast(device, dtype=self.autocast, enabled=self.autocast is not None)
        with inference, torch.set_grad_enabled(self.grad), autocast:
            return self.packing.unpack(self.lm_head(self.x), self.width)  # (B, width, V)


class LMOutput(ModelOutput):
    """A causal LM's outputs with labels: loss, logits (made when read by key, attribute, items() or index: see
    lm_logits_and_loss), num_correct and num_targets (tensors: the argmax hits and the labelled targets of this
    batch)."""

    def __init__(self, loss: Tensor, logits: _DeferredLogits, num_correct: Tensor, num_targets: int):
        super().__init__(loss=loss, logits=logits)
        self.num_correct, self.num_targets = num_correct, num_targets

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        value = super().__getitem__(key)
        if isinstance(value, _DeferredLogits):
            value = value.make()
            dict.__setitem__(self, key, value)
        return value

    def __getattr__(self, name):
        if name.startswith("__") or name not in self:
            return super().__getattr__(name)
        return self[name]

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):  # not dict's: {**outputs} and dict(outputs) then go through __getitem__
        return iter(list(dict.keys(self)))

    def values(self):
        # Not made here: torch's output walkers (FSDP's pre-backward hooks) read dict values on every forward, and
        # would make the (B, T, V) logits that the loss avoided. Read them by key, attribute, items() or index.
        return list(dict.values(self))

    def items(self):
        return [(k, self[k]) for k in self]

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self)


def packed_labels(labels: Tensor, packing: Packing) -> Tensor:
    """(B, T) per-token labels -> (N,) the labels of the real tokens (labels at padding are never read)."""
    return packing.pack(labels.to(packing.starts.device)[:, :packing.seq_len])


def token_logits_and_loss(classifier: nn.Module, x: Tensor, packing: Packing, width: int,
                          labels: Tensor | None) -> ModelOutput:
    """A token-classification head over packed tokens x (N, H) (dropout already applied): logits (B, width, L),
    zeros at padding, and with labels the cross-entropy over the labelled real tokens."""
    logits = classifier(x)  # (N, L)
    loss = None
    if labels is not None:
        loss = token_classification_loss(logits, packed_labels(labels, packing))
    return ModelOutput(loss=loss, logits=packing.unpack(logits, width))


def span_logits_and_loss(qa_outputs: nn.Linear, x: Tensor, packing: Packing, attention_mask: Tensor | None,
                         width: int, start_positions: Tensor | None, end_positions: Tensor | None) -> ModelOutput:
    """A question-answering head over packed tokens x (N, H): start and end logits (B, width) over the real tokens;
    padding holds the dtype's lowest value, so it takes no probability in the loss (the reference's softmax also
    spreads over padding, so its loss depends on how far a batch is padded; ours does not)."""
    logits = packing.unpack(qa_outputs(x), width)  # (B, width, 2)
    if attention_mask is not None:
        padding = ~attention_mask.to(logits.device).bool()[:, :width, None]  # (B, width, 1)
        logits = logits.masked_fill(padding, torch.finfo(logits.dtype).min)
    start_logits, end_logits = logits.split(1, dim=-1)
    start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
    loss = None
    if start_positions is not None and end_positions is not None:
        if attention_mask is not None:
            _check_span_targets(attention_mask, width, start=start_positions, end=end_positions)
        loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
    return ModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


def _check_span_targets(attention_mask: Tensor, width: int, **positions: Tensor) -> None:
    """An answer position inside the input (below width: beyond it, the loss ignores it, as the reference's) must be
    a real token: padding's logit here is the dtype's lowest value, so its loss would be ~1e38. With left padding
    the recipe's "no answer in this window" position 0 is padding: pad on the right or point at a real token."""
    mask = attention_mask.bool()
    for name, p in positions.items():
        p = p.reshape(-1).to(mask.device).clamp(0, width)  # (B,) the reference's clamp
        inside = p < width
        on_padding = inside & ~mask[torch.arange(len(p), device=mask.device), p.clamp(max=width - 1)]
        if bool(on_padding.any()):
            row = int(on_padding.nonzero()[0])
            raise InputError(f"{name}_positions[{row}] = {int(p[row])} points at a padding token (attention_mask 0) "
                             "of that row, which gets no logit: point it at a real token (with left padding, "
                             "position 0 is padding: use padding_side='right'), or at or beyond the input length "
                             f"({width}) to leave it out of the loss")


def flatten_choices(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """(B, C, T) multiple-choice inputs -> (B*C, T): each choice is one sequence."""
    return tuple(None if t is None else t.reshape(-1, t.shape[-1]) for t in tensors)
