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

from ..errors import InputError
from ..data import (LABEL_KEYS, DataCollatorWithPadding, RowView, column_names, column_values, default_data_collator,
                    length_grouped_batches, sequence_lengths, shuffled_batches, sorted_batches, store_rows)
from . import checkpoint, distributed
from .arguments import TrainingArguments
from .callbacks import (CallbackHandler, JsonlLogCallback, ProgressCallback, TensorBoardCallback, TrainerControl,
                        TrainerState)
from .optim import EmbeddingRows, clip_gradients, create_optimizer
from .schedules import create_scheduler, metric_driven
from .preemption import PreemptionGuard
from .threads import ThreadBudget, fit_threads

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


class MetricNotFoundError(InputError, KeyError):
    """metric_for_best_model names a metric the evaluation does not return: the user's argument, so an InputError,
    and a KeyError as the reference raises."""


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


def prefault_for_writing(tensors) -> None:
    """Map the pages of CPU tensors writable now, one madvise(MADV_POPULATE_WRITE) per tensor, rather than one page
    fault at a time in the first optimizer step.

    Loaded weights are the checkpoint file's private mapping (from_pretrained assigns them): each 4 KB page is first
    mapped read-only from the file, then copied when the optimizer first writes it, one fault and one TLB flush per
    page; populating the copies in one call per tensor costs a fraction of that (bench/NOTES.md). Weights that are
    already in process memory are left as they are. Linux 5.14+; elsewhere, or on any error, the faults come as
    before."""
    import ctypes
    import mmap
    import sys
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None)
    MADV_POPULATE_WRITE = 23  # linux/mman.h; Python's mmap module does not have it
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        span = (1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))) * t.element_size()
        start = t.data_ptr() & ~(mmap.PAGESIZE - 1)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(t.data_ptr() + span - start), MADV_POPULATE_WRITE)


