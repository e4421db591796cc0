"""TrainingArguments: the reference's names and defaults for what tuneforge implements, checked up front."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..errors import InputError

STRATEGIES = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with metric_for_best_model after evaluations
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop", "adafactor")
HUB_STRATEGIES = ("end", "every_save")
REPORTERS = ("none", "tensorboard", "all")
# The reference's other integrations: a missing package fails as the reference fails; an installed one is refused.
INTEGRATIONS = {"azure_ml": "azureml.core.run", "comet_ml": "comet_ml", "mlflow": "mlflow", "neptune": "neptune",
                "trackio": "trackio", "wandb": "wandb", "codecarbon": "codecarbon", "clearml": "clearml",
                "dagshub": "dagshub", "flyte": "flytekit", "dvclive": "dvclive", "swanlab": "swanlab",
                "kubeflow": "kubeflow"}


def integration_installed(name: str) -> bool:
    """Whether report_to=name's package is there (kubeflow's: its server's environment variable, as the reference)."""
    import importlib.util
    if name == "kubeflow":
        return os.environ.get("KUBEFLOW_TRAINER_SERVER_URL") is not None
    modules = ("tensorboard", "tensorboardX") if name == "tensorboard" else (INTEGRATIONS[name].split(".")[0],)
    for module in modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def available_integrations() -> list[str]:
    """report_to="all": the integrations whose package is installed, TensorBoard's included (as the reference)."""
    return [name for name in [*INTEGRATIONS, "tensorboard"] if name != "kubeflow" and integration_installed(name)]


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
SAMPLING = ("random", "sequential", "group_by_length")
SECRET_FIELDS = ("hub_token",)

