"""AdamW with no decay on biases and norms, and the reference's learning-rate schedules."""
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
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # as clip_grad_norm_
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


def lr_lambda(kind: str, warmup: int, total: int, base_lr: float = 1.0, **kwargs):
    """The reference's schedule `kind` as a factor of the base learning rate, step by step (its formulas and its
    keyword arguments: num_cycles, lr_end and power, timescale, min_lr / min_lr_rate)."""
    known = {"cosine": {"num_cycles"}, "cosine_with_restarts": {"num_cycles"}, "polynomial": {"lr_end", "power"},
             "inverse_sqrt": {"timescale"}, "cosine_with_min_lr": {"num_cycles", "min_lr", "min_lr_rate"}}
    if kind not in SCHEDULES:
        raise InputError(f"lr_scheduler_type={kind!r} is not supported; use one of {', '.join(SCHEDULES)}")
    unknown = set(kwargs) - known.get(kind, set())
    if unknown:
        raise InputError(f"lr_scheduler_kwargs {', '.join(sorted(unknown))} do not apply to the {kind!r} schedule"
                         f"{' (it takes ' + ', '.join(sorted(known[kind])) + ')' if kind in known else ''}")
    cycles = kwargs.get("num_cycles", 1 if kind == "cosine_with_restarts" else 0.5)

    def warming(step):
        return step / max(1, warmup)

    def linear(step):
        return warming(step) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    def progress(step):
        return (step - warmup) / max(1, total - warmup)

    def cosine(step):
        return warming(step) if step < warmup else max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 *
                                                                                   progress(step))))

    def restarts(step):
        if step < warmup:
            return warming(step)
        if progress(step) >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress(step)) % 1.0))))

    lr_end, power = kwargs.get("lr_end", 1e-7), kwargs.get("power", 1.0)
    if kind == "polynomial" and not base_lr > lr_end:
        raise InputError(f"lr_end ({lr_end}) must be smaller than initial lr ({base_lr})")

    def polynomial(step):
        if step < warmup:
            return warming(step)
        if step > total:
            return lr_end / base_lr
        remaining = 1 - (step - warmup) / (total - warmup)
        return ((base_lr - lr_end) * remaining ** power + lr_end) / base_lr

    timescale = kwargs.get("timescale") or (warmup or 10_000)

    def inverse_sqrt(step):
        return warming(step) if step < warmup else 1.0 / math.sqrt((step + timescale - warmup) / timescale)

    min_lr, min_lr_rate = kwargs.get("min_lr"), kwargs.get("min_lr_rate")
    if kind == "cosine_with_min_lr":
        if (min_lr is None) == (min_lr_rate is None):
            raise InputError("lr_scheduler_type='cosine_with_min_lr' needs exactly one of min_lr and min_lr_rate in "
                             "lr_scheduler_kwargs")
        min_lr_rate = min_lr / base_lr if min_lr is not None else min_lr_rate

    def cosine_min(step):
        if step < warmup:
            return warming(step)
        factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress(step)))
        return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)

    return {"linear": linear, "cosine": cosine, "cosine_with_restarts": restarts, "polynomial": polynomial,
            "constant": lambda step: 1.0, "constant_with_warmup": lambda step: warming(step) if step < warmup else 1.0,
            "inverse_sqrt": inverse_sqrt, "cosine_with_min_lr": cosine_min}[kind]


SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "cosine_with_min_lr")
# The reference's other schedules, refused by name.
NOT_SCHEDULES = ("reduce_lr_on_plateau", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy")


def get_scheduler(name, optimizer: torch.optim.Optimizer, num_warmup_steps: int | None = None,
                  num_training_steps: int | None = None, scheduler_specific_kwargs: dict | None = None):
    """The reference's get_scheduler: a LambdaLR for the schedule `name`, for native PyTorch loops (call
    .step() after each optimizer.step())."""
    name = getattr(name, "value", name)
    if name in NOT_SCHEDULES:
        raise InputError(f"lr_scheduler_type={name!r} is not supported by tuneforge; use one of "
                         f"{', '.join(SCHEDULES)}")
    if name not in SCHEDULES:
        raise InputError(f"{name!r} is not a valid SchedulerType, please select one of {', '.join(SCHEDULES)}")
    if name != "constant" and num_warmup_steps is None:
        raise InputError(f"{name} requires `num_warmup_steps`, please provide that argument.")
    if name not in ("constant", "constant_with_warmup", "inverse_sqrt") and num_training_steps is None:
        raise InputError(f"{name} requires `num_training_steps`, please provide that argument.")
    base_lr = optimizer.defaults.get("lr", 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(name, num_warmup_steps or 0, num_training_steps or 0,
                                                                  base_lr, **(scheduler_specific_kwargs or {})))


def create_scheduler(optimizer: torch.optim.Optimizer, args, num_training_steps: int):
    return get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_for(num_training_steps), num_training_steps,
                         args.lr_scheduler_kwargs)


# The reference's named schedule functions, for native loops.
def get_constant_schedule(optimizer, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, 0), last_epoch=last_epoch)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps: int, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant_with_warmup", num_warmup_steps, 0),
                                             last_epoch=last_epoch)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", num_warmup_steps, num_training_steps),
                                             last_epoch=last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda("cosine", num_warmup_steps, num_training_steps, num_cycles=num_cycles),
        last_epoch=last_epoch)