class Trainer:
    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, model_init=None,
                 compute_loss_func=None, compute_metrics=None, callbacks=None, optimizers=(None, None),
                 optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None, tokenizer=None):
        self.args = args if args is not None else TrainingArguments()
        if self.args.full_determinism:
            from ..trainer_utils import enable_full_determinism
            enable_full_determinism(self.args.seed)
        else:
            set_seed(self.args.seed)
        if self.args.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.args.tf32
        if self.args.log_level != "passive" or self.args.log_level_replica != "warning":
            logger.setLevel(self.args.get_process_log_level())
        if model is None:
            if model_init is None:
                raise InputError("Trainer needs a model (or model_init)")
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
        self.compute_loss_func = compute_loss_func
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        if optimizer_cls_and_kwargs is not None and self.optimizer is not None:
            raise RuntimeError("Passing both `optimizers` and `optimizer_cls_and_kwargs` arguments is incompatible.")
        # As in the reference: a compute_loss that already normalises over the accumulation window (by
        # num_items_in_batch) sets this True; None: a per-batch mean, unless compute_loss_func= is given.
        self.loss_is_scaled_for_ga: bool | None = None
        self._micro_share = 1.0  # the loop sets each micro-batch's share of its window (see training_step)
        self._session_start = (time.time(), 0)  # a training session's start and the tokens seen before it
        self._learning_rate = 0.0  # the rate the last optimizer step used (logged as learning_rate)
        # As the reference's: whether compute_loss passes num_items_in_batch to the model (then its loss is
        # normalised over the window); a subclass or script may set it.
        self.model_accepts_loss_kwargs = _takes_num_items(self.model)
        self.current_gradient_accumulation_steps = self.args.gradient_accumulation_steps  # batches of this window
        self._embedding_rows: EmbeddingRows | None = None  # set with the optimizer the Trainer creates
        self.state = TrainerState(is_world_process_zero=self.dist.is_main,
                                  is_local_process_zero=self.dist.local_rank == 0)
        self.control = TrainerControl()
        defaults = [JsonlLogCallback]
        if not self.args.disable_tqdm:
            defaults.append(ProgressCallback)
        if "tensorboard" in self.args.report_to:
            defaults.append(TensorBoardCallback)
        _check_integrations(self.args.report_to)
        self.callback_handler = CallbackHandler(defaults + list(callbacks or []), model=self.model,
                                                processing_class=self.processing_class, optimizer=self.optimizer,
                                                lr_scheduler=self.lr_scheduler, train_dataloader=None,
                                                eval_dataloader=None)
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

    def pop_callback(self, callback):
        return self.callback_handler.pop_callback(callback)

    def is_world_process_zero(self) -> bool:
        return self.dist.is_main

    def is_local_process_zero(self) -> bool:
        return self.dist.local_rank == 0

    # ------------------------------------------------------------------------------------------ data in

    def _model_inputs(self) -> set[str] | None:
        """Argument names the model's forward takes; None when it takes **kwargs (then every column is kept)."""
        model = getattr(self.model, "get_base_model", lambda: self.model)()  # a LoRA model: the model it wraps
        params = inspect.signature(model.forward).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return set(params)

    def _label_names(self) -> list[str]:
        """The batch keys that are labels (label_ids of predict/evaluate): args.label_names, else by the reference's
        rule, the model's arguments that name labels ("labels", or start_positions/end_positions for QA)."""
        if self.args.label_names is not None:
            return list(self.args.label_names)
        accepted = self._model_inputs() or {"labels"}
        names = [n for n in ("start_positions", "end_positions") if n in accepted]
        return names if len(names) == 2 else ["labels"]

    def _rows(self, dataset, name: str) -> RowView:
        if dataset is None:
            raise InputError(f"Trainer has no {name}: pass {name}= to Trainer()")
        if len(dataset) == 0:
            raise InputError(f"{name} is empty: it has no rows to train or evaluate on")
        columns = column_names(dataset)
        accepted = self._model_inputs()
        if not self.args.remove_unused_columns or accepted is None:
            keep = columns
        else:
            # Columns the collator reads itself (the packed rows' seq_lengths of SFT's) stay too, as TRL's
            # signature columns: dropped, packed sequences would attend to each other.
            read = set(getattr(self.data_collator, "columns_read", ())) | set(self._label_names())
            keep = [c for c in columns if c in accepted or c in LABEL_KEYS or c in read]
            inputs = [c for c in keep if c not in LABEL_KEYS]
            if not inputs:
                raise InputError(f"{name} has no column the model takes (the model takes "
                                 f"{', '.join(sorted(accepted - {'labels'}))}; {name} has {', '.join(columns)}); "
                                 "tokenize it first, e.g. dataset.map(tokenize, batched=True)")
        return RowView(dataset, keep)

    def _check_labels(self, dataset, name: str) -> None:
        """Labels the model's head cannot take fail here, naming the row, not as an index error mid-training."""
        accepted = self._model_inputs()
        columns = column_names(dataset)
        label_column = next((c for c in LABEL_KEYS if c in columns), None)
        if label_column is None and self.args.label_names is not None and set(self.args.label_names) & set(columns):
            return  # the user's own label columns, for their own loss (compute_loss): nothing to check here
        if label_column is None:
            if accepted is not None and "labels" in accepted and not getattr(self.data_collator, "makes_labels", False):
                raise InputError(f"{name} has no label column ('label' or 'labels'); its columns are "
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
                raise InputError(f"{name} column '{label_column}' row {row}: label {value!r} is not a class id; "
                                 f"the model's head takes ids 0..{num_labels - 1} (map names to ids first, "
                                 "e.g. with model.config.label2id)")
            if not 0 <= int(value) < num_labels:
                raise InputError(f"{name} column '{label_column}' row {row}: label {value!r} is outside "
                                 f"[0, {num_labels}) for a model with num_labels={num_labels}")

    def _loader(self, rows: RowView, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        # A private generator: creating a loader must not draw from the global RNG, or resuming would shift
        # every later dropout mask.
        args = self.args
        workers = {"persistent_workers": args.dataloader_persistent_workers,
                   "prefetch_factor": args.dataloader_prefetch_factor,
                   "multiprocessing_context": args.dataloader_multiprocessing_context} if args.dataloader_num_workers else {}
        return torch.utils.data.DataLoader(rows, batch_sampler=batches, collate_fn=self.data_collator,
                                           num_workers=args.dataloader_num_workers,
                                           pin_memory=args.dataloader_pin_memory and self.dist.device.type == "cuda",
                                           generator=torch.Generator().manual_seed(args.seed), **workers)

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
        if args.train_sampling_strategy == "sequential":
            return [list(range(i, min(i + size, n))) for i in range(0, n, size)
                    if not (args.dataloader_drop_last and i + size > n)]
        return shuffled_batches(n, size, seed, epoch, args.dataloader_drop_last)

    # The reference's dataloader methods. Overridden, the loop iterates what they return (the train loader each
    # epoch, calling its sampler's set_epoch if it has one, each micro-batch weighted by its examples; evaluation
    # outputs in the loader's order); left alone, tuneforge's batch orders apply (below).

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """This process's micro-batches of the current epoch (state.epoch), in the global order _epoch_batches
        gives; a process with no example in a short last batch gets one row (weight 0) to join the all-reduce."""
        rows = self._rows(self.train_dataset, "train_dataset")
        batches = self._epoch_batches(int(self.state.epoch or 0), len(rows))
        return self._loader(rows, [self.dist.shard(b) or b[:1] for b in batches])

    def get_eval_dataloader(self, eval_dataset=None) -> torch.utils.data.DataLoader:
        if isinstance(eval_dataset, str):  # the reference's name for one of several evaluation sets
            return self._eval_loader(self.eval_dataset[eval_dataset], "eval_dataset")
        return self._eval_loader(eval_dataset if eval_dataset is not None else self.eval_dataset, "eval_dataset")

    def get_test_dataloader(self, test_dataset) -> torch.utils.data.DataLoader:
        return self._eval_loader(test_dataset, "test_dataset")

    def _eval_loader(self, dataset, name: str) -> torch.utils.data.DataLoader:
        """Batches sorted by length (little padding per batch), this process's share; its batch_sampler (Batches)
        says which rows each holds, so outputs are written straight into arrays in the input order."""
        rows = self._rows(dataset, name)
        lengths = self._lengths(dataset)
        bs = self.args.per_device_eval_batch_size
        batches = (sorted_batches(lengths, bs) if lengths is not None
                   else [list(range(i, min(i + bs, len(rows)))) for i in range(0, len(rows), bs)])
        mine = batches[self.dist.rank::self.dist.world_size]
        # Sharded forwards are collective: under FSDP every rank runs as many batches, repeats discarded.
        rounds = math.ceil(len(batches) / self.dist.world_size) if self.dist.fsdp else len(mine)
        return self._loader(rows, Batches(mine + [batches[0]] * (rounds - len(mine)), real=len(mine),
                                          total=len(batches), rows=len(rows)))

    # ---------------------------------------------------------------------------------------- the loop

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of one batch, as the reference computes it: the model's own, or compute_loss_func(outputs,
        labels, num_items_in_batch=) when given. Training and evaluation both go through here."""
        labels = None
        if self.compute_loss_func is not None and "labels" in inputs:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
        takes_num_items = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        if takes_num_items:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        # A loss normalised over the items of all processes is scaled back up: DDP averages the gradients.
        # (Evaluation counts each process's own batch, and averages nothing.)
        across = self.dist.world_size if num_items_in_batch is not None and model.training and \
            self.args.average_tokens_across_devices else 1
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch) * across
            return (loss, outputs) if return_outputs else loss
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, dict):
            if outputs.get("loss") is None:
                raise InputError(f"the model returned no loss (keys: {', '.join(outputs)}); pass labels or return "
                                 "a loss from forward")
            loss = outputs["loss"]
        else:
            loss = outputs[0]
        if takes_num_items:
            loss = loss * across
        return (loss, outputs) if return_outputs else loss

    def _token_shares(self, micro_batches: list[dict], shares: list[float], examples: int):
        """(weights, num_items_in_batch) of an accumulation window. For a loss that is a mean over labelled tokens (a
        language model's), each micro-batch's weight is its share of the labelled tokens of the whole window on all
        processes (on this one with average_tokens_across_devices=False), so that accumulation and DDP give the
        gradient of one big batch, token for token. The model says what counts (count_loss_items); others keep
        `shares` (of the window's `examples`, which is then num_items_in_batch)."""
        count = getattr(self.model, "count_loss_items", None)
        if count is None or any("labels" not in b for b in micro_batches):
            return shares, torch.tensor(examples)
        tokens = [float(count(b["labels"], b.get("attention_mask"))) if share else 0.0
                  for b, share in zip(micro_batches, shares)]
        if not self.args.average_tokens_across_devices:
            return [t / sum(tokens) if sum(tokens) else 0.0 for t in tokens], torch.tensor(int(sum(tokens)))
        total = float(self.dist.mean(torch.tensor(sum(tokens), dtype=torch.float64, device=self.dist.device)))
        total *= self.dist.world_size  # (on the device: NCCL reduces only CUDA tensors)
        return [t * self.dist.world_size / total if total else 0.0 for t in tokens], torch.tensor(round(total))

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its (detached) contribution to the step's loss.

        A per-batch mean loss is weighted by this micro-batch's share of its accumulation window (its examples, or
        its labelled tokens for a language model), set by the loop in self._micro_share, so that k batches of n give
        the gradient of one batch of k*n exactly (the reference divides by the number of batches). A loss already
        normalised by num_items_in_batch (compute_loss_func=, or loss_is_scaled_for_ga=True) is taken as it is."""
        if not model.training:
            model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        steps = self.args.torch_empty_cache_steps
        if steps and self.state.global_step % steps == 0 and torch.cuda.is_available():
            torch.cuda.empty_cache()
        scaled = (self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None
                  else self.compute_loss_func is not None or self.model_accepts_loss_kwargs)
        loss = loss if scaled else loss * self._micro_share
        loss.backward()
        return loss.detach().float()

    def _count_inputs(self, inputs: dict) -> None:
        """state.num_input_tokens_seen (include_num_input_tokens_seen) and state.total_flos, as the reference counts
        them: the main input's tokens (padding too, or not with "non_padding"), 6 x tokens x parameters."""
        ids = inputs.get("input_ids")
        if self.args.include_num_input_tokens_seen != "no" and isinstance(ids, torch.Tensor):
            mask = inputs.get("attention_mask")
            seen = int(mask.sum()) if self.args.include_num_input_tokens_seen == "non_padding" and \
                isinstance(mask, torch.Tensor) else ids.numel()
            self.state.num_input_tokens_seen += round(float(self.dist.mean(torch.tensor(float(seen))))
                                                      * self.dist.world_size)
        self.state.total_flos += float(self.floating_point_ops(inputs))

    def floating_point_ops(self, inputs: dict) -> int:
        """The reference's estimate of one forward and backward: 6 x input tokens x non-embedding parameters."""
        if hasattr(self.model, "floating_point_ops"):
            return self.model.floating_point_ops(inputs)
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            return 0
        if getattr(self, "_flop_params", None) is None:
            embeddings = {id(p) for m in self.model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
            self._flop_params = sum(p.numel() for p in self.model.parameters() if id(p) not in embeddings)
        return 6 * ids.numel() * self._flop_params

    def _prepare_inputs(self, inputs: dict) -> dict:
        return self._to_device(inputs)

    def compute_loss_context_manager(self):
        return self._autocast()

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        return self._autocast()

    # -------------------------------------------------------------------------- optimizer and schedule

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW (args.optim) with no decay on biases and norms, unless optimizers= or optimizer_cls_and_kwargs=
        gave one. The default one updates the word embedding's touched rows only (EmbeddingRows) on one CPU
        process: the same result, a fraction of the step."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        self._embedding_rows = None  # any earlier one belongs to an earlier optimizer
        if self.optimizer_cls_and_kwargs is not None:
            cls, kwargs = self.optimizer_cls_and_kwargs
            decay = self.get_decay_parameter_names(model)
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.optimizer = cls([{"params": [p for n, p in params if n in decay], "weight_decay":
                                   self.args.weight_decay},
                                  {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}], **kwargs)
            return self.optimizer
        self.optimizer = create_optimizer(model, self.args)
        # Sparse word-embedding gradients: not with DDP or the compiler; on GPUs the dense step is cheap.
        if self.dist.world_size == 1 and self.dist.device.type == "cpu" and not self.args.torch_compile:
            self._embedding_rows = EmbeddingRows.attach(self.optimizer, model)
        return self.optimizer

    def get_decay_parameter_names(self, model) -> list[str]:
        from .optim import decay_parameter_names
        return sorted(decay_parameter_names(model))

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(optimizer if optimizer is not None else self.optimizer, self.args,
                                                 num_training_steps)
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    def _optimizer_step(self) -> None:
        """Clip, step, schedule, zero: the end of every accumulation window, with the reference's callbacks."""
        args, state = self.args, self.state
        if args.max_grad_norm:
            self._grad_norm = clip_gradients(list(self.model.parameters()), args.max_grad_norm, self.optimizer,
                                             self.dist.fsdp)
        self.control = self.callback_handler.call("on_pre_optimizer_step", args, state, self.control)
        self.optimizer.step()
        self.control = self.callback_handler.call("on_optimizer_step", args, state, self.control)
        self._learning_rate = float(self.lr_scheduler.get_last_lr()[0])  # the rate this step used: the one logged
        if not metric_driven(self.lr_scheduler):  # those step after each evaluation, with its metric
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _windows(self, rows: RowView, epoch: int, steps_per_epoch: int, max_steps: int):
        """This epoch's accumulation windows still to run: (step index, micro-batches, their shares of the window's
        examples, the window's examples on all processes). From tuneforge's global batch order, or from an
        overridden get_train_dataloader (then windows of gradient_accumulation_steps batches, in its order)."""
        accum, state = self.args.gradient_accumulation_steps, self.state
        first = max(0, state.global_step - epoch * steps_per_epoch)  # windows done before a resume
        last = max_steps - epoch * steps_per_epoch
        if type(self).get_train_dataloader is Trainer.get_train_dataloader:
            batches = self._epoch_batches(epoch, len(rows))
            windows = [batches[i:i + accum] for i in range(0, len(batches), accum)][first:last]
            loader = self._loader(rows, [self.dist.shard(b) or b[:1] for w in windows for b in w])
            self.callback_handler.objects["train_dataloader"] = loader
            micro = iter(loader)
            for j, window in enumerate(windows, start=first):
                total = sum(len(b) for b in window)
                shares = [len(self.dist.shard(b)) * self.dist.world_size / total for b in window]
                yield j, [next(micro) for _ in window], shares, total
            return
        loader = self._custom_train_loader
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        micro, window = iter(loader), []
        for j in range(steps_per_epoch):
            window = [b for _, b in zip(range(accum), micro)]
            if not window:
                return
            if first <= j < last:
                sizes = [_batch_size(b) for b in window]
                total = int(self.dist.mean(torch.tensor(float(sum(sizes)))) * self.dist.world_size)
                yield j, window, [s * self.dist.world_size / total for s in sizes], total

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None,
              ignore_keys_for_eval: list[str] | None = None) -> TrainOutput:
        if trial is not None:
            raise InputError("train(trial=...) is not supported: tuneforge has no hyperparameter search")
        self._ignore_keys_for_eval = ignore_keys_for_eval
        with reuse_freed_memory(), ThreadBudget(self), PreemptionGuard(self) as self._preemption:
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
            raise InputError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset; pass one to Trainer() "
                             "or set eval_strategy='no'")
        n = len(rows)
        custom = type(self).get_train_dataloader is not Trainer.get_train_dataloader
        self._custom_train_loader = self.get_train_dataloader() if custom else None
        batches_per_epoch = len(self._custom_train_loader) if custom else len(self._epoch_batches(0, n))
        accum = args.gradient_accumulation_steps
        if accum > batches_per_epoch:
            raise InputError(f"gradient_accumulation_steps={accum} is larger than the {batches_per_epoch} batches "
                             f"of an epoch ({n} examples, batch size {args.per_device_train_batch_size}"
                             f"{f' x {self.dist.world_size} processes' if self.dist.world_size > 1 else ''}); "
                             "lower it or the batch size")
        steps_per_epoch = math.ceil(batches_per_epoch / accum)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(max_steps / steps_per_epoch)

        self._wrap_model()
        self.create_optimizer()  # then the schedule, with optimizer=None: the reference's loop calls these two
        self.create_scheduler(num_training_steps=max_steps)
        sparse = self._embedding_rows.weight if self._embedding_rows is not None else None  # writes a few rows only
        prefault_for_writing(p for group in self.optimizer.param_groups for p in group["params"] if p is not sparse)
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
        self._session_start = (time.time(), state.num_input_tokens_seen)  # log()'s start_time, tokens before it

        self.control = self.callback_handler.call("on_train_begin", args, state, self.control)
        if args.eval_on_start and resume is None:
            self._evaluate_and_track(step_scheduler=False)  # as the reference: no schedule step before training
        self.model_wrapped.train()
        if self._embedding_rows is not None:
            self._embedding_rows.begin()
        for epoch in range(state.global_step // steps_per_epoch, num_epochs):
            self.control = self.callback_handler.call("on_epoch_begin", args, state, self.control)
            for j, window, shares, total in self._windows(rows, epoch, steps_per_epoch, max_steps):
                self.current_gradient_accumulation_steps = len(window)
                # One optimizer step: the reference's training_step per micro-batch, then _optimizer_step.
                examples_seen += total
                shares, num_items = self._token_shares(window, shares, total)
                loss = torch.zeros((), device=self.dist.device)  # (NCCL reduces only CUDA tensors)
                for i, (inputs, share) in enumerate(zip(window, shares)):
                    if i == 0:
                        self.control = self.callback_handler.call("on_step_begin", args, state, self.control)
                    self._count_inputs(inputs)
                    self._micro_share, last = share, i == len(window) - 1
                    with self.dist.no_sync(self.model_wrapped, skip=not last):
                        loss += self.training_step(self.model_wrapped, inputs, num_items)
                    if not last:
                        self.control = self.callback_handler.call("on_substep_end", args, state, self.control)
                self._optimizer_step()
                loss = self.dist.mean(loss).item()
                state.global_step += 1
                state.epoch = epoch + (j + 1) / steps_per_epoch
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
                if signum := self._preemption.requested(self.dist):  # SIGTERM/SIGINT: save, then stop (all ranks)
                    self._preemption.stop(self, signum)
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
            checkpoint.load_model_weights(Path(state.best_model_checkpoint), self.model, self.dist)
            logger.info(f"loaded the best model from {state.best_model_checkpoint} "
                        f"({args.metric_for_best_model}={state.best_metric})")
        steps_done = state.global_step - start_step
        train_loss = state.total_loss / max(state.global_step, 1)
        metrics = {"train_runtime": round(runtime, 4),
                   "train_samples_per_second": round(examples_seen / runtime, 3),
                   "train_steps_per_second": round(steps_done / runtime, 3),
                   "total_flos": state.total_flos, "train_loss": train_loss, "epoch": state.epoch}
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
        if args.eval_strategy == "steps" and step % state.eval_steps == 0 and step >= args.eval_delay:
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
        control.should_evaluate |= args.eval_strategy == "epoch" and (self.state.epoch or 0) >= args.eval_delay
        control.should_save |= args.save_strategy == "epoch"

    def _log_evaluate_save(self) -> None:
        args, state, control = self.args, self.state, self.control
        if control.should_log and state.steps_since_log:
            logs = {"loss": round(state.loss_since_log / state.steps_since_log, 4)}
            if self._grad_norm is not None:
                norm = self._grad_norm
                logs["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            logs["learning_rate"] = self._learning_rate
            state.loss_since_log, state.steps_since_log = 0.0, 0
            self.log(logs, self._session_start[0])
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

    def _evaluate_and_track(self, step_scheduler: bool = True) -> bool:
        """Evaluate; record whether metric_for_best_model improved; step a metric-driven schedule
        (reduce_lr_on_plateau, greedy) with that metric, as the reference does after each evaluation."""
        metrics = self.evaluate(ignore_keys=getattr(self, "_ignore_keys_for_eval", None))
        name = self.args.metric_for_best_model
        step_scheduler = step_scheduler and metric_driven(self.lr_scheduler)
        if name is None:
            if step_scheduler:
                raise InputError(f"a {type(self.lr_scheduler).__name__} schedule steps with metric_for_best_model; "
                                 "set it")
            return False
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise MetricNotFoundError(f"metric_for_best_model={name!r}: the evaluation returned no {key!r} "
                           f"(it returned {', '.join(metrics)})")
        if step_scheduler:
            self.lr_scheduler.step(metrics[key])
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
                raise InputError(f"gradient_checkpointing=True but {type(self.model).__name__} has no "
                                 "gradient_checkpointing_enable()")
            self.model.gradient_checkpointing_enable(self.args.gradient_checkpointing_kwargs)
        self.model.to(self.dist.device)
        wrapped = self.dist.wrap(self.model, self.args)
        if self.args.torch_compile:
            # dynamic: the packed token count changes every batch
            wrapped = torch.compile(wrapped, dynamic=True, backend=self.args.torch_compile_backend or "inductor",
                                    mode=self.args.torch_compile_mode)
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
        if isinstance(dataset, dict):  # several evaluation sets: eval_<name>_<metric>, as in the reference
            metrics = {}
            for key, part in dataset.items():
                metrics.update(self.evaluate(part if eval_dataset is not None else key, ignore_keys,
                                             f"{metric_key_prefix}_{key}"))
            return metrics
        loader = self.get_eval_dataloader(eval_dataset)
        # As in the reference: without compute_metrics nothing reads the logits, so they are not kept.
        output = self._prediction_loop(loader, metric_key_prefix, self.compute_metrics is None, ignore_keys)
        self.log(output.metrics)
        self.control = self.callback_handler.call("on_evaluate", self.args, self.state, self.control,
                                                  metrics=output.metrics)
        return output.metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        output = self._prediction_loop(self.get_test_dataloader(test_dataset), metric_key_prefix, False, ignore_keys)
        self.control = self.callback_handler.call("on_predict", self.args, self.state, self.control,
                                                  metrics=output.metrics)
        return output

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys: list[str] | None = None):
        """(loss, logits, labels) of one evaluation batch, as the reference's. The loss comes from compute_loss (so
        an overridden loss is the one evaluation reports), given this batch's labelled items as num_items_in_batch;
        logits are the model's outputs other than the loss and `ignore_keys` (default: the config's
        keys_to_ignore_at_inference), one tensor or a tuple."""
        labels = _batch_labels(inputs, self._label_names())
        with torch.inference_mode(), self.compute_loss_context_manager():
            if labels is not None:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=self._batch_num_items(inputs))
                loss = loss.detach().mean() if isinstance(loss, torch.Tensor) else loss
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, dict):
            if ignore_keys is None:
                config = getattr(self.model, "config", None)
                ignore_keys = [] if config is None else getattr(config, "keys_to_ignore_at_inference", ["cache"])
            kept = tuple(v for k, v in outputs.items() if k not in ignore_keys and k != "loss" and v is not None)
            logits = kept[0] if len(kept) == 1 else (kept or None)
        else:
            logits = _loss_and_logits(outputs)[1]
        return loss, logits, labels

    def _batch_num_items(self, inputs) -> torch.Tensor | None:
        """The reference's num_items_in_batch for one evaluation batch: its labels other than -100 (a language
        model's shifted targets), where the model's forward or compute_loss_func takes the count."""
        if "labels" not in inputs or not (self.compute_loss_func is not None or self.model_accepts_loss_kwargs):
            return None
        count = getattr(self.model, "count_loss_items", None)
        labels = inputs["labels"]
        return torch.as_tensor(count(labels, inputs.get("attention_mask")) if count is not None
                               else labels.ne(-100).sum())

    @reuse_freed_memory()
    @fit_threads
    def _prediction_loop(self, loader, prefix: str, loss_only: bool = False, ignore_keys=None) -> PredictionOutput:
        """Outputs written straight into arrays in the input order (so memory holds the predictions and nothing else
        grows across steps); the rows of each batch are the loader's Batches, or in the loader's order."""
        count = getattr(self.model, "count_loss_items", None)
        self._wrap_model()
        # Inference needs no gradient sync: the bare model (compiled if asked) avoids DDP's collectives, so ranks
        # with fewer batches do not wait on each other.
        model = self.model_wrapped if self.args.torch_compile and not self.dist.active else self.model
        batches = loader.batch_sampler if isinstance(loader.batch_sampler, Batches) else None
        n = batches.rows if batches is not None else len(loader.dataset)
        real = batches.real if batches is not None else len(loader)
        # A loader from an overridden get_eval_dataloader/get_test_dataloader holds the whole set: under DDP each
        # process evaluates every world_size-th batch (accelerate shards the reference's loader the same way) and
        # gather_predictions merges the parts; under FSDP forwards are collective, so every process runs them all.
        share = batches is None and self.dist.active and not self.dist.fsdp
        if share and isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
            raise InputError("the overridden evaluation dataloader has a DistributedSampler: return a loader over the "
                             "whole set (tuneforge gives each process its share of the batches)")
        predictions = labels = None
        loss_sum, loss_count, offset, seen = 0.0, 0, 0, []
        loss_only = self.args.prediction_loss_only or loss_only
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        self.callback_handler.objects["eval_dataloader"] = loader
        with torch.inference_mode():
            for k, batch in enumerate(loader):
                if share and k % self.dist.world_size != self.dist.rank:
                    offset += _batch_size(batch)  # another process's batch: only its rows' place in the order
                    continue
                batch = self._prepare_inputs(batch)
                loss, logits, batch_labels = self.prediction_step(model, batch, loss_only, ignore_keys=ignore_keys)
                if k >= real:
                    continue
                size = len(batches[k]) if batches is not None else _batch_size(batch)
                indices = batches[k] if batches is not None else list(range(offset, offset + size))
                offset += size
                seen.extend(indices)
                if loss is not None:
                    # A mean over labelled tokens (a language model's) is weighted by its tokens, else by examples.
                    weight = (count(batch["labels"], batch.get("attention_mask")) if count is not None
                              and "labels" in batch else size)
                    loss_sum += float(loss) * weight
                    loss_count += weight
                if logits is not None:
                    if self.preprocess_logits_for_metrics is not None:
                        logits = self.preprocess_logits_for_metrics(logits, batch_labels)
                    predictions = store_rows(predictions, indices, _to_numpy(logits), n)
                if batch_labels is not None:
                    labels = store_rows(labels, indices, _to_numpy(batch_labels), n)
                self.control = self.callback_handler.call("on_prediction_step", self.args, self.state, self.control)
        model.train(was_training)
        predictions, labels, loss_sum, loss_count = self.dist.gather_predictions(
            predictions, labels, loss_sum, loss_count, seen, n)
        runtime = time.perf_counter() - start
        metrics: dict[str, Any] = {}
        if self.compute_metrics is not None and predictions is not None and labels is not None:
            metrics.update(self.compute_metrics(EvalPrediction(predictions, labels)))
        if loss_count:
            metrics["loss"] = loss_sum / loss_count
        metrics = {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): _plain(v) for k, v in metrics.items()}
        metrics[f"{prefix}_runtime"] = round(runtime, 4)
        metrics[f"{prefix}_samples_per_second"] = round(n / runtime, 3)
        metrics[f"{prefix}_steps_per_second"] = round((batches.total if batches is not None else real) / runtime, 3)
        if self.state.epoch:
            metrics["epoch"] = self.state.epoch
        return PredictionOutput(predictions, labels, metrics)

    # ------------------------------------------------------------------------------------------ outputs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            if start_time is not None:  # a time.time() (the reference's): this session's tokens over its time
                runtime = time.time() - start_time
                logs["train_runtime"] = round(runtime, 4)
                if runtime > 0:
                    tokens = self.state.num_input_tokens_seen - self._session_start[1]
                    logs["train_tokens_per_second"] = round(tokens / runtime, 3)
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.call("on_log", self.args, self.state, self.control, logs=logs)

    def save_model(self, output_dir: str | None = None) -> None:
        weights = self.dist.model_state_dict(self.model)  # collective under FSDP
        checkpoint.save_model_safely(Path(output_dir or self.args.output_dir), self.model, self.processing_class,
                                     self.args, weights, self.dist)  # all ranks: it ends like a barrier

    def log_metrics(self, split: str, metrics: dict) -> None:
        """Print the metrics as the reference does: a header, then one aligned `key = value` line each."""
        if not self.is_world_process_zero():
            return
        print(f"***** {split} metrics *****")
        shown = {k: (_seconds_as_timedelta(v) if k.endswith("_runtime") else
                     f"{int(v) >> 30}GF" if k == "total_flos" else round(v, 4) if isinstance(v, float) else v)
                 for k, v in metrics.items()}
        k_width, v_width = max(len(str(k)) for k in shown), max(len(str(v)) for v in shown.values())
        for key in sorted(shown):
            print(f"  {key: <{k_width}} = {shown[key]:>{v_width}}")

    def save_metrics(self, split: str, metrics: dict, combined: bool = True) -> None:
        """output_dir/{split}_results.json, and (combined) the metrics merged into all_results.json."""
        if not self.is_world_process_zero():
            return
        import json
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{split}_results.json").write_text(json.dumps(metrics, indent=4, sort_keys=True), encoding="utf-8")
        if combined:
            path = out / "all_results.json"
            merged = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            merged.update(metrics)
            path.write_text(json.dumps(merged, indent=4, sort_keys=True), encoding="utf-8")

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> None:
        """output_dir/README.md (hub.write_model_card): the reference's fields; tasks join the tags, dataset_tags
        (else dataset) name the datasets, dataset_args their configuration."""
        if not self.is_world_process_zero():
            return
        from ..hub import dataset_name, model_task, write_model_card
        config = getattr(self.model, "config", None)
        as_list = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
        datasets = as_list(dataset_tags) or as_list(dataset) or as_list(dataset_name(self.train_dataset))
        args = as_list(dataset_args)
        write_model_card(self.args.output_dir, repo_id=model_name or self.args.hub_model_id,
                         base_model=finetuned_from or getattr(config, "name_or_path", None), dataset=datasets,
                         dataset_args=args * len(datasets) if len(args) == 1 else args,
                         log_history=self.state.log_history, hyperparameters=_hyperparameters(self.args),
                         id2label=getattr(config, "id2label", None), language=language, license=license,
                         tags=tags, tasks=as_list(tasks) or as_list(model_task(self.model)),
                         adapter=hasattr(self.model, "adapter_state_from_folder"))

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

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, private: bool | None = None, **card_fields) -> str | None:
        """Save the model in output_dir with a model card (README.md), then upload it to args.hub_model_id (created
        if missing; a bare name goes to the token owner's namespace) in one commit.

        What is uploaded is the model folder only: the top-level config, weights, tokenizer, training_args.json
        (secrets masked) and README.md of output_dir, never checkpoint-* folders, logs or trainer_state.json
        (tuneforge.hub.model_files), to `revision` (a branch) when given. The upload always completes before this
        returns (`blocking=False` gives the same result, later). `card_fields` are create_model_card's keywords
        (the reference's: model_name, finetuned_from, dataset, dataset_tags, tags, ...). The model stays saved
        in output_dir whatever happens; a failed upload raises tuneforge.hub.HubError (an OSError) with one line
        naming the hub, the repo and that local copy, and never the token. Returns the commit URL (None on
        processes other than the main one)."""
        self.save_model()  # on every process: it ends with a barrier
        self.callback_handler.call("on_push_begin", self.args, self.state, self.control)
        if not self.dist.is_main:
            return None
        from ..hub import HubError, model_files, push_files
        args = self.args
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        self.save_state()
        card_fields.setdefault("model_name", repo_id)
        self.create_model_card(**card_fields)
        try:
            return push_files(model_files(args.output_dir), repo_id, token=token or args.hub_token,
                              private=args.hub_private_repo if private is None else private,
                              commit_message=commit_message, revision=revision, source=args.output_dir)
        except HubError as err:
            raise HubError(f"{err}; the model is saved in {args.output_dir!r}: call trainer.push_to_hub() to try "
                           "again", endpoint=err.endpoint, repo_id=err.repo_id, reason=err.reason,
                           original=err.original) from None


