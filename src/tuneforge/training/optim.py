"""AdamW (and the other optimizers) with no decay on biases and norms, Adafactor, and the reference's learning-rate
schedules."""
from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

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


# The reference's schedules (its SchedulerType, in order) with the lr_scheduler_kwargs each takes; the two that follow
# a metric take their class's keyword arguments (None here).
SCHEDULE_KWARGS = {
    "linear": (), "cosine": ("num_cycles",), "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"), "constant": (), "constant_with_warmup": (), "inverse_sqrt": ("timescale",),
    "reduce_lr_on_plateau": None, "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
                            "num_cycles"),
    "greedy": None,
}
SCHEDULES = tuple(SCHEDULE_KWARGS)
# Stepped with an evaluation metric (scheduler.step(metric)), not after every optimizer step.
METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")
WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def check_kwargs(kind: str, kwargs: dict, known) -> None:
    unknown = set(kwargs) - set(known)
    if unknown:
        raise InputError(f"lr_scheduler_kwargs {', '.join(sorted(unknown))} do not apply to the {kind!r} schedule"
                         f"{' (it takes ' + ', '.join(sorted(known)) + ')' if known else ''}")


def lr_lambda(kind: str, warmup: int, total: int | None, base_lr: float = 1.0, **kwargs):
    """The reference's schedule `kind` as a factor of the base learning rate, step by step (its formulas and its
    keyword arguments: num_cycles, lr_end and power, timescale, min_lr / min_lr_rate, warmup_lr_rate, and
    warmup_stable_decay's num_decay_steps, num_stable_steps, warmup_type, decay_type, min_lr_ratio)."""
    if kind not in SCHEDULES:
        raise InputError(f"lr_scheduler_type={kind!r} is not supported; use one of {', '.join(SCHEDULES)}")
    if kind in METRIC_SCHEDULES:
        raise InputError(f"lr_scheduler_type={kind!r} follows an evaluation metric, not the step; use get_scheduler")
    check_kwargs(kind, kwargs, SCHEDULE_KWARGS[kind])
    if kind == "warmup_stable_decay":
        return wsd_lambda(warmup, total, **kwargs)
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
    if kind in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if (min_lr is None) == (min_lr_rate is None):
            raise InputError(f"lr_scheduler_type={kind!r} needs exactly one of min_lr and min_lr_rate in "
                             f"lr_scheduler_kwargs (got min_lr={min_lr}, min_lr_rate={min_lr_rate})")
        min_lr_rate = min_lr / base_lr if min_lr is not None else min_lr_rate

    def cosine_min(step):
        if step < warmup:
            return warming(step)
        factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress(step)))
        return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)

    warmup_lr_rate = kwargs.get("warmup_lr_rate")

    def cosine_warmup_min(step):
        # The reference's variant: warmup and decay both one step ahead, or warmup from warmup_lr_rate.
        if step < warmup:
            if warmup_lr_rate is None:
                return (step + 1.0) / max(1.0, warmup)
            return warmup_lr_rate + (1.0 - warmup_lr_rate) * step / max(1, warmup - 1)
        ahead = (step - warmup + 1.0) / max(1.0, total - warmup)
        factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * ahead))
        return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)

    return {"linear": linear, "cosine": cosine, "cosine_with_restarts": restarts, "polynomial": polynomial,
            "constant": lambda step: 1.0, "constant_with_warmup": lambda step: warming(step) if step < warmup else 1.0,
            "inverse_sqrt": inverse_sqrt, "cosine_with_min_lr": cosine_min,
            "cosine_warmup_with_min_lr": cosine_warmup_min}[kind]


