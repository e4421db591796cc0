"""Trainer: the loop, evaluate, predict. The train step fits on one screen (`training_step`); logging, progress and
early stopping are callbacks; precision, compile and data parallelism are applied in `_wrap_model`, nowhere else."""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..data import (LABEL_KEYS, DataCollatorWithPadding, RowView, column_names, column_values, default_data_collator,
                    length_grouped_batches, sequence_lengths, shuffled_batches, sorted_batches, store_rows)
from . import checkpoint, distributed
from .arguments import TrainingArguments
from .callbacks import (CallbackHandler, JsonlLogCallback, ProgressCallback, TensorBoardCallback, TrainerControl,
                        TrainerState)
from .optim import EmbeddingRows, clip_gradients, create_optimizer, create_scheduler

logger = logging.getLogger("tuneforge")


class EvalPrediction(NamedTuple):
    predictions: np.ndarray
    label_ids: np.ndarray | None


class PredictionOutput(NamedTuple):
    predictions: np.ndarray
    label_ids: np.ndarray | None
    metrics: dict[str, float]


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_keeping_memory = False  # set inside reuse_freed_memory: evaluation during training must not end it


@contextlib.contextmanager
def reuse_freed_memory():
    """Keep memory freed during training or evaluation in the process, for the next step, instead of handing it back
    to the OS.

    Each step frees and re-allocates the same large buffers (activations and gradients of MBs each);
    glibc serves those with fresh mmap()s whose page faults cost about a tenth of a step on CPU. glibc only; its
    defaults come back, and the kept memory is returned, when the outermost use ends."""
    import ctypes
    import platform
    global _keeping_memory
    if platform.libc_ver()[0] != "glibc" or _keeping_memory:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    _keeping_memory = True
    try:
        yield
    finally:
        _keeping_memory = False
        libc.mallopt(M_MMAP_MAX, 65536)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)


