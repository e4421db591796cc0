"""AdamW (and the other optimizers) with no decay on biases and norms, gradient clipping, the embedding's
touched-rows step (EmbeddingRows), and Adafactor. The learning-rate schedules are in schedules.py."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError

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
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate)
    if args.optim == "adagrad":
        return torch.optim.Adagrad(groups, lr=args.learning_rate)
    if args.optim == "rmsprop":
        return torch.optim.RMSprop(groups, lr=args.learning_rate)
    if args.optim == "adafactor":  # as the reference's Trainer: the schedule sets the step, unscaled
        return Adafactor(groups, lr=args.learning_rate, scale_parameter=False, relative_step=False)
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
    for p in parameters:
        if p.grad is not None and p.grad.is_sparse:  # EmbeddingRows: one value per row, for the norm
            p.grad = p.grad.coalesce()
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in parameters if p.grad is not None]
    # In float32 whatever the gradients' dtype: the fused AdamW takes a float32 grad_scale (a bf16 model's too).
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp_(min=1.0)  # clip_grad_norm_'s factor, inverted
    return norm


class EmbeddingRows:
    """Fused AdamW for a word embedding on just the rows that have had a gradient, from sparse gradients.

    A row that never had a gradient has zero moments, and AdamW without weight decay leaves it exactly as it is; yet
    the dense step streams all of the embedding and both its moments (half of a MiniLM's parameters) and the
    backward fills a dense gradient, while a batch touches a few hundred of 30k rows. Between begin() and end(),
    the moments of the touched rows live here, packed in order of first touch, and the optimizer's state dict gets
    them as the usual dense tensors, so checkpoints are the standard ones. Once a quarter of the rows have been
    touched, the optimizer's dense step is cheaper, and takes over."""

    def __init__(self, optimizer: torch.optim.AdamW, embedding: nn.Embedding):
        self.optimizer, self.embedding, self.weight = optimizer, embedding, embedding.weight
        # Places, not the objects: load_state_dict replaces the groups.
        self.group_index = next(i for i, g in enumerate(optimizer.param_groups)
                                if any(p is self.weight for p in g["params"]))
        self.index = [id(p) for g in optimizer.param_groups for p in g["params"]].index(id(self.weight))
        self.active = False

    @staticmethod
    def attach(optimizer: torch.optim.Optimizer, model: nn.Module) -> EmbeddingRows | None:
        """For the model's input embedding, where the result is exactly the dense step's: a fused AdamW without
        weight decay on it."""
        embedding = getattr(model, "get_input_embeddings", lambda: None)()
        if not (isinstance(embedding, nn.Embedding) and embedding.weight.requires_grad and embedding.max_norm is None
                and isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")):
            return None
        # A weight tied to a language-model head gets a gradient on every row: nothing to skip.
        if sum(p is embedding.weight for _, p in model.named_parameters(remove_duplicate=False)) > 1:
            return None
        rows = EmbeddingRows(optimizer, embedding)
        if not rows.exact():
            return None
        optimizer.register_step_pre_hook(lambda *_: rows.step())
        optimizer.register_state_dict_post_hook(rows.add_dense_moments)
        optimizer.register_load_state_dict_post_hook(lambda _: rows.pack() if rows.active else None)
        return rows

    def exact(self) -> bool:
        group = self.optimizer.param_groups[self.group_index]
        return group["weight_decay"] == 0.0 and not group["amsgrad"] and not group["maximize"]

    def begin(self) -> None:
        if self.exact():  # (a resumed checkpoint brings its own hyperparameters)
            self.active = self.embedding.sparse = True
            self.pack()

    def end(self) -> None:
        """Back to dense gradients, and the moments into the optimizer's state."""
        if self.active:
            state = self.optimizer.state.get(self.weight, {})
            if "step" in state:  # else no step yet: the optimizer starts the state itself
                state.update(self.dense_moments())
            if self.weight.grad is not None and self.weight.grad.is_sparse:  # e.g. stopped between backward and step
                self.weight.grad = self.weight.grad.to_dense()
            self.active = self.embedding.sparse = False

    def pack(self) -> None:
        """The optimizer's dense moments, if any, -> the touched rows' here."""
        state, (vocab, hidden) = self.optimizer.state.get(self.weight, {}), self.weight.shape
        self.slot = torch.full((vocab,), -1, dtype=torch.long, device=self.weight.device)  # row -> packed place
        self.rows, self.count = self.slot[:0], 0
        self.exp_avg = self.exp_avg_sq = self.weight.new_zeros(0, hidden)
        if "exp_avg" in state:
            moments = state.pop("exp_avg"), state.pop("exp_avg_sq")
            self.add_rows((moments[0].ne(0).any(1) | moments[1].ne(0).any(1)).nonzero().squeeze(1))
            for packed, dense in zip((self.exp_avg, self.exp_avg_sq), moments):
                torch.index_select(dense, 0, self.rows[:self.count], out=packed[:self.count])
            if self.dense_is_cheaper():
                self.end()

    def add_rows(self, new: torch.Tensor) -> None:
        """Packed places for rows touched for the first time, in buffers that double when full."""
        self.slot[new] = torch.arange(self.count, self.count + len(new), device=new.device)
        self.count += len(new)
        if self.count > len(self.rows):
            capacity = max(2 * len(self.rows), self.count, 1024)
            grow = lambda t: torch.cat([t, t.new_zeros(capacity - len(t), *t.shape[1:])])  # noqa: E731
            self.rows, self.exp_avg, self.exp_avg_sq = grow(self.rows), grow(self.exp_avg), grow(self.exp_avg_sq)
        self.rows[self.count - len(new):self.count] = new

    def dense_is_cheaper(self) -> bool:
        return self.count > len(self.slot) // 4

    def dense_moments(self) -> dict[str, torch.Tensor]:
        rows = self.rows[:self.count]
        return {name: torch.zeros_like(self.weight).index_copy_(0, rows, m[:self.count])
                for name, m in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq))}

    def add_dense_moments(self, optimizer, state_dict: dict) -> dict:
        state = state_dict["state"].get(self.index, {})
        if self.active and "step" in state:  # a new dict: the state dict shares the optimizer's
            state_dict["state"][self.index] = {**state, **self.dense_moments()}
        return state_dict

    @torch.no_grad()
    def step(self) -> None:
        grad = self.weight.grad
        if not self.active or grad is None:
            return
        if not grad.is_sparse:  # e.g. the weight is also used elsewhere, densely: the optimizer's own step
            self.end()
            return
        grad = grad.coalesce()
        ids, values = grad.indices()[0], grad.values()
        self.add_rows(ids[self.slot[ids] < 0])
        if self.dense_is_cheaper():
            self.end()  # with the gradient made dense, for the optimizer's own step
            return
        state, n = self.optimizer.state[self.weight], self.count
        if "step" not in state:  # as the fused AdamW starts it
            state["step"] = torch.zeros((), dtype=torch.float32, device=self.weight.device)
        state["step"] += 1
        rows = self.rows[:n]
        g = values.new_zeros(n, values.shape[1]).index_copy_(0, self.slot[ids], values)
        p = self.weight.index_select(0, rows)
        group = self.optimizer.param_groups[self.group_index]
        beta1, beta2 = group["betas"]
        torch._fused_adamw_([p], [g], [self.exp_avg[:n]], [self.exp_avg_sq[:n]], [], [state["step"]],
                            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                            amsgrad=False, maximize=False, grad_scale=getattr(self.optimizer, "grad_scale", None),
                            found_inf=None)
        self.weight.index_copy_(0, rows, p)
        self.weight.grad = None  # the dense step skips it