def wsd_lambda(warmup: int, total: int | None, num_decay_steps: int | None = None, num_stable_steps: int | None = None,
               warmup_type: str = "linear", decay_type: str = "cosine", min_lr_ratio: float = 0,
               num_cycles: float = 0.5):
    """warmup_stable_decay: from min_lr_ratio up to 1 in the warmup, 1 for num_stable_steps (by default the steps
    that warmup and decay leave), down to min_lr_ratio in num_decay_steps, then min_lr_ratio."""
    if num_decay_steps is None:
        raise InputError("lr_scheduler_type='warmup_stable_decay' needs num_decay_steps in lr_scheduler_kwargs")
    if total is None and num_stable_steps is None:
        raise InputError("warmup_stable_decay needs num_training_steps or num_stable_steps in lr_scheduler_kwargs")
    if total is not None and num_stable_steps is not None:
        warnings.warn("Both num_training_steps and num_stable_steps are specified. num_stable_steps will be used.")
    for name, shape in (("warmup_type", warmup_type), ("decay_type", decay_type)):
        if shape not in WSD_SHAPES:
            raise InputError(f"{name}={shape!r} is not supported; use one of {', '.join(WSD_SHAPES)}")
    decay = num_decay_steps
    stable = total - warmup - decay if num_stable_steps is None else num_stable_steps
    rising = {"linear": lambda x: x, "cosine": lambda x: 0.5 * (1.0 - math.cos(math.pi * x)),
              "1-sqrt": lambda x: 1.0 - math.sqrt(1.0 - x)}[warmup_type]
    falling = {"linear": lambda x: 1.0 - x, "cosine": lambda x: 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * x)),
               "1-sqrt": lambda x: 1.0 - math.sqrt(x)}[decay_type]

    def wsd(step):
        if step < warmup:
            factor = rising(step / max(1, warmup))
        elif step < warmup + stable:
            return 1.0
        elif step < warmup + stable + decay:
            factor = falling((step - warmup - stable) / max(1, decay))
        else:
            return min_lr_ratio
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)

    return wsd


def get_scheduler(name, optimizer: torch.optim.Optimizer, num_warmup_steps: int | None = None,
                  num_training_steps: int | None = None, scheduler_specific_kwargs: dict | None = None):
    """The reference's get_scheduler: a LambdaLR for the schedule `name`, for native PyTorch loops (call .step()
    after each optimizer.step()); for reduce_lr_on_plateau and greedy torch's ReduceLROnPlateau and GreedyLR (call
    .step(metric) after each evaluation)."""
    name = getattr(name, "value", name)
    if name not in SCHEDULES:
        raise InputError(f"{name!r} is not a valid SchedulerType, please select one of {', '.join(SCHEDULES)}")
    kwargs = scheduler_specific_kwargs or {}
    if name in METRIC_SCHEDULES:
        cls = torch.optim.lr_scheduler.ReduceLROnPlateau if name == "reduce_lr_on_plateau" else GreedyLR
        check_kwargs(name, kwargs, [p for p in inspect.signature(cls).parameters if p != "optimizer"])
        return cls(optimizer, **kwargs)
    if name != "constant" and num_warmup_steps is None:
        raise InputError(f"{name} requires `num_warmup_steps`, please provide that argument.")
    if name not in ("constant", "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay") \
            and num_training_steps is None:
        raise InputError(f"{name} requires `num_training_steps`, please provide that argument.")
    base_lr = optimizer.defaults.get("lr", 1.0)
    return LambdaLR(optimizer, lr_lambda(name, num_warmup_steps or 0, num_training_steps, base_lr, **kwargs))


def create_scheduler(optimizer: torch.optim.Optimizer, args, num_training_steps: int):
    return get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_for(num_training_steps), num_training_steps,
                         args.lr_scheduler_kwargs)


