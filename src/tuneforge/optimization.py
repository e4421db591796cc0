"""The reference's `transformers.optimization` names, for scripts that import them from there: the optimizers and
schedules live in tuneforge.training.optim and tuneforge.training.schedules."""
from .trainer_utils import SchedulerType  # noqa: F401
from .training.optim import Adafactor  # noqa: F401
from .training.schedules import (  # noqa: F401
    AdafactorSchedule, GreedyLR, get_adafactor_schedule, get_constant_schedule, get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup, get_cosine_with_hard_restarts_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
    get_greedy_schedule, get_inverse_sqrt_schedule, get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup, get_reduce_on_plateau_schedule, get_scheduler, get_wsd_schedule)
