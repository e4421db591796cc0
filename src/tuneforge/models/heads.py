"""What task heads read, by rule: encoders' classification heads read each sequence's first token (LayerStack's
heads_only); decoders' read the last real token (last_token_rows); language-model heads read every token."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Packing
from .layers import ModelOutput
from .losses import IGNORE_INDEX, causal_lm_loss


def last_token_rows(input_ids: Tensor, attention_mask: Tensor | None, packing: Packing,
                    pad_token_id: int | None) -> Tensor:
    """(B,) packed row of the token a decoder's sequence-classification head reads, by the reference's rule: the
    rightmost token that is not pad_token_id (left or right padding alike). Where that is no real token by the
    attention mask, or no pad_token_id is set (the reference then refuses batches of more than one), it is the last
    real token by the mask."""
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


def count_lm_targets(labels: Tensor) -> int:
    """The tokens a language-model loss averages over: labels after the shift that are not -100."""
    return int(labels[:, 1:].ne(IGNORE_INDEX).sum())


def lm_logits_and_loss(lm_head: nn.Linear, x: Tensor, packing: Packing, width: int, labels: Tensor | None,
                       num_items_in_batch=None) -> ModelOutput:
    """The language-model head over packed tokens x (N, H): logits (B, width, V), zeros at padding, and with
    labels the next-token loss over the labelled tokens."""
    logits = lm_head(x)  # (N, V)
    loss = None
    if labels is not None:
        targets = shifted_targets(labels.to(logits.device), packing)  # (N,)
        kept = targets.ne(IGNORE_INDEX)
        loss = causal_lm_loss(logits[kept], targets[kept], num_items_in_batch)
    return ModelOutput(loss=loss, logits=packing.unpack(logits, width))
