"""Data parallelism under torchrun: process group, rank helpers and model wrapping, all in one place. With no
torchrun environment every helper is a no-op and the Trainer runs as one process."""
from __future__ import annotations

import atexit
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as tdist

from ..errors import InputError
from ..data import store_rows


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False  # set by wrap(): parameters are sharded, so state dicts and forwards are collective

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's contiguous part of a global batch; the parts differ in size by at most one."""
        if not self.active:
            return batch
        bounds = np.linspace(0, len(batch), self.world_size + 1).round().astype(int)
        return batch[bounds[self.rank]:bounds[self.rank + 1]]

    def no_sync(self, model, skip: bool):
        """Skip the gradient all-reduce on the non-final micro-steps of an accumulation window."""
        if not (self.active and skip):
            return contextlib.nullcontext()
        if hasattr(model, "no_sync"):  # DDP
            return model.no_sync()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            return _fsdp_no_sync(model)
        return contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Each rank's loss is scaled by world_size/global count, so the global mean is the sum / world_size."""
        if not self.active:
            return value
        value = value.clone()
        tdist.all_reduce(value)
        return value / self.world_size

    def all_gather_object(self, obj) -> list:
        if not self.active:
            return [obj]
        parts = [None] * self.world_size
        tdist.all_gather_object(parts, obj)
        return parts

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def gather_predictions(self, predictions, labels, loss_sum: float, loss_count: int, indices: list[int], n: int):
        """Every example exactly once: each rank filled the rows of its own batches; rank parts are merged."""
        if not self.active:
            return predictions, labels, loss_sum, loss_count
        rows = np.asarray(indices, dtype=np.int64)
        take = lambda a: None if a is None else tuple(take(x) for x in a) if isinstance(a, tuple) else a[rows]  # noqa
        mine = (rows, take(predictions), take(labels), loss_sum, loss_count)
        parts = self.all_gather_object(mine)
        predictions = labels = None
        loss_sum, loss_count = 0.0, 0
        for rows, preds, labs, part_loss, part_count in parts:
            loss_sum, loss_count = loss_sum + part_loss, loss_count + part_count
            if preds is not None:
                predictions = store_rows(predictions, rows, preds, n)
            if labs is not None:
                labels = store_rows(labels, rows, labs, n)
        return predictions, labels, loss_sum, loss_count

    def wrap(self, model: torch.nn.Module, args) -> torch.nn.Module:
        if not self.active:
            return model
        if args.fsdp:
            from torch.distributed.fsdp import fully_shard
            for param in model.parameters():  # FSDP frees the unsharded storage by resizing it, which a
                if not param.untyped_storage().resizable():  # loaded tensor's memory-mapped file cannot
                    param.data = param.data.clone()
            for block in _blocks(model):
                fully_shard(block)
            self.fsdp = True
            return fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # Under FSDP every rank takes part in gathering full (unsharded) states; elsewhere these are plain calls.

    def model_state_dict(self, model: torch.nn.Module) -> dict:
        if not self.fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_model_state_dict(self, model: torch.nn.Module, state: dict, strict: bool = True) -> None:
        """strict=False: a part of the model (a LoRA adapter), whose keys the caller checked."""
        if hasattr(model, "with_tied_weights"):  # a saved folder holds a tied tensor once
            state = model.with_tied_weights(state)
        if not self.fsdp:
            model.load_state_dict(state, strict=strict)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))

    def optimizer_state_dict(self, model: torch.nn.Module, optimizer) -> dict:
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(self, model: torch.nn.Module, optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, FSDP's unit of sharding: the model's family says where they are."""
    if not hasattr(model, "blocks"):
        raise InputError(f"fsdp=True needs a tuneforge model that names its blocks; {type(model).__name__} has no "
                         "blocks() method")
    return list(model.blocks())


def setup(args) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not args.use_cpu
    if world_size == 1:
        return Distributed(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=args.ddp_timeout))
        atexit.register(_destroy_process_group)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _destroy_process_group() -> None:
    """The group this module created is destroyed before the interpreter exits, as torch asks. That does not stop
    gloo's worker threads: one can still be dropping a finished collective, whose tensors need the GIL to be freed,
    and if the interpreter is finalizing by then the thread aborts the process ("terminate called without an active
    exception", after a run that wrote everything). Exit handlers run before finalization, so a short sleep here,
    which releases the GIL, lets such a thread finish first."""
    if tdist.is_initialized():
        tdist.destroy_process_group()
        time.sleep(0.2)
