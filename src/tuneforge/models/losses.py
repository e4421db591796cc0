"""Losses, outside the heads: the models' labels= forward, the Trainer and other front-ends share them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def sequence_classification_loss(logits: Tensor, labels: Tensor, config) -> Tensor:
    """The reference's rule: problem_type from config, else inferred from num_labels and the labels' dtype."""
    num_labels = logits.shape[-1]
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
        config.problem_type = problem_type
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def causal_lm_loss(logits: Tensor, targets: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Next-token cross-entropy: logits (M, V) and each row's target (M,), the label of the token after it, shifted
    within its own sequence; -100 ignored. The mean over the labelled tokens, or their sum divided by
    num_items_in_batch (the labelled tokens of a whole accumulation window)."""
    if num_items_in_batch is None:
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / num_items_in_batch
