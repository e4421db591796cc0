"""Callbacks observe the loop and may ask it to stop, save, evaluate or log through `control`; they never change
the maths. Hook names and signatures are the reference's, so existing callbacks port with an import change."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger("tuneforge")


@dataclass
class TrainerState:
    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    num_train_epochs: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int = 8
    log_history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    # Exact resume: the loss not yet logged and the running total behind train_loss.
    loss_since_log: float = 0.0
    steps_since_log: int = 0
    total_loss: float = 0.0

    def save_to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load_from_json(cls, path: str | Path) -> "TrainerState":
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainerControl:
    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class TrainerCallback:
    """Override the hooks you need; each receives (args, state, control, **kwargs) and may return a control."""

    def on_init_end(self, args, state, control, **kwargs): pass
    def on_train_begin(self, args, state, control, **kwargs): pass
    def on_train_end(self, args, state, control, **kwargs): pass
    def on_epoch_begin(self, args, state, control, **kwargs): pass
    def on_epoch_end(self, args, state, control, **kwargs): pass
    def on_step_begin(self, args, state, control, **kwargs): pass
    def on_substep_end(self, args, state, control, **kwargs): pass
    def on_pre_optimizer_step(self, args, state, control, **kwargs): pass
    def on_optimizer_step(self, args, state, control, **kwargs): pass
    def on_step_end(self, args, state, control, **kwargs): pass
    def on_evaluate(self, args, state, control, **kwargs): pass
    def on_predict(self, args, state, control, metrics, **kwargs): pass
    def on_save(self, args, state, control, **kwargs): pass
    def on_log(self, args, state, control, logs=None, **kwargs): pass
    def on_prediction_step(self, args, state, control, **kwargs): pass
    def on_push_begin(self, args, state, control, **kwargs): pass


class CallbackHandler:
    def __init__(self, callbacks, **objects):
        self.callbacks = []
        for cb in callbacks:
            self.add_callback(cb)
        self.objects = objects  # model, processing_class, optimizer, lr_scheduler, ... passed as kwargs

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def remove_callback(self, callback) -> None:
        self.callbacks = [cb for cb in self.callbacks
                          if not (cb is callback or (isinstance(callback, type) and isinstance(cb, callback)))]

    def pop_callback(self, callback):
        """Remove and return the callback (an instance, or the first one of a class); None if absent."""
        for cb in self.callbacks:
            if cb is callback or (isinstance(callback, type) and isinstance(cb, callback)):
                self.callbacks.remove(cb)
                return cb
        return None

    def call(self, event: str, args, state, control, **kwargs) -> TrainerControl:
        for cb in self.callbacks:
            result = getattr(cb, event)(args, state, control, **self.objects, **kwargs)
            if result is not None:
                control = result
        return control


class ProgressCallback(TrainerCallback):
    """A tqdm bar with the live loss and speed while training; one for evaluation."""

    def __init__(self):
        self.bar = None
        self.eval_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from ..utils.logging import is_progress_bar_enabled
        if state.is_world_process_zero and is_progress_bar_enabled():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        from ..utils.logging import is_progress_bar_enabled
        if state.is_world_process_zero and eval_dataloader is not None and is_progress_bar_enabled():
            if self.eval_bar is None:
                from tqdm.auto import tqdm
                self.eval_bar = tqdm(total=len(eval_dataloader), desc="eval", leave=self.bar is None,
                                     dynamic_ncols=True, unit="batch")
            self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    on_predict = on_evaluate

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlLogCallback(TrainerCallback):
    """Every log entry, one JSON object per line, in output_dir/log.jsonl (appended across resumes and runs: each
    entry carries args.run_name when one is set, which tells the runs apart)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            path = Path(args.output_dir) / "log.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = {**logs, "step": state.global_step, **({"run_name": args.run_name} if args.run_name else {})}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=float) + "\n")


class TensorBoardCallback(TrainerCallback):
    def __init__(self):
        try:  # as the reference: without tensorboard, Trainer() fails
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("TensorBoardCallback requires tensorboard to be installed. Either update your PyTorch "
                               "version or install tensorboardX.") from None
        self._writer_class, self.writer = SummaryWriter, None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.writer = self._writer_class(args.logging_dir or str(Path(args.output_dir) / "runs"))
        self.writer.add_text("args", args.to_json_string())  # names the run (run_name) as the reference does

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is not None and logs:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tag = key.replace("eval_", "eval/", 1) if key.startswith("eval_") else f"train/{key}"
                    self.writer.add_scalar(tag, value, state.global_step)
            self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStoppingCallback(TrainerCallback):
    """Stops training when metric_for_best_model has not improved by more than the threshold for `patience`
    evaluations in a row."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0):
        self.patience = early_stopping_patience
        self.threshold = early_stopping_threshold
        self.bad_evaluations = 0
        self.best = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.eval_strategy == "no":
            raise InputError("EarlyStoppingCallback needs evaluations: set eval_strategy to 'steps' or 'epoch'")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model or "loss"
        key = name if name.startswith("eval_") else f"eval_{name}"
        if not metrics or key not in metrics:
            logger.warning(f"early stopping: no {key} in the evaluation metrics ({', '.join(metrics or [])})")
            return
        value = metrics[key]
        greater = args.greater_is_better if args.greater_is_better is not None else not key.endswith("loss")
        improved = self.best is None or (value - self.best > self.threshold if greater
                                         else self.best - value > self.threshold)
        if improved:
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                control.should_training_stop = True