class Adafactor(torch.optim.Optimizer):
    """The reference's Adafactor (Shazeer & Stern 2018, as in fairseq): the second moment of a matrix kept as its row
    and column means, the update clipped to an RMS of clip_threshold, first moment only with beta1. relative_step=True
    computes the step size from the step count (min(1e-2, 1/sqrt(step)), or min(1e-6 * step, 1/sqrt(step)) with
    warmup_init) instead of taking lr; scale_parameter=True multiplies it by the parameter's RMS (at least eps[1]).
    For an external schedule: relative_step=False, scale_parameter=False and an lr, as optim="adafactor" does."""

    def __init__(self, params, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                 weight_decay=0.0, scale_parameter=True, relative_step=True, warmup_init=False):
        if lr is not None and relative_step:
            raise InputError(f"Cannot combine manual `lr` ({lr}) and `relative_step=True` options")
        if warmup_init and not relative_step:
            raise InputError("`warmup_init=True` requires `relative_step=True`")
        # The reference fails at the first step on these two.
        if lr is None and not relative_step:
            raise InputError("Adafactor with relative_step=False needs an lr")
        if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
            raise InputError(f"Adafactor eps={eps!r} must be a pair (for the squared gradient, for the parameter "
                             "scale)")
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate,
                                      beta1=beta1, weight_decay=weight_decay, scale_parameter=scale_parameter,
                                      relative_step=relative_step, warmup_init=warmup_init))

    @staticmethod
    def _get_lr(group: dict, state: dict):
        """The step size (AdafactorSchedule reports it)."""
        size = group["lr"]
        if group["relative_step"]:
            size = min(1e-6 * state["step"] if group["warmup_init"] else 1e-2, 1.0 / math.sqrt(state["step"]))
        return max(group["eps"][1], state["RMS"]) * size if group["scale_parameter"] else size

    @staticmethod
    def _rms(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.norm(2) / (tensor.numel() ** 0.5)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1 = group["beta1"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients.")
                low = (torch.float16, torch.bfloat16)  # these are stepped in float32
                grad = p.grad.float() if p.grad.dtype in low else p.grad
                state, factored = self.state[p], grad.dim() >= 2
                if not state:
                    state["step"], state["RMS"] = 0, 0
                    if beta1 is not None:
                        state["exp_avg"] = torch.zeros_like(grad)
                    if factored:
                        state["exp_avg_sq_row"] = grad.new_zeros(grad.shape[:-1])
                        state["exp_avg_sq_col"] = grad.new_zeros(grad.shape[:-2] + grad.shape[-1:])
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                else:  # load_state_dict gives the moments the parameter's dtype
                    for key in ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
                        if key in state:
                            state[key] = state[key].to(grad)
                param = p.float() if p.dtype in low else p
                state["step"] += 1
                state["RMS"] = self._rms(param)
                lr = self._get_lr(group, state)
                beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
                update = grad ** 2 + group["eps"][0]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2t).add_(update.mean(dim=-1), alpha=1.0 - beta2t)
                    col.mul_(beta2t).add_(update.mean(dim=-2), alpha=1.0 - beta2t)
                    # 1/sqrt of the second moment, rebuilt as row mean x column mean / overall mean
                    update = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1) * col.unsqueeze(-2).rsqrt()
                    update.mul_(grad)
                else:
                    state["exp_avg_sq"].mul_(beta2t).add_(update, alpha=1.0 - beta2t)
                    update = state["exp_avg_sq"].rsqrt().mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(lr)
                if beta1 is not None:
                    update = state["exp_avg"].mul_(beta1).add_(update, alpha=1 - beta1)
                if group["weight_decay"] != 0:
                    param.add_(param, alpha=-group["weight_decay"] * lr)
                param.add_(-update)
                if param is not p:
                    p.copy_(param)
        return loss
