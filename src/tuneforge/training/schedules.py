"""The reference's learning-rate schedules: get_scheduler for every lr_scheduler_type (its formulas, arguments and
checks), the named get_*_schedule* functions, GreedyLR, and Adafactor's own schedule."""
from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import InputError


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