# The reference's fields tuneforge does not implement: accepted at their default, refused by name otherwise.
REFUSED = {
    "optim_args": "only the named optimizers' hyperparameters (adam_beta1, ...) are taken",
    "optim_target_modules": "GaLore/APOLLO optimizers are not available",
    "fp16_full_eval": "there is no fp16 evaluation; use bf16=True",
    "bf16_full_eval": "evaluation runs under bf16 autocast when bf16=True; a bf16-cast model is not available",
    "label_smoothing_factor": "label smoothing is not available; override Trainer.compute_loss or pass "
                              "compute_loss_func=",
    "use_liger_kernel": "Liger kernels are not available", "liger_kernel_config": "Liger kernels are not available",
    "use_cache": "training never keeps a KV cache",
    "neftune_noise_alpha": "NEFTune is not available",
    "auto_find_batch_size": "set per_device_train_batch_size yourself",
    "logging_nan_inf_filter": "training stops at a non-finite loss, naming the step",
    "project": "trackio is not supported", "trackio_space_id": "trackio is not supported",
    "trackio_bucket_id": "trackio is not supported", "trackio_static_space_id": "trackio is not supported",
    "eval_do_concat_batches": "predictions are always one array per output, in the input order",
    "eval_use_gather_object": "predictions are gathered as tensors",
    "include_for_metrics": "compute_metrics gets (predictions, label_ids)",
    "batch_eval_metrics": "compute_metrics runs once, on the whole evaluation",
    "save_on_each_node": "checkpoints are written by the main process",
    "hub_revision": "pushes go to the repo's main branch",
    "ignore_data_skip": "a resumed run always continues the exact batch order",
    "restore_callback_states_from_checkpoint": "callback states are not saved in checkpoints",
    "accelerator_config": "tuneforge does not use accelerate",
    "parallelism_config": "tensor/context parallelism is not available",
    "dataloader_in_order": "batches are always loaded in order",
    "ddp_find_unused_parameters": "DDP wraps the model with torch's defaults",
    "ddp_bucket_cap_mb": "DDP wraps the model with torch's defaults",
    "ddp_broadcast_buffers": "DDP wraps the model with torch's defaults",
    "ddp_static_graph": "DDP wraps the model with torch's defaults",
    "ddp_backend": "the backend is nccl on GPUs and gloo on CPUs",
    "fsdp_config": "fsdp=True shards each transformer block with torch's defaults",
    "deepspeed": "DeepSpeed is not supported (use fsdp=True)",
    "debug": "debug options are not available",
    "skip_memory_metrics": "memory metrics are not collected",
}


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
    # tuneforge's: on SIGTERM/SIGINT, finish the step, save a checkpoint and exit (training/preemption.py). It covers
    # the reference's enable_jit_checkpoint (saving on SIGTERM), which is accepted and needs it on.
    save_on_preemption: bool = True
    # The reference's remaining fields, in its order. Implemented ones are read where they act; REFUSED ones raise
    # unless left at their default.
    lr_scheduler_kwargs: dict | str | None = None
    optim_args: str | None = None
    optim_target_modules: str | list[str] | None = None
    average_tokens_across_devices: bool = True
    label_smoothing_factor: float = 0.0
    fp16: bool = False
    bf16_full_eval: bool = False
    fp16_full_eval: bool = False
    tf32: bool | None = None
    activation_checkpointing: bool | None = None
    activation_checkpointing_kwargs: dict | str | None = None
    gradient_checkpointing_kwargs: dict | str | None = None
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    use_liger_kernel: bool = False
    liger_kernel_config: dict | None = None
    use_cache: bool = False
    neftune_noise_alpha: float | None = None
    torch_empty_cache_steps: int | None = None
    auto_find_batch_size: bool = False
    log_on_each_node: bool = True
    logging_nan_inf_filter: bool = True
    include_num_input_tokens_seen: str | bool = "no"
    log_level: str = "passive"
    log_level_replica: str = "warning"
    project: str = "huggingface"
    trackio_space_id: str | None = None
    trackio_bucket_id: str | None = None
    trackio_static_space_id: str | None = None
    eval_delay: float = 0
    eval_do_concat_batches: bool = True
    eval_use_gather_object: bool = False
    eval_accumulation_steps: int | None = None  # outputs go to host arrays after every batch, whatever the value
    include_for_metrics: list[str] = field(default_factory=list)
    batch_eval_metrics: bool = False
    save_on_each_node: bool = False
    enable_jit_checkpoint: bool = False
    hub_always_push: bool = False  # pushes are synchronous: every save is pushed, whatever the value
    hub_revision: str | None = None
    ignore_data_skip: bool = False
    restore_callback_states_from_checkpoint: bool = False
    full_determinism: bool = False
    accelerator_config: dict | str | None = None
    parallelism_config: object | None = None
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: int | None = None
    dataloader_multiprocessing_context: str | None = None
    dataloader_in_order: bool = True
    train_sampling_strategy: str = "random"
    ddp_find_unused_parameters: bool | None = None
    ddp_bucket_cap_mb: int | None = None
    ddp_broadcast_buffers: bool | None = None
    ddp_static_graph: bool | None = None
    ddp_backend: str | None = None
    fsdp_config: dict | str | None = None
    deepspeed: dict | str | None = None
    debug: str | list[str] = ""
    skip_memory_metrics: bool = True
    # Read by scripts, not by the Trainer (as in the reference).
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    resume_from_checkpoint: str | None = None
    local_rank: int = -1
    # Transformers 4.x's example scripts read this one (5.x dropped the field); the Trainer never did.
    overwrite_output_dir: bool = False

    def __post_init__(self):
        self.output_dir = os.fspath(self.output_dir)
        self._refuse_unimplemented()
        for name, allowed in (("eval_strategy", STRATEGIES), ("save_strategy", STRATEGIES + ("best",)),
                              ("logging_strategy", STRATEGIES), ("lr_scheduler_type", SCHEDULERS),
                              ("optim", OPTIMIZERS), ("hub_strategy", HUB_STRATEGIES)):
            value = getattr(self, name)
            value = getattr(value, "value", value)  # enums from ported code
            if value not in allowed:
                raise InputError(f"{name}={value!r} is not supported; use one of {', '.join(allowed)}")
            setattr(self, name, value)
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        if self.report_to == ["none"]:  # as the reference
            self.report_to = []
        elif self.report_to == ["all"]:  # the reference's: every installed integration; tuneforge's: TensorBoard
            found = available_integrations()
            others = [name for name in found if name != "tensorboard"]
            if others:
                logging.getLogger("tuneforge").warning(
                    f"report_to='all': tuneforge reports to TensorBoard and output_dir/log.jsonl only, not to the "
                    f"installed {', '.join(others)}")
            self.report_to = [name for name in found if name == "tensorboard"]
        for reporter in self.report_to:
            if reporter not in REPORTERS and reporter not in INTEGRATIONS:
                raise InputError(f"report_to={reporter!r} is not supported; use one of {', '.join(REPORTERS)}")
        if self.fp16:
            import torch
            raise InputError("fp16=True needs a CUDA GPU, and tuneforge trains in bf16 there: use bf16=True"
                             if torch.cuda.is_available() else
                             "fp16=True needs a CUDA GPU and this machine has none; train in float32, or bf16=True")
        if self.tf32:
            import torch
            if not torch.cuda.is_available():
                raise InputError("tf32=True needs an Ampere or newer CUDA GPU and this machine has none")
        for name in ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):  # from the command line, as in the reference
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as e:
                    raise InputError(f"{name}={value!r} is not a JSON object: {e}") from None
        if self.activation_checkpointing is not None:  # the reference's newer name for gradient_checkpointing
            self.gradient_checkpointing = bool(self.activation_checkpointing)
        if self.activation_checkpointing_kwargs is not None:
            self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # as in the reference
        if self.include_num_input_tokens_seen in (True, False):
            self.include_num_input_tokens_seen = "all" if self.include_num_input_tokens_seen else "no"
        if self.include_num_input_tokens_seen not in ("no", "all", "non_padding"):
            raise InputError(f"include_num_input_tokens_seen={self.include_num_input_tokens_seen!r} is not "
                             "supported; use one of no, all, non_padding")
        for name in ("log_level", "log_level_replica"):
            if getattr(self, name) not in (*LOG_LEVELS, "passive"):
                raise InputError(f"{name}={getattr(self, name)!r} is not supported; use one of "
                                 f"{', '.join((*LOG_LEVELS, 'passive'))}")
        self.train_sampling_strategy = getattr(self.train_sampling_strategy, "value", self.train_sampling_strategy)
        if self.train_sampling_strategy not in SAMPLING:
            raise InputError(f"train_sampling_strategy={self.train_sampling_strategy!r} is not supported; use one "
                             f"of {', '.join(SAMPLING)}")
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        self.group_by_length = self.train_sampling_strategy == "group_by_length"
        if self.dataloader_num_workers == 0 and (self.dataloader_persistent_workers
                                                 or self.dataloader_prefetch_factor is not None):
            raise InputError("dataloader_persistent_workers and dataloader_prefetch_factor need "
                             "dataloader_num_workers > 0")
        if self.eval_strategy != "no":
            self.do_eval = True  # as in the reference
        if self.local_rank == -1 and "LOCAL_RANK" in os.environ:
            self.local_rank = int(os.environ["LOCAL_RANK"])
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise InputError(f"num_train_epochs={self.num_train_epochs} trains nothing; set it above 0 or set "
                             "max_steps")
        if self.learning_rate < 0 or not math.isfinite(self.learning_rate):
            raise InputError(f"learning_rate must be a finite non-negative number, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise InputError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise InputError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise InputError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise InputError(f"save_total_limit must be at least 1 or None, got {self.save_total_limit}")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        for name in ("eval_steps", "save_steps", "logging_steps"):
            strategy = getattr(self, name.replace("_steps", "_strategy"))
            value = getattr(self, name)
            if strategy == "steps" and not value > 0:
                raise InputError(f"{name} must be above 0 when {name.replace('_steps', '_strategy')}='steps'")
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise InputError("save_strategy='best' needs evaluations: set eval_strategy to 'steps' or 'epoch'")
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise InputError("load_best_model_at_end=True needs evaluations: set eval_strategy to 'steps' or "
                                 "'epoch' (and save_strategy to the same)")
            if self.save_strategy not in (self.eval_strategy, "best"):
                raise InputError(f"load_best_model_at_end=True needs save_strategy equal to eval_strategy "
                                 f"({self.eval_strategy!r}), got save_strategy={self.save_strategy!r}")
            if self.eval_strategy == "steps" and self.save_strategy == "steps" and self.save_steps % self.eval_steps:
                raise InputError(f"load_best_model_at_end=True needs save_steps ({self.save_steps}) to be a "
                                 f"multiple of eval_steps ({self.eval_steps}), so every save has an evaluation")
        if self.lr_scheduler_type in METRIC_SCHEDULERS and self.eval_strategy == "no":
            raise InputError(f"lr_scheduler_type {self.lr_scheduler_type} requires an eval strategy: set "
                             "eval_strategy to 'steps' or 'epoch'")
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.save_strategy == "best"
                                                   or self.lr_scheduler_type in METRIC_SCHEDULERS):
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.push_to_hub and self.hub_model_id is None:
            self.hub_model_id = os.path.basename(os.path.normpath(self.output_dir))

    def _refuse_unimplemented(self) -> None:
        if self.enable_jit_checkpoint and not self.save_on_preemption:
            raise InputError("enable_jit_checkpoint=True saves a checkpoint on SIGTERM, which "
                             "save_on_preemption=False turns off; leave save_on_preemption at True")
        defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                    for f in fields(self) if f.name in REFUSED}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default and not (name == "debug" and not value):
                raise InputError(f"{name}={value!r} is not supported by tuneforge ({REFUSED[name]}); leave it at "
                                 f"its default, {default!r}")

    # ---------------------------------------------------------------- the reference's derived properties

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def process_index(self) -> int:
        return int(os.environ.get("RANK", "0"))

    @property
    def local_process_index(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def device(self):
        import torch
        if torch.cuda.is_available() and not self.use_cpu:
            return torch.device("cuda", self.local_process_index if self.world_size > 1 else 0)
        return torch.device("cpu")

    @property
    def n_gpu(self) -> int:
        """GPUs this process uses: one under torchrun or with a GPU, none on CPU (tuneforge never uses
        DataParallel)."""
        return 1 if self.device.type == "cuda" else 0

    @property
    def parallel_mode(self):
        from ..trainer_utils import ParallelMode
        # The reference's NOT_DISTRIBUTED is several GPUs in one process (DataParallel), which tuneforge never uses.
        return ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_PARALLEL

    @property
    def place_model_on_device(self) -> bool:
        return True

    @property
    def ddp_timeout_delta(self):
        from datetime import timedelta
        return timedelta(seconds=self.ddp_timeout)

    @property
    def default_optim(self) -> str:
        return "adamw_torch_fused"

    @property
    def should_log(self) -> bool:
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        return self.process_index == 0

    def get_process_log_level(self) -> int:
        """The log level for this process: log_level on the main process, log_level_replica on the others;
        "passive" leaves the current level (warning unless set)."""
        import logging
        name = self.log_level if self.should_log else self.log_level_replica
        if name == "passive":
            return logging.getLogger("tuneforge").getEffectiveLevel()
        return LOG_LEVELS[name]

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work"):
        """Run the block on the main process first (e.g. dataset.map writing a cache), then on the others."""
        import torch.distributed as tdist
        active = self.world_size > 1 and tdist.is_available() and tdist.is_initialized()
        main = (self.local_process_index if local else self.process_index) == 0
        if active and not main:
            tdist.barrier()
        try:
            yield
        finally:
            if active and main:
                tdist.barrier()

    def get_warmup_steps(self, num_training_steps: int) -> int:
        return self.warmup_for(num_training_steps)

    def to_sanitized_dict(self) -> dict:
        """to_dict() with values TensorBoard can record (None and containers as strings)."""
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self.to_dict().items()}

    # The reference's grouped setters: each sets its fields and checks them again.

    def _set(self, **values) -> "TrainingArguments":
        for name, value in values.items():
            setattr(self, name, value)
        self.__post_init__()
        return self

    def set_training(self, learning_rate=5e-5, batch_size=8, weight_decay=0, num_epochs=3, max_steps=-1,
                     gradient_accumulation_steps=1, seed=42, activation_checkpointing=False,
                     gradient_checkpointing=None):
        return self._set(learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                         weight_decay=weight_decay, num_train_epochs=num_epochs, max_steps=max_steps,
                         gradient_accumulation_steps=gradient_accumulation_steps, seed=seed,
                         gradient_checkpointing=bool(activation_checkpointing or gradient_checkpointing))

    def set_evaluate(self, strategy="no", steps=500, batch_size=8, accumulation_steps=None, delay=None,
                     loss_only=False):
        return self._set(eval_strategy=strategy, eval_steps=steps, per_device_eval_batch_size=batch_size,
                         eval_accumulation_steps=accumulation_steps, eval_delay=delay or 0,
                         prediction_loss_only=loss_only)

    def set_testing(self, batch_size=8, loss_only=False):
        return self._set(per_device_eval_batch_size=batch_size, prediction_loss_only=loss_only)

    def set_save(self, strategy="steps", steps=500, total_limit=None, on_each_node=False):
        return self._set(save_strategy=strategy, save_steps=steps, save_total_limit=total_limit,
                         save_on_each_node=on_each_node)

    def set_logging(self, strategy="steps", steps=500, report_to="none", level="passive", first_step=False,
                    nan_inf_filter=True, on_each_node=False, replica_level="passive"):
        # nan_inf_filter defaults to True here, not False as in the reference: the only value tuneforge takes (a
        # non-finite loss stops training, naming the step), so set_logging() with no argument works.
        return self._set(logging_strategy=strategy, logging_steps=steps, report_to=report_to, log_level=level,
                         logging_first_step=first_step, logging_nan_inf_filter=nan_inf_filter,
                         log_on_each_node=on_each_node, log_level_replica=replica_level)

    def set_push_to_hub(self, model_id, strategy="every_save", token=None, private_repo=None, always_push=False,
                        revision=None):
        return self._set(push_to_hub=True, hub_model_id=model_id, hub_strategy=strategy, hub_token=token,
                         hub_private_repo=private_repo, hub_always_push=always_push, hub_revision=revision)

    def set_optimizer(self, name="adamw_torch", learning_rate=5e-5, weight_decay=0, beta1=0.9, beta2=0.999,
                      epsilon=1e-8, args=None):
        return self._set(optim=name, learning_rate=learning_rate, weight_decay=weight_decay, adam_beta1=beta1,
                         adam_beta2=beta2, adam_epsilon=epsilon, optim_args=args)

    def set_lr_scheduler(self, name="linear", num_epochs=3.0, max_steps=-1, warmup_steps=0):
        return self._set(lr_scheduler_type=name, num_train_epochs=num_epochs, max_steps=max_steps,
                         warmup_steps=warmup_steps)

    def set_dataloader(self, train_batch_size=8, eval_batch_size=8, drop_last=False, num_workers=0,
                       pin_memory=True, persistent_workers=False, prefetch_factor=None,
                       multiprocessing_context=None, in_order=True, auto_find_batch_size=False,
                       ignore_data_skip=False, sampler_seed=None):
        return self._set(per_device_train_batch_size=train_batch_size, per_device_eval_batch_size=eval_batch_size,
                         dataloader_drop_last=drop_last, dataloader_num_workers=num_workers,
                         dataloader_pin_memory=pin_memory, dataloader_persistent_workers=persistent_workers,
                         dataloader_prefetch_factor=prefetch_factor,
                         dataloader_multiprocessing_context=multiprocessing_context, dataloader_in_order=in_order,
                         auto_find_batch_size=auto_find_batch_size, ignore_data_skip=ignore_data_skip,
                         data_seed=sampler_seed)

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
