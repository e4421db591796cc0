"""Losses, outside the heads: the models' labels= forward, the Trainer and other front-ends share them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def sequence_classification_loss(logits: Tensor, labels: Tensor, config, reduction: str = "mean") -> Tensor:
    """The reference's rule: problem_type from config, else inferred from num_labels and the labels' dtype.
    reduction="none": one loss per example (B,) (the mean over its labels), for weighting (Keras' sample_weight);
    their mean is the "mean" loss."""
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
            loss = F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if reduction == "mean" else \
                F.mse_loss(logits.squeeze(-1), labels.reshape(len(logits)).to(logits.dtype), reduction=reduction)
        else:
            loss = F.mse_loss(logits, labels.to(logits.dtype), reduction=reduction)
    elif problem_type == "single_label_classification":
        loss = F.cross_entropy(logits.view(-1, num_labels), labels.view(-1), reduction=reduction)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction=reduction)
    return loss.reshape(len(logits), -1).mean(-1) if reduction == "none" else loss


def causal_lm_loss(logits: Tensor, targets: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Next-token cross-entropy: logits (M, V) and each row's target (M,), the label of the token after it, shifted
    within its own sequence; -100 ignored. The mean over the labelled tokens, or their sum divided by
    num_items_in_batch (the labelled tokens of a whole accumulation window)."""
    if num_items_in_batch is None:
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / num_items_in_batch


def chunk_rows(vocab_size: int) -> int:
    """Rows of logits made at a time by chunked_lm_loss: just under 32 MiB of float32 values, whatever the
    vocabulary. glibc serves larger blocks with a fresh mmap each time, so a bigger chunk's logits would be faulted
    in page by page at every chunk of every step; below it the block is reused from the heap."""
    return max(16, (2**23 - 2**12) // max(vocab_size, 1))


def chunked_lm_loss(x: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                    num_items_in_batch: int | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The LM head and next-token cross-entropy on labelled rows only, a chunk of rows at a time, never holding more
    than one chunk's logits: x (M, H) hidden states of the labelled tokens, weight (V, H), targets (M,).
    -> (the mean loss over the M targets, or their sum / num_items_in_batch; the number of targets that are the
    argmax, for token accuracy). Its gradient is made chunk by chunk during the forward, so the logits and their
    softmax are gone before the backward (which only scales them). Under autocast the matmuls run in its dtype and
    the softmax in float32, as the reference's head and loss do."""
    divisor = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    divisor = float(divisor) if not isinstance(divisor, Tensor) else float(divisor.item())
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    # A Function's needs_input_grad follows requires_grad, not the grad mode: under no_grad or inference_mode (eval)
    # the parameters still require grad, and the gradients would be made for nothing.
    grad = torch.is_grad_enabled()
    return _ChunkedLMLoss.apply(x, weight, bias, targets, max(divisor, 1.0), dtype, grad)


class _ChunkedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, targets, divisor: float, dtype: torch.dtype, grad: bool):
        rows, chunk = x.shape[0], chunk_rows(weight.shape[0])
        needs = ctx.needs_input_grad if grad else (False, False, False)
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            grad_x = torch.empty_like(x) if needs[0] else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and needs[2] else None
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            correct = torch.zeros((), dtype=torch.long, device=x.device)
            buffer = torch.empty((min(chunk, rows), weight.shape[0]), dtype=torch.float32, device=x.device)
            for start in range(0, rows, chunk):
                xc, tc = x[start:start + chunk].to(dtype), targets[start:start + chunk]
                logits = buffer[:len(tc)]  # (c, V), one buffer for every chunk
                if dtype != torch.float32:
                    logits.copy_(torch.nn.functional.linear(xc, w, b))
                elif b is None:
                    torch.mm(xc, w.t(), out=logits)
                else:
                    torch.addmm(b, xc, w.t(), out=logits)
                picked = logits.gather(1, tc[:, None]).squeeze(1)  # (c,)
                top, best = logits.max(-1)  # (c,), (c,)
                correct += (best == tc).sum()
                sums = logits.sub_(top[:, None]).exp_().sum(-1)  # exp(logits - max) in place, (c,)
                total += (top + sums.log() - picked).sum(dtype=torch.float64)  # log-sum-exp - picked
                if grad_x is None and grad_w is None and grad_b is None:
                    continue
                g = logits.mul_((1.0 / (sums * divisor))[:, None])  # softmax / divisor, in place
                g[torch.arange(len(tc), device=x.device), tc] -= 1.0 / divisor
                g = g.to(dtype)  # d loss / d logits, (c, V)
                if grad_x is not None:
                    if grad_x.dtype == dtype:
                        torch.mm(g, w, out=grad_x[start:start + chunk])
                    else:
                        grad_x[start:start + chunk] = g @ w
                if grad_w is not None:
                    if dtype == torch.float32:
                        grad_w.addmm_(g.t(), xc)
                    else:
                        grad_w += g.t() @ xc
                if grad_b is not None:
                    grad_b += g.sum(0, dtype=torch.float32)
        ctx.grads = (grad_x, None if grad_w is None else grad_w.to(weight.dtype),
                     None if grad_b is None else grad_b.to(bias.dtype))
        ctx.mark_non_differentiable(correct)
        return (total / divisor).float(), correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grads = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads]
        ctx.grads = None
        return (*grads, None, None, None, None)


def token_classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over tokens: logits (M, L) and labels (M,), -100 ignored; the mean over the labelled ones, as
    the reference's (which also averages per batch, not over an accumulation window)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def question_answering_loss(start_logits: Tensor, end_logits: Tensor, start_positions: Tensor,
                            end_positions: Tensor) -> Tensor:
    """The reference's span loss: positions (B,) clamped to [0, T]; T (an answer outside the input) is ignored; the
    mean of the start and end cross-entropies over the (B, T) logits."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.shape[1]
    start_positions = start_positions.to(start_logits.device).clamp(0, ignored)
    end_positions = end_positions.to(end_logits.device).clamp(0, ignored)
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
    return (start + end) / 2


def multiple_choice_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the choices: logits (B, C), labels (B,)."""
    return F.cross_entropy(logits.float(), labels.to(logits.device))