class GreedyLR:
    """The reference's "greedy" schedule (GreedyLR, arXiv 2512.14527), stepped with an evaluation metric: after more
    than `patience` improvements in a row the learning rate is divided by `factor`, after more than `patience`
    evaluations without one it is multiplied by it, within [min_lr, max_lr] and for changes above eps; `cooldown` /
    `warmup` evaluations are sat out after a decrease / an increase. After `reset_start` decreases that leave every
    group at min_lr it starts over from the initial rates. smooth=True compares the mean of the last `window_size`
    metrics. The state dict has the reference's keys, so checkpoints move between the two."""

    STATE = ("factor", "min_lrs", "max_lrs", "patience", "verbose", "cooldown", "warmup", "cooldown_counter",
             "warmup_counter", "mode", "threshold", "threshold_mode", "best", "num_bad_epochs", "num_good_epochs",
             "eps", "last_epoch", "smooth", "window_size", "reset_start", "reset_start_original", "_last_lr",
             "_init_lrs")

    def __init__(self, optimizer: torch.optim.Optimizer, mode: str = "min", factor: float = 0.95, patience: int = 10,
                 threshold: float = 1e-6, threshold_mode: str = "abs", cooldown: int = 0, warmup: int = 0,
                 min_lr: float | list[float] = 1e-3, max_lr: float | list[float] = 1.0, eps: float = 1e-8,
                 verbose: bool = False, smooth: bool = False, window_size: int = 50, reset_start: int = 500):
        if factor >= 1.0:
            raise InputError(f"GreedyLR factor={factor}: Factor should be < 1.0.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if mode not in ("min", "max"):
            raise InputError(f"GreedyLR mode={mode!r} is unknown; use min or max")
        if threshold_mode not in ("rel", "abs"):
            raise InputError(f"GreedyLR threshold_mode={threshold_mode!r} is unknown; use rel or abs")
        groups = len(optimizer.param_groups)
        for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
            if isinstance(value, (list, tuple)) and len(value) != groups:
                raise InputError(f"GreedyLR {name}={list(value)}: expected {groups} values, one per parameter group")
        self.optimizer, self.mode, self.factor, self.patience, self.threshold = optimizer, mode, factor, patience, \
            threshold
        self.threshold_mode, self.cooldown, self.warmup, self.eps, self.verbose = threshold_mode, cooldown, warmup, \
            eps, verbose
        self.smooth, self.window_size, self.reset_start = smooth, window_size, reset_start
        self.reset_start_original, self.last_epoch = reset_start, 0
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * groups
        self.max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * groups
        self._init_lrs = [group["lr"] for group in optimizer.param_groups]
        self._last_lr = list(self._init_lrs)
        self._start_over()

    def _start_over(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.num_good_epochs = self.cooldown_counter = self.warmup_counter = 0
        self.reset_start = self.reset_start_original
        self._window, self._window_sum = [], 0.0

    def step(self, metrics: float, epoch: int | None = None) -> None:
        current = float(metrics)
        if self.smooth:
            # A running sum, added to before it is taken from, as the reference's: the same floats, the same choices.
            self._window.append(current)
            self._window_sum += current
            if len(self._window) > self.window_size:
                self._window_sum -= self._window.pop(0)
            current = self._window_sum / len(self._window)
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self.cooldown_counter > 0 or self.warmup_counter > 0:  # sitting out: the counts start afresh after
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
            else:
                self.warmup_counter -= 1
            self.num_bad_epochs = self.num_good_epochs = 0
        else:
            if self.is_better(current, self.best):
                self.best, self.num_bad_epochs, self.num_good_epochs = current, 0, self.num_good_epochs + 1
            else:
                self.num_bad_epochs, self.num_good_epochs = self.num_bad_epochs + 1, 0
            if self.num_good_epochs > self.patience:
                self._increase_lr()
                self.warmup_counter, self.num_good_epochs = self.warmup, 0
            elif self.num_bad_epochs > self.patience:
                self._reduce_lr()
                self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def is_better(self, current: float, best: float) -> bool:
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return current < (best * (1.0 - self.threshold) if rel else best - self.threshold)
        return current > (best * (1.0 + self.threshold) if rel else best + self.threshold)

    def _set_lr(self, i: int, group: dict, lr: float, verb: str) -> None:
        group["lr"] = lr
        if self.verbose:
            print(f"Epoch {self.last_epoch}: {verb} learning rate of group {i} to {lr:.4e}.")

    def _reduce_lr(self) -> None:
        at_min = True
        for i, group in enumerate(self.optimizer.param_groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                self._set_lr(i, group, new, "reducing")
            at_min = at_min and not group["lr"] > self.min_lrs[i]
        if at_min:
            self.reset_start -= 1
            if self.reset_start <= 0:  # stuck at the floor: start over
                for group, lr in zip(self.optimizer.param_groups, self._init_lrs):
                    group["lr"] = lr
                self._start_over()
                if self.verbose:
                    print("Scheduler reset to initial state.")

    def _increase_lr(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            old = float(group["lr"])
            new = min(old / self.factor, self.max_lrs[i])
            if new - old > self.eps:
                self._set_lr(i, group, new, "increasing")
        self.reset_start = self.reset_start_original

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict:
        state = {name: getattr(self, name) for name in self.STATE}
        state.update({k: list(v) for k, v in state.items() if isinstance(v, list)})  # copies, not the live lists
        if self.smooth:
            state["_streaming_avg"] = {"window_size": self.window_size, "values": list(self._window),
                                       "sum": self._window_sum}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        for name in self.STATE:
            if name in state_dict:
                setattr(self, name, list(state_dict[name]) if isinstance(state_dict[name], list) else state_dict[name])
        if "_streaming_avg" in state_dict:
            window = state_dict["_streaming_avg"]
            self._window, self._window_sum = list(window.get("values", [])), window.get("sum", 0.0)
        if "_last_lr" in state_dict:
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr


def metric_driven(scheduler) -> bool:
    """Whether the scheduler steps with an evaluation metric, after evaluations, not after every optimizer step."""
    return isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR))


# The reference's named schedule functions, for native loops.
def _lambda_schedule(optimizer, kind: str, warmup: int, total: int | None, last_epoch: int, **kwargs) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda(kind, warmup, total, optimizer.defaults.get("lr", 1.0), **kwargs),
                    last_epoch=last_epoch)


def get_constant_schedule(optimizer, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "constant", 0, None, last_epoch)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps: int, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "constant_with_warmup", num_warmup_steps, None, last_epoch)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "linear", num_warmup_steps, num_training_steps, last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "cosine", num_warmup_steps, num_training_steps, last_epoch,
                            num_cycles=num_cycles)


