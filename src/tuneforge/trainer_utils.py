"""The reference's `transformers.trainer_utils` names that scripts import, where they live in tuneforge."""
from __future__ import annotations

import os
import re
from enum import Enum

from .training.trainer import EvalPrediction, PredictionOutput, TrainOutput, set_seed

PREFIX_CHECKPOINT_DIR = "checkpoint"
_re_checkpoint = re.compile(r"^" + PREFIX_CHECKPOINT_DIR + r"\-(\d+)$")


def get_last_checkpoint(folder) -> str | None:
    """The newest checkpoint-N folder in `folder` (by N), or None; what example scripts resume from."""
    checkpoints = [p for p in os.listdir(folder)
                   if _re_checkpoint.search(p) is not None and os.path.isdir(os.path.join(folder, p))]
    if not checkpoints:
        return None
    return os.path.join(folder, max(checkpoints, key=lambda p: int(_re_checkpoint.search(p).groups()[0])))


def is_main_process(local_rank: int) -> bool:
    """Whether this process is its node's first (local_rank -1 outside distributed runs, 0 for the first)."""
    return local_rank in [-1, 0]


def enable_full_determinism(seed: int, warn_only: bool = False) -> None:
    """set_seed plus deterministic torch kernels (what TrainingArguments(full_determinism=True) does)."""
    import torch
    set_seed(seed)
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class _Names(str, Enum):
    def __str__(self) -> str:
        return self.value


class IntervalStrategy(_Names):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SaveStrategy(_Names):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"
    BEST = "best"


class HubStrategy(_Names):
    END = "end"
    EVERY_SAVE = "every_save"


class SchedulerType(_Names):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"
    REDUCE_ON_PLATEAU = "reduce_lr_on_plateau"
    COSINE_WITH_MIN_LR = "cosine_with_min_lr"
    COSINE_WARMUP_WITH_MIN_LR = "cosine_warmup_with_min_lr"
    WARMUP_STABLE_DECAY = "warmup_stable_decay"
    GREEDY = "greedy"


class ParallelMode(_Names):
    NOT_PARALLEL = "not_parallel"
    NOT_DISTRIBUTED = "not_distributed"
    DISTRIBUTED = "distributed"


__all__ = ["PREFIX_CHECKPOINT_DIR", "EvalPrediction", "HubStrategy", "IntervalStrategy", "ParallelMode",
           "PredictionOutput", "SaveStrategy", "SchedulerType", "TrainOutput", "enable_full_determinism",
           "get_last_checkpoint", "is_main_process", "set_seed"]