class Batches(list):
    """The evaluation batches of a loader tuneforge built (lists of row indices): `real` of them are this
    process's, the rest repeats that keep FSDP's collectives in step; `total` on all processes; `rows` rows."""

    def __init__(self, batches, *, real: int, total: int, rows: int):
        super().__init__(batches)
        self.real, self.total, self.rows = real, total, rows


def _batch_size(batch) -> int:
    """Examples in a collated batch: the first dimension of its first tensor."""
    values = batch.values() if isinstance(batch, dict) else batch
    return next((len(v) for v in values if isinstance(v, torch.Tensor) and v.dim() > 0), 0)


def _seconds_as_timedelta(seconds: float) -> str:
    """log_metrics' runtimes as the reference prints them: H:MM:SS and hundredths."""
    import datetime
    return f"{datetime.timedelta(seconds=int(seconds))}.{int(abs(seconds - int(seconds)) * 100):02d}"


def _takes_num_items(model) -> bool:
    """Whether the model's forward takes num_items_in_batch (then its loss is normalised over the window)."""
    forward = getattr(getattr(model, "module", model), "forward", None)
    try:
        return "num_items_in_batch" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _check_integrations(report_to: list[str]) -> None:
    """report_to names the reference's integrations: a missing package fails as the reference fails (its exception
    and message); an installed one is refused, as tuneforge reports to TensorBoard and log.jsonl only."""
    from .arguments import INTEGRATIONS, integration_installed
    for name in report_to:
        if name not in INTEGRATIONS:
            continue
        if not integration_installed(name):
            module = INTEGRATIONS[name].split(".")[0]
            error, message = MISSING_INTEGRATION.get(name, (RuntimeError, None))
            raise error(message or f"{name} requires {module} to be installed. Run `pip install {module}`.")
        raise InputError(f"report_to={name!r} is not supported by tuneforge; use 'tensorboard' (or 'none'): the "
                         "loop also writes output_dir/log.jsonl")


