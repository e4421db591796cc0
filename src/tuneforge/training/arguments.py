"""TrainingArguments: the reference's names and defaults for what tuneforge implements, checked up front."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

STRATEGIES = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")
HUB_STRATEGIES = ("end", "every_save")
REPORTERS = ("none", "tensorboard", "all")
SECRET_FIELDS = ("hub_token",)


@dataclass
class TrainingArguments:
    output_dir: str = "trainer_output"
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0  # an int counts steps; a float below 1 is a share of all steps, as in the reference
    warmup_ratio: float = 0.0
    seed: int = 42
    data_seed: int | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    group_by_length: bool = False
    length_column_name: str = "length"
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = False
    remove_unused_columns: bool = True
    label_names: list[str] | None = None
    prediction_loss_only: bool = False
    disable_tqdm: bool | None = None
    report_to: str | list[str] = "none"
    logging_dir: str | None = None
    run_name: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    hub_private_repo: bool | None = None
    hub_strategy: str = "every_save"
    bf16: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    use_cpu: bool = False
    ddp_timeout: int = 1800
    fsdp: bool = False

    def __post_init__(self):
        self.output_dir = os.fspath(self.output_dir)
        for name, allowed in (("eval_strategy", STRATEGIES), ("save_strategy", STRATEGIES + ("best",)),
                              ("logging_strategy", STRATEGIES), ("lr_scheduler_type", SCHEDULERS),
                              ("optim", OPTIMIZERS), ("hub_strategy", HUB_STRATEGIES)):
            value = getattr(self, name)
            value = getattr(value, "value", value)  # enums from ported code
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(allowed)}")
            setattr(self, name, value)
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        for reporter in self.report_to:
            if reporter not in REPORTERS:
                raise ValueError(f"report_to={reporter!r} is not supported; use one of {', '.join(REPORTERS)}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs={self.num_train_epochs} trains nothing; set it above 0 or set "
                             "max_steps")
        if self.learning_rate < 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be a finite non-negative number, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be at least 1 or None, got {self.save_total_limit}")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        for name in ("eval_steps", "save_steps", "logging_steps"):
            strategy = getattr(self, name.replace("_steps", "_strategy"))
            value = getattr(self, name)
            if strategy == "steps" and not value > 0:
                raise ValueError(f"{name} must be above 0 when {name.replace('_steps', '_strategy')}='steps'")
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ValueError("save_strategy='best' needs evaluations: set eval_strategy to 'steps' or 'epoch'")
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise ValueError("load_best_model_at_end=True needs evaluations: set eval_strategy to 'steps' or "
                                 "'epoch' (and save_strategy to the same)")
            if self.save_strategy not in (self.eval_strategy, "best"):
                raise ValueError(f"load_best_model_at_end=True needs save_strategy equal to eval_strategy "
                                 f"({self.eval_strategy!r}), got save_strategy={self.save_strategy!r}")
            if self.eval_strategy == "steps" and self.save_strategy == "steps" and self.save_steps % self.eval_steps:
                raise ValueError(f"load_best_model_at_end=True needs save_steps ({self.save_steps}) to be a "
                                 f"multiple of eval_steps ({self.eval_steps}), so every save has an evaluation")
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.save_strategy == "best"):
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.push_to_hub and self.hub_model_id is None:
            self.hub_model_id = os.path.basename(os.path.normpath(self.output_dir))

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    def warmup_for(self, num_training_steps: int) -> int:
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if self.warmup_steps > 0 else self.warmup_ratio
        return math.ceil(num_training_steps * ratio)

    def interval(self, name: str, max_steps: int) -> int:
        """eval/save/logging_steps as a step count (a float below 1 is a share of max_steps, as in the reference)."""
        value = getattr(self, name)
        return max(1, math.ceil(max_steps * value)) if value < 1 else int(value)

    def to_dict(self) -> dict:
        """The arguments with secrets masked: what is saved and logged."""
        values = asdict(self)
        for name in SECRET_FIELDS:
            if values.get(name):
                values[name] = "<redacted>"
        return values

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"TrainingArguments({shown})"