def get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                                       num_cycles: int = 1, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "cosine_with_restarts", num_warmup_steps, num_training_steps, last_epoch,
                            num_cycles=num_cycles)


def get_polynomial_decay_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, lr_end=1e-7,
                                              power=1.0, last_epoch=-1):
    return _lambda_schedule(optimizer, "polynomial", num_warmup_steps, num_training_steps, last_epoch,
                            lr_end=lr_end, power=power)


def get_inverse_sqrt_schedule(optimizer, num_warmup_steps: int, timescale: int | None = None, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "inverse_sqrt", num_warmup_steps, None, last_epoch, timescale=timescale)


def get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                                num_cycles: float = 0.5, last_epoch: int = -1,
                                                min_lr: float | None = None, min_lr_rate: float | None = None):
    return _lambda_schedule(optimizer, "cosine_with_min_lr", num_warmup_steps, num_training_steps, last_epoch,
                            num_cycles=num_cycles, min_lr=min_lr, min_lr_rate=min_lr_rate)


def get_cosine_with_min_lr_schedule_with_warmup_lr_rate(optimizer, num_warmup_steps: int, num_training_steps: int,
                                                        num_cycles: float = 0.5, last_epoch: int = -1,
                                                        min_lr: float | None = None,
                                                        min_lr_rate: float | None = None,
                                                        warmup_lr_rate: float | None = None):
    return _lambda_schedule(optimizer, "cosine_warmup_with_min_lr", num_warmup_steps, num_training_steps, last_epoch,
                            num_cycles=num_cycles, min_lr=min_lr, min_lr_rate=min_lr_rate,
                            warmup_lr_rate=warmup_lr_rate)


def get_wsd_schedule(optimizer, num_warmup_steps: int, num_decay_steps: int, num_training_steps: int | None = None,
                     num_stable_steps: int | None = None, warmup_type: str = "linear", decay_type: str = "cosine",
                     min_lr_ratio: float = 0, num_cycles: float = 0.5, last_epoch: int = -1):
    return _lambda_schedule(optimizer, "warmup_stable_decay", num_warmup_steps, num_training_steps, last_epoch,
                            num_decay_steps=num_decay_steps, num_stable_steps=num_stable_steps,
                            warmup_type=warmup_type, decay_type=decay_type, min_lr_ratio=min_lr_ratio,
                            num_cycles=num_cycles)


def get_reduce_on_plateau_schedule(optimizer, **kwargs):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)


def get_greedy_schedule(optimizer, **kwargs):
    return GreedyLR(optimizer, **kwargs)


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


class AdafactorSchedule(LambdaLR):
    """For an Adafactor that sizes its own steps (relative_step=True): reports that step size as the learning rate,
    for logging; initial_lr before the first step."""

    def __init__(self, optimizer, initial_lr: float = 0.0):
        for group in optimizer.param_groups:
            group["initial_lr"] = initial_lr  # LambdaLR's base_lrs, rather than the groups' lr (None)
        super().__init__(optimizer, lambda _: initial_lr)
        for group in optimizer.param_groups:
            del group["initial_lr"]

    def get_lr(self):
        opt = self.optimizer
        lrs = [opt._get_lr(group, opt.state[group["params"][0]]) for group in opt.param_groups
               if group["params"][0].grad is not None]
        return lrs or self.base_lrs


def get_adafactor_schedule(optimizer, initial_lr: float = 0.0):
    return AdafactorSchedule(optimizer, initial_lr)