class Trainer:
    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, model_init=None,
                 compute_metrics=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, tokenizer=None):
        self.args = args if args is not None else TrainingArguments()
        set_seed(self.args.seed)
        if model is None:
            if model_init is None:
                raise ValueError("Trainer needs a model (or model_init)")
            model = model_init()
        self.model = model
        self.dist = distributed.setup(self.args)
        self.processing_class = processing_class if processing_class is not None else tokenizer
        if data_collator is None:
            data_collator = (DataCollatorWithPadding(self.processing_class) if self.processing_class is not None
                             else default_data_collator)
        self.data_collator = data_collator
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self._embedding_rows: EmbeddingRows | None = None  # set with the optimizer the Trainer creates
        self.state = TrainerState(is_world_process_zero=self.dist.is_main,
                                  is_local_process_zero=self.dist.local_rank == 0)
        self.control = TrainerControl()
        defaults = [JsonlLogCallback]
        if not self.args.disable_tqdm:
            defaults.append(ProgressCallback)
        if {"tensorboard", "all"} & set(self.args.report_to):
            defaults.append(TensorBoardCallback)
        self.callback_handler = CallbackHandler(defaults + list(callbacks or []), model=self.model,
                                                processing_class=self.processing_class)
        self.model_wrapped, self._wrapped = self.model, False
        self._lengths_cache: dict[int, np.ndarray] = {}
        self.control = self.callback_handler.call("on_init_end", self.args, self.state, self.control)

    @property
    def tokenizer(self):
        return self.processing_class

    def add_callback(self, callback) -> None:
        self.callback_handler.add_callback(callback)

    def remove_callback(self, callback) -> None:
        self.callback_handler.remove_callback(callback)

    # ------------------------------------------------------------------------------------------ data in

    def _model_inputs(self) -> set[str] | None:
        """Argument names the model's forward takes; None when it takes **kwargs (then every column is kept)."""
        params = inspect.signature(self.model.forward).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return set(params)

    def _rows(self, dataset, name: str) -> RowView:
        if dataset is None:
            raise ValueError(f"Trainer has no {name}: pass {name}= to Trainer()")
        if len(dataset) == 0:
            raise ValueError(f"{name} is empty: it has no rows to train or evaluate on")
        columns = column_names(dataset)
        accepted = self._model_inputs()
        if not self.args.remove_unused_columns or accepted is None:
            keep = columns
        else:
            keep = [c for c in columns if c in accepted or c in LABEL_KEYS]
            inputs = [c for c in keep if c not in LABEL_KEYS]
            if not inputs:
                raise ValueError(f"{name} has no column the model takes (the model takes "
                                 f"{', '.join(sorted(accepted - {'labels'}))}; {name} has {', '.join(columns)}); "
                                 "tokenize it first, e.g. dataset.map(tokenize, batched=True)")
        return RowView(dataset, keep)

    def _check_labels(self, dataset, name: str) -> None:
        """Labels the model's head cannot take fail here, naming the row, not as an index error mid-training."""
        accepted = self._model_inputs()
        columns = column_names(dataset)
        label_column = next((c for c in LABEL_KEYS if c in columns), None)
        if label_column is None:
            if accepted is not None and "labels" in accepted and not getattr(self.data_collator, "makes_labels", False):
                raise ValueError(f"{name} has no label column ('label' or 'labels'); its columns are "
                                 f"{', '.join(columns)}")
            return
        config = getattr(self.model, "config", None)
        num_labels = getattr(config, "num_labels", None)
        problem_type = getattr(config, "problem_type", None)
        if num_labels is None or num_labels < 2 or problem_type in ("regression", "multi_label_classification"):
            return
        for row, value in enumerate(column_values(dataset, label_column)):
            if isinstance(value, (list, tuple, np.ndarray)) and problem_type is None:
                return  # multi-label targets: the loss infers the problem type from them
            if isinstance(value, str) or not float(value) == int(value):
                raise ValueError(f"{name} column '{label_column}' row {row}: label {value!r} is not a class id; "
                                 f"the model's head takes ids 0..{num_labels - 1} (map names to ids first, "
                                 "e.g. with model.config.label2id)")
            if not 0 <= int(value) < num_labels:
                raise ValueError(f"{name} column '{label_column}' row {row}: label {value!r} is outside "
                                 f"[0, {num_labels}) for a model with num_labels={num_labels}")

    def _loader(self, rows: RowView, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        # A private generator: creating a loader must not draw from the global RNG, or resuming would shift
        # every later dropout mask.
        return torch.utils.data.DataLoader(rows, batch_sampler=batches, collate_fn=self.data_collator,
                                           num_workers=self.args.dataloader_num_workers,
                                           generator=torch.Generator().manual_seed(self.args.seed))

    def _lengths(self, dataset) -> np.ndarray | None:
        key = id(dataset)
        if key not in self._lengths_cache:
            try:
                self._lengths_cache[key] = sequence_lengths(dataset, self.args.length_column_name)
            except (KeyError, TypeError):
                self._lengths_cache[key] = None
        return self._lengths_cache[key]

    def _epoch_batches(self, epoch: int, n: int) -> list[list[int]]:
        """The global batch order of one epoch: a pure function of (seed, epoch), identical on every rank."""
        args = self.args
        size = args.per_device_train_batch_size * self.dist.world_size
        seed = args.data_seed if args.data_seed is not None else args.seed
        if args.group_by_length:
            lengths = self._lengths(self.train_dataset)
            return length_grouped_batches(lengths, size, seed, epoch, args.dataloader_drop_last)
        return shuffled_batches(n, size, seed, epoch, args.dataloader_drop_last)

    # ---------------------------------------------------------------------------------------- the loop

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, dict):
            if outputs.get("loss") is None:
                raise ValueError(f"the model returned no loss (keys: {', '.join(outputs)}); pass labels or return "
                                 "a loss from forward")
            loss = outputs["loss"]
        else:
            loss = outputs[0]
        return (loss, outputs) if return_outputs else loss

    def _token_shares(self, micro_batches: list[dict], shares: list[float]) -> list[float]:
        """For a loss that is a mean over labelled tokens (a language model's), each micro-batch's weight is its share
        of the labelled tokens of the whole window on all processes, so that accumulation and DDP give the gradient
        of one big batch, token for token. The model says what counts (count_loss_items); others keep `shares`."""
        count = getattr(self.model, "count_loss_items", None)
        if count is None or any("labels" not in b for b in micro_batches):
            return shares
        tokens = [float(count(b["labels"])) if share else 0.0 for b, share in zip(micro_batches, shares)]
        total = float(self.dist.mean(torch.tensor(sum(tokens), dtype=torch.float64))) * self.dist.world_size
        return [t * self.dist.world_size / total if total else 0.0 for t in tokens]

    def training_step(self, model, micro_batches, shares) -> torch.Tensor:
        """One optimizer step over an accumulation window. Each micro-batch's mean loss is weighted by its share of
        the window's examples, so k batches of n give the gradient of one batch of k*n."""
        window_loss = torch.zeros(())
        for i, (batch, share) in enumerate(zip(micro_batches, shares)):
            last = i == len(micro_batches) - 1
            with self.dist.no_sync(model, skip=not last), self._autocast():
                loss = self.compute_loss(model, batch)
                (loss * share).backward()
            window_loss += loss.detach().float() * share
        if self.args.max_grad_norm:
            self._grad_norm = clip_gradients(list(self.model.parameters()), self.args.max_grad_norm, self.optimizer,
                                             self.dist.fsdp)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return window_loss

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        with reuse_freed_memory():
            try:
                return self._train(resume_from_checkpoint)
            finally:
                if self._embedding_rows is not None:
                    self._embedding_rows.end()

    def _train(self, resume_from_checkpoint: str | bool | None) -> TrainOutput:
        args, state = self.args, self.state
        rows = self._rows(self.train_dataset, "train_dataset")
        self._check_labels(self.train_dataset, "train_dataset")
        if self.eval_dataset is not None and args.eval_strategy != "no":
            self._rows(self.eval_dataset, "eval_dataset")
            self._check_labels(self.eval_dataset, "eval_dataset")
        elif args.eval_strategy != "no" or args.load_best_model_at_end:
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset; pass one to Trainer() "
                             "or set eval_strategy='no'")
        n = len(rows)
        batches_per_epoch = len(self._epoch_batches(0, n))
        accum = args.gradient_accumulation_steps
        if accum > batches_per_epoch:
            raise ValueError(f"gradient_accumulation_steps={accum} is larger than the {batches_per_epoch} batches "
                             f"of an epoch ({n} examples, batch size {args.per_device_train_batch_size}"
                             f"{f' x {self.dist.world_size} processes' if self.dist.world_size > 1 else ''}); "
                             "lower it or the batch size")
        steps_per_epoch = math.ceil(batches_per_epoch / accum)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(max_steps / steps_per_epoch)

        self._wrap_model()
        if self.optimizer is None:
            self.optimizer = create_optimizer(self.model, args)
            self._embedding_rows = None  # any earlier one belongs to an earlier optimizer
            # Sparse word-embedding gradients: not with DDP or the compiler; on GPUs the dense step is cheap.
            if self.dist.world_size == 1 and self.dist.device.type == "cpu" and not args.torch_compile:
                self._embedding_rows = EmbeddingRows.attach(self.optimizer, self.model)
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(self.optimizer, args, max_steps)
        self.callback_handler.objects.update(optimizer=self.optimizer, lr_scheduler=self.lr_scheduler)
        resume = checkpoint.resolve_resume(args.output_dir, resume_from_checkpoint)
        if resume is not None:
            self.state = state = checkpoint.load_checkpoint(resume, model=self.model, optimizer=self.optimizer,
                                                            scheduler=self.lr_scheduler, dist=self.dist)
            logger.info(f"resumed from {resume} at step {state.global_step}")
        state.max_steps, state.num_train_epochs = max_steps, num_epochs
        state.train_batch_size = args.per_device_train_batch_size
        state.logging_steps = args.interval("logging_steps", max_steps)
        state.eval_steps = args.interval("eval_steps", max_steps) if args.eval_steps else state.logging_steps
        state.save_steps = args.interval("save_steps", max_steps)
        state.is_world_process_zero = self.dist.is_main
        start_step, start_time, examples_seen, self._grad_norm = state.global_step, time.perf_counter(), 0, None

        self.control = self.callback_handler.call("on_train_begin", args, state, self.control)
        if args.eval_on_start and resume is None:
            self._evaluate_and_track()
        self.model_wrapped.train()
        if self._embedding_rows is not None:
            self._embedding_rows.begin()
        for epoch in range(state.global_step // steps_per_epoch, num_epochs):
            batches = self._epoch_batches(epoch, n)
            windows = [batches[i:i + accum] for i in range(0, len(batches), accum)]
            first = max(0, state.global_step - epoch * steps_per_epoch)  # windows done before a resume
            todo = windows[first:max_steps - epoch * steps_per_epoch]
            self.control = self.callback_handler.call("on_epoch_begin", args, state, self.control)
            # A rank with no examples in a short last batch still runs one (with weight 0) to join the all-reduce.
            micro = iter(self._loader(rows, [self.dist.shard(b) or b[:1] for w in todo for b in w]))
            for j, window in enumerate(todo, start=first):
                self.control = self.callback_handler.call("on_step_begin", args, state, self.control)
                total = sum(len(b) for b in window)
                examples_seen += total
                shares = [len(self.dist.shard(b)) * self.dist.world_size / total for b in window]
                micro_batches = [self._to_device(next(micro)) for _ in window]
                shares = self._token_shares(micro_batches, shares)
                loss = self.training_step(self.model_wrapped, micro_batches, shares)
                loss = self.dist.mean(loss).item()
                state.global_step += 1
                state.epoch = epoch + (j + 1) / len(windows)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the training loss is {loss} at step {state.global_step} (epoch "
                                             f"{state.epoch:.2f}); training stopped. Lower the learning rate or "
                                             "check the inputs for extreme values")
                state.loss_since_log += loss
                state.steps_since_log += 1
                state.total_loss += loss
                self.control = self.callback_handler.call("on_step_end", args, state, self.control)
                self._schedule_step_events(max_steps)
                self._log_evaluate_save()
                if self.control.should_training_stop or self.control.should_epoch_stop:
                    break
            self.control.should_epoch_stop = False
            self.control = self.callback_handler.call("on_epoch_end", args, state, self.control)
            self._schedule_epoch_events()
            self._log_evaluate_save()
            if self.control.should_training_stop or state.global_step >= max_steps:
                break

        runtime = time.perf_counter() - start_time
        if args.load_best_model_at_end and state.best_model_checkpoint:
            from ..checkpoint_io import load_state_dict
            self.dist.load_model_state_dict(self.model, load_state_dict(Path(state.best_model_checkpoint)))
            logger.info(f"loaded the best model from {state.best_model_checkpoint} "
                        f"({args.metric_for_best_model}={state.best_metric})")
        steps_done = state.global_step - start_step
        train_loss = state.total_loss / max(state.global_step, 1)
        metrics = {"train_runtime": round(runtime, 4),
                   "train_samples_per_second": round(examples_seen / runtime, 3),
                   "train_steps_per_second": round(steps_done / runtime, 3),
                   "train_loss": train_loss, "epoch": state.epoch}
        self.log(metrics)
        if self.dist.is_main:
            checkpoint.rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint)
        self.control = self.callback_handler.call("on_train_end", args, state, self.control)
        if args.push_to_hub:
            self.push_to_hub(commit_message="End of training")
        return TrainOutput(state.global_step, train_loss, metrics)

    def _schedule_step_events(self, max_steps: int) -> None:
        args, state, control = self.args, self.state, self.control
        step = state.global_step
        if args.logging_strategy == "steps" and (step % state.logging_steps == 0
                                                 or (step == 1 and args.logging_first_step)):
            control.should_log = True
        if args.eval_strategy == "steps" and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and step % state.save_steps == 0:
            control.should_save = True
        if step >= max_steps:
            control.should_training_stop = True
            if args.save_strategy == "steps":
                control.should_save = True

    def _schedule_epoch_events(self) -> None:
        args, control = self.args, self.control
        control.should_log |= args.logging_strategy == "epoch"
        control.should_evaluate |= args.eval_strategy == "epoch"
        control.should_save |= args.save_strategy == "epoch"

    def _log_evaluate_save(self) -> None:
        args, state, control = self.args, self.state, self.control
        if control.should_log and state.steps_since_log:
            logs = {"loss": round(state.loss_since_log / state.steps_since_log, 4)}
            if self._grad_norm is not None:
                norm = self._grad_norm
                logs["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            logs["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            state.loss_since_log, state.steps_since_log = 0.0, 0
            self.log(logs)
        control.should_log = False
        improved = False
        if control.should_evaluate:
            control.should_evaluate = False
            improved = self._evaluate_and_track()
        if args.save_strategy == "best":
            control.should_save = improved
        if control.should_save:
            control.should_save = False
            self._save_checkpoint(improved)

    def _evaluate_and_track(self) -> bool:
        """Evaluate; record whether metric_for_best_model improved."""
        metrics = self.evaluate()
        name = self.args.metric_for_best_model
        if name is None:
            return False
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={name!r}: the evaluation returned no {key!r} "
                           f"(it returned {', '.join(metrics)})")
        value, best = metrics[key], self.state.best_metric
        better = best is None or (value > best if self.args.greater_is_better else value < best)
        if better:
            self.state.best_metric, self.state.best_global_step = value, self.state.global_step
        return better

    def _save_checkpoint(self, improved: bool) -> None:
        state = self.state
        if improved or (state.best_global_step == state.global_step):
            state.best_model_checkpoint = str(Path(self.args.output_dir) / f"checkpoint-{state.global_step}")
        folder = checkpoint.save_checkpoint(self.args.output_dir, model=self.model,
                                            processing_class=self.processing_class, optimizer=self.optimizer,
                                            scheduler=self.lr_scheduler, state=state, args=self.args, dist=self.dist)
        if self.dist.is_main:
            checkpoint.rotate_checkpoints(self.args.output_dir, self.args.save_total_limit,
                                          state.best_model_checkpoint)
            if self.args.push_to_hub and self.args.hub_strategy == "every_save":
                self._push_folder(folder, f"Training in progress, epoch {int(state.epoch or 0)}"
                                  if self.args.save_strategy == "epoch" else
                                  f"Training in progress, step {state.global_step}")
        self.control = self.callback_handler.call("on_save", self.args, state, self.control)

    def _wrap_model(self) -> None:
        """Everything applied from outside the model code, in one place: checkpointing, compile, DDP/FSDP."""
        if self._wrapped:
            return
        self._wrapped = True
        if self.args.gradient_checkpointing:
            if not hasattr(self.model, "gradient_checkpointing_enable"):
                raise ValueError(f"gradient_checkpointing=True but {type(self.model).__name__} has no "
                                 "gradient_checkpointing_enable()")
            self.model.gradient_checkpointing_enable()
        self.model.to(self.dist.device)
        wrapped = self.dist.wrap(self.model, self.args)
        if self.args.torch_compile:
            wrapped = torch.compile(wrapped, dynamic=True)  # the packed token count changes every batch
        self.model_wrapped = wrapped

    def _to_device(self, batch: dict) -> dict:
        if self.dist.device.type == "cpu":
            return batch
        return {k: v.to(self.dist.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _autocast(self):
        if not self.args.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    # -------------------------------------------------------------------------------- evaluate / predict

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        # As in the reference: without compute_metrics nothing reads the logits, so they are not kept.
        output = self._prediction_loop(dataset, "eval_dataset", metric_key_prefix, self.compute_metrics is None)
        self.log(output.metrics)
        self.control = self.callback_handler.call("on_evaluate", self.args, self.state, self.control,
                                                  metrics=output.metrics)
        return output.metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        output = self._prediction_loop(test_dataset, "test_dataset", metric_key_prefix)
        self.control = self.callback_handler.call("on_predict", self.args, self.state, self.control,
                                                  metrics=output.metrics)
        return output

    @reuse_freed_memory()
    def _prediction_loop(self, dataset, name: str, prefix: str, loss_only: bool = False) -> PredictionOutput:
        """Batches sorted by length (little padding per batch); outputs written straight into arrays in the input
        order, so memory holds the predictions and nothing else grows across steps."""
        rows = self._rows(dataset, name)
        count = getattr(self.model, "count_loss_items", None)
        self._wrap_model()
        # Inference needs no gradient sync: the bare model (compiled if asked) avoids DDP's collectives, so ranks
        # with fewer batches do not wait on each other.
        model = self.model_wrapped if self.args.torch_compile and not self.dist.active else self.model
        lengths = self._lengths(dataset)
        bs = self.args.per_device_eval_batch_size
        batches = (sorted_batches(lengths, bs) if lengths is not None
                   else [list(range(i, min(i + bs, len(rows)))) for i in range(0, len(rows), bs)])
        mine = batches[self.dist.rank::self.dist.world_size]
        # Sharded forwards are collective: under FSDP every rank runs as many batches, repeats discarded.
        rounds = math.ceil(len(batches) / self.dist.world_size) if self.dist.fsdp else len(mine)
        repeats = [batches[0]] * (rounds - len(mine))
        predictions = labels = None
        loss_sum, loss_count = 0.0, 0
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        loader = self._loader(rows, mine + repeats)
        with torch.inference_mode(), self._autocast():
            for k, (indices, batch) in enumerate(zip(mine + repeats, loader)):
                batch = self._to_device(batch)
                batch_labels = batch.get("labels")
                outputs = model(**batch)
                if k >= len(mine):
                    continue
                loss, logits = _loss_and_logits(outputs)
                if loss is not None and batch_labels is not None:
                    # A mean over labelled tokens (a language model's) is weighted by its tokens, else by examples.
                    weight = count(batch_labels) if count is not None else len(indices)
                    loss_sum += float(loss) * weight
                    loss_count += weight
                if logits is not None and not (self.args.prediction_loss_only or loss_only):
                    if self.preprocess_logits_for_metrics is not None:
                        logits = self.preprocess_logits_for_metrics(logits, batch_labels)
                    predictions = store_rows(predictions, indices, logits.float().cpu().numpy(), len(rows))
                if batch_labels is not None and isinstance(batch_labels, torch.Tensor):
                    labels = store_rows(labels, indices, batch_labels.cpu().numpy(), len(rows))
                self.control = self.callback_handler.call("on_prediction_step", self.args, self.state,
                                                          self.control, eval_dataloader=loader)
        model.train(was_training)
        predictions, labels, loss_sum, loss_count = self.dist.gather_predictions(
            predictions, labels, loss_sum, loss_count, [i for b in mine for i in b], len(rows))
        runtime = time.perf_counter() - start
        metrics: dict[str, Any] = {}
        if self.compute_metrics is not None and predictions is not None and labels is not None:
            metrics.update(self.compute_metrics(EvalPrediction(predictions, labels)))
        if loss_count:
            metrics["loss"] = loss_sum / loss_count
        metrics = {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): _plain(v) for k, v in metrics.items()}
        metrics[f"{prefix}_runtime"] = round(runtime, 4)
        metrics[f"{prefix}_samples_per_second"] = round(len(rows) / runtime, 3)
        metrics[f"{prefix}_steps_per_second"] = round(len(batches) / runtime, 3)
        if self.state.epoch:
            metrics["epoch"] = self.state.epoch
        return PredictionOutput(predictions, labels, metrics)

    # ------------------------------------------------------------------------------------------ outputs

    def log(self, logs: dict[str, float]) -> None:
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.call("on_log", self.args, self.state, self.control, logs=logs)

    def save_model(self, output_dir: str | None = None) -> None:
        weights = self.dist.model_state_dict(self.model)  # collective under FSDP
        if self.dist.is_main:
            checkpoint.save_model_folder(Path(output_dir or self.args.output_dir), self.model,
                                         self.processing_class, self.args, weights)
        self.dist.barrier()

    def save_state(self) -> None:
        if self.dist.is_main:
            self.state.save_to_json(Path(self.args.output_dir) / "trainer_state.json")

    def _push_folder(self, folder: Path, message: str) -> None:
        """hub_strategy="every_save": push a checkpoint just saved, in one commit: its model files (config, weights,
        tokenizer, training_args.json) to the repo root and the whole checkpoint under last-checkpoint/, replacing
        the previous one (what the reference's "checkpoint" strategy keeps, so a run can resume from the hub).
        A failed push must not stop training: it is logged as one warning and the next save tries again; the
        push at the end of training raises if the hub is still unreachable."""
        from ..hub import HubError, push_checkpoint
        try:
            push_checkpoint(folder, self.args.hub_model_id or Path(self.args.output_dir).resolve().name,
                            token=self.args.hub_token, private=self.args.hub_private_repo, commit_message=message)
        except HubError as err:
            logger.warning(f"{err}; training goes on, the next save and the end of training push again")

    def push_to_hub(self, commit_message: str = "End of training", token: str | None = None,
                    **card_fields) -> str | None:
        """Save the model in output_dir with a model card (README.md), then upload it to args.hub_model_id (created
        if missing; a bare name goes to the token owner's namespace) in one commit.

        What is uploaded is the model folder only: the top-level config, weights, tokenizer, training_args.json
        (secrets masked) and README.md of output_dir, never checkpoint-* folders, logs or trainer_state.json
        (tuneforge.hub.model_files). `card_fields` go to the card: base_model (alias finetuned_from; default the
        model's name_or_path), dataset (default the train_dataset's name when it has one). The model stays saved
        in output_dir whatever happens; a failed upload raises tuneforge.hub.HubError (an OSError) with one line
        naming the hub, the repo and that local copy, and never the token. Returns the commit URL (None on
        processes other than the main one)."""
        self.save_model()  # on every process: it ends with a barrier
        if not self.dist.is_main:
            return None
        from ..hub import HubError, dataset_name, model_files, push_files, write_model_card
        args = self.args
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        self.save_state()
        config = getattr(self.model, "config", None)
        if "finetuned_from" in card_fields:
            card_fields.setdefault("base_model", card_fields.pop("finetuned_from"))
        card = {"repo_id": repo_id, "base_model": getattr(config, "name_or_path", None),
                "dataset": dataset_name(self.train_dataset), "log_history": self.state.log_history,
                "hyperparameters": _hyperparameters(args), "id2label": getattr(config, "id2label", None)}
        card.update(card_fields)
        write_model_card(args.output_dir, **card)
        try:
            return push_files(model_files(args.output_dir), repo_id, token=token or args.hub_token,
                              private=args.hub_private_repo, commit_message=commit_message, source=args.output_dir)
        except HubError as err:
            raise HubError(f"{err}; the model is saved in {args.output_dir!r}: call trainer.push_to_hub() to try "
                           "again", endpoint=err.endpoint, repo_id=err.repo_id, reason=err.reason,
                           original=err.original) from None


def _loss_and_logits(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, dict):
        logits = outputs.get("logits")
        if logits is None:
            logits = next((v for k, v in outputs.items() if k != "loss" and isinstance(v, torch.Tensor)), None)
        return outputs.get("loss"), logits
    outputs = tuple(outputs)
    return (outputs[0], outputs[1]) if len(outputs) > 1 else (outputs[0], None)


def _plain(value):
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value


def _hyperparameters(args: TrainingArguments) -> dict:
    names = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
             "gradient_accumulation_steps", "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps",
             "warmup_ratio", "weight_decay", "seed", "optim")
    return {k: getattr(args, k) for k in names}