# What the reference raises for report_to=<name> without the integration's package.
MISSING_INTEGRATION = {
    "azure_ml": (RuntimeError, "AzureMLCallback requires azureml to be installed. Run `pip install azureml-sdk`."),
    "comet_ml": (RuntimeError, "CometCallback requires comet-ml>=3.43.2 to be installed. Run `pip install "
                               "comet-ml>=3.43.2`."),
    "mlflow": (RuntimeError, "MLflowCallback requires mlflow to be installed. Run `pip install mlflow`."),
    "dagshub": (RuntimeError, "MLflowCallback requires mlflow to be installed. Run `pip install mlflow`."),
    "neptune": (ValueError, "NeptuneCallback requires the Neptune client library to be installed. To install the "
                            "library, run `pip install neptune`."),
    "trackio": (RuntimeError, "TrackioCallback requires trackio to be installed. Run `pip install trackio`."),
    "wandb": (RuntimeError, "WandbCallback requires wandb to be installed. Run `pip install wandb`."),
    "codecarbon": (RuntimeError, "CodeCarbonCallback requires `codecarbon` to be installed. Run `pip install "
                                 "codecarbon`."),
    "clearml": (RuntimeError, "ClearMLCallback requires 'clearml' to be installed. Run `pip install clearml`."),
    "flyte": (ImportError, "FlyteCallback requires flytekit to be installed. Run `pip install flytekit`."),
    "dvclive": (RuntimeError, "DVCLiveCallback requires dvclive to be installed. Run `pip install dvclive`."),
    "swanlab": (RuntimeError, "SwanLabCallback requires swanlab to be installed. Run `pip install swanlab`."),
    "kubeflow": (RuntimeError, "KubeflowCallback requires KUBEFLOW_TRAINER_SERVER_URL environment variable to be "
                               "set. This is automatically set when running inside a Kubeflow TrainJob with "
                               "TrainJobRuntimeStatus enabled."),
}


def _batch_labels(batch: dict, names: list[str]):
    """The batch's labels: one tensor, a tuple of them (start and end positions), or None."""
    found = tuple(batch[n] for n in names if isinstance(batch.get(n), torch.Tensor))
    return None if not found else found[0] if len(found) == 1 else found


def _to_numpy(values):
    if isinstance(values, (tuple, list)):
        return tuple(_to_numpy(v) for v in values)
    return values.float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()


def _loss_and_logits(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, dict):
        logits = outputs.get("logits")
        if logits is None:
            # As the reference: every other output (start and end logits for QA), a tuple when more than one.
            found = tuple(v for k, v in outputs.items() if k != "loss" and isinstance(v, torch.Tensor))
            logits = None if not found else found[0] if len(found) == 1 else found
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
