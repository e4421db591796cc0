"""AdamW with no decay on biases and norms, and the reference's learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Weights that get weight decay: everything but biases and normalisation parameters."""
    no_decay = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_TYPES) or param_name == "bias" or "norm" in module_name.lower():
                no_decay.add(full)
    return {name for name, _ in model.named_parameters()} - no_decay


def create_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    decay = decay_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    # The fused kernel updates every tensor in one pass: the step costs far less on CPU than the for-loop.
    fused = args.optim == "adamw_torch_fused"
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=fused or None, foreach=None if fused else False)


def clip_gradients(parameters, max_norm: float, optimizer: torch.optim.Optimizer, sharded: bool) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most max_norm, like clip_grad_norm_; returns the norm
    before clipping. A fused AdamW applies the factor itself, through the grad_scale it divides gradients by in its
    one pass over every tensor (meant for AMP unscaling): that saves a separate multiply over all the gradients."""
    if sharded or not (isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")):
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = nn.utils.get_total_norm(grads)
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp_(min=1.0)  # clip_grad_norm_'s factor, inverted
    return norm


def lr_lambda(kind: str, warmup: int, total: int):
    def linear(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def cosine(step):
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def constant_with_warmup(step):
        return step / max(1, warmup) if step < warmup else 1.0

    return {"linear": linear, "cosine": cosine, "constant": lambda step: 1.0,
            "constant_with_warmup": constant_with_warmup}[kind]


def create_scheduler(optimizer: torch.optim.Optimizer, args, num_training_steps: int):
    warmup = args.warmup_for(num_training_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_scheduler_type, warmup, num_training_steps))
