"""The reference's `transformers.optimization` names, for scripts that import them from there: the optimizers and
schedules live in tuneforge.training.optim."""
from .training.optim import (Adafactor, AdafactorSchedule, GreedyLR, get_adafactor_schedule,  # noqa: F401
                             get_constant_schedule, get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                             get_cosine_with_hard_restarts_schedule_with_warmup,
                             get_cosine_with_min_lr_schedule_with_warmup,
                             get_cosine_with_min_lr_schedule_with_warmup_lr_rate, get_greedy_schedule,
                             get_inverse_sqrt_schedule, get_linear_schedule_with_warmup,
                             get_polynomial_decay_schedule_with_warmup, get_reduce_on_plateau_schedule, get_scheduler,
                             get_wsd_schedule)
from .trainer_utils import SchedulerType  # noqa: F401
