"""Training checkpoints: output_dir/checkpoint-<step>/ with model, optimizer, scheduler, RNG states and
trainer_state.json. Each is written into a temporary folder and renamed into place, so a process killed at any
moment leaves the previous complete checkpoint usable. Everything loads with weights_only=True.

Every checkpoint holds checkpoint_manifest.json, written last before the rename: each file's size and SHA-256, so a
file that a disk truncated or corrupted later is found and named before resuming (`damaged`). A write that fails
for lack of space or permission (`DISK_ERRORS`) removes what it wrote and raises `CheckpointWriteError`, one line
naming the folder and the space needed; the previous checkpoint is never touched."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_io import CheckpointError, atomic_write
from .callbacks import TrainerState

PATTERN = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "checkpoint_manifest.json"
# What a full, over-quota, read-only or forbidden folder raises (EFBIG: a file size limit, RLIMIT_FSIZE).
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
logger = logging.getLogger("tuneforge")


class CheckpointWriteError(OSError):
    """A checkpoint or model folder that could not be written (disk full, quota, read-only), in one line."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


def rng_state() -> dict:
    """RNG states as plain tensors and numbers, so they load with weights_only=True."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, *, model, processing_class, optimizer, scheduler, state: TrainerState,
                    args, dist) -> Path:
    """Only rank 0 writes; it gathers every rank's RNG state first so each rank resumes its own dropout stream."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{state.global_step}"
    rng_states = [] if args.save_only_model else dist.all_gather_object(rng_state())
    weights = dist.model_state_dict(model)
    optimizer_state = None if args.save_only_model else dist.optimizer_state_dict(model, optimizer)
    failure = None
    if dist.is_main:
        tmp = output_dir / f".tmp-checkpoint-{state.global_step}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model_folder(tmp, model, processing_class, args, weights)
            if not args.save_only_model:
                torch.save(optimizer_state, tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                for rank, states in enumerate(rng_states):
                    torch.save(states, tmp / rng_file_name(rank))
            state.save_to_json(tmp / "trainer_state.json")
            write_manifest(tmp)
            if final.exists():  # re-saving a step after a resume: swap, never a moment without a complete folder
                stale = output_dir / f".stale-checkpoint-{state.global_step}"
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(final, stale)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(stale, final)
                    raise
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
            failure = error
    # Instead of a barrier: every rank learns whether rank 0 wrote the folder, so none waits on a failed one.
    message = dist.all_gather_object(None if failure is None else write_failure(
        failure, final, tensor_bytes(weights, optimizer_state), sorted_checkpoints(output_dir)))[0]
    if failure is not None:
        if disk_errno(failure) is not None:
            raise CheckpointWriteError(disk_errno(failure), message) from None
        raise failure
    if message is not None:
        raise CheckpointWriteError(errno.EIO, f"rank 0: {message}")
    return final


def tensor_bytes(*objects) -> int:
    """Bytes of the tensors in nested dicts/lists: what a checkpoint's weight and optimizer files take."""
    total, todo = 0, list(objects)
    while todo:
        obj = todo.pop()
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
    return total


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def disk_errno(error: BaseException) -> int | None:
    """The errno of a full/read-only/forbidden disk behind an error, or None. safetensors reports it in its text."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (found := re.search(r"\(os error (\d+)\)", str(error))):
        code = int(found.group(1))
    return code if code in DISK_ERRORS else None


def write_failure(error: BaseException, folder: Path, needed: int, previous: list[Path]) -> str:
    """The one line for a folder that could not be written: which, why, the space it needs and what is left."""
    code = disk_errno(error)
    if code is None:
        return f"could not write {folder}: {error!r}"
    parent = next(p for p in [folder, *folder.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the folder is on a read-only filesystem", errno.EFBIG: "a file size limit was hit",
              }.get(code, "permission denied")
    kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
    return (f"could not write {folder}: {reason} ({errno.errorcode[code]}); it needs about "
            f"{_megabytes(needed)} and {parent} has {_megabytes(free)} free. Nothing partial was left; {kept}: "
            "free some space (or fix the permissions) and resume with resume_from_checkpoint=True")


def write_manifest(folder: Path) -> None:
    """Each file's size and SHA-256, written last, inside the folder."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest}
    atomic_write(folder / MANIFEST, lambda tmp: Path(tmp).write_text(
        json.dumps({"format": 1, "files": files}, indent=1) + "\n", encoding="utf-8"))


def damaged(folder: Path) -> str | None:
    """Why the checkpoint cannot be trusted, naming the file; None when it is intact (or predates manifests)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None  # written before checkpoints had manifests (or by another tool): nothing to check against
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest} is unreadable ({e})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path} is {size} bytes, {expected['bytes']} when it was written (truncated or overwritten)"
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != expected["sha256"]:
                return f"{path} does not match the checksum recorded when it was written (corrupt)"
    return None


def rng_file_name(rank: int) -> str:
    return f"rng_state_{rank}.pth" if rank else "rng_state.pth"


def save_model_folder(folder: Path, model, processing_class, args, weights: dict | None = None) -> None:
    """What save_model() and every checkpoint hold: a folder from_pretrained loads."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder, state_dict=weights)
    else:
        from ..checkpoint_io import save_state_dict
        save_state_dict(weights if weights is not None else model.state_dict(), folder / "model.safetensors")
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)
    atomic_write(folder / "training_args.json",
                 lambda tmp: Path(tmp).write_text(args.to_json_string() + "\n", encoding="utf-8"))


def save_model_safely(folder: Path, model, processing_class, args, weights: dict, dist) -> None:
    """save_model(): the files are written into a hidden folder inside `folder`, then each is renamed into place, so
    a full disk leaves `folder` as it was (its other files, checkpoints and logs included) and one clear line."""
    failure = None
    if dist.is_main:
        tmp = folder / f".tmp-save-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            save_model_folder(tmp, model, processing_class, args, weights)
            for path in tmp.iterdir():
                target = folder / path.name
                if path.is_dir() and target.is_dir():
                    shutil.rmtree(target)
                os.replace(path, target)
        except BaseException as error:
            failure = error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    message = dist.all_gather_object(None if failure is None else write_failure(
        failure, folder, tensor_bytes(weights), sorted_checkpoints(folder)))[0]
    if failure is not None:
        if disk_errno(failure) is not None:
            raise CheckpointWriteError(disk_errno(failure), message.replace(
                "resume with resume_from_checkpoint=True", "call save_model() again")) from None
        raise failure
    if message is not None:
        raise CheckpointWriteError(errno.EIO, f"rank 0: {message}")


def load_model_weights(folder: Path, model, dist) -> None:
    """A saved folder's weights into the model: for a LoRA model (PeftModel) the adapter and trainable heads its
    folder holds (the frozen base is not saved), else every weight."""
    if hasattr(model, "adapter_state_from_folder"):
        dist.load_model_state_dict(model, model.adapter_state_from_folder(folder), strict=False)
        return
    from ..checkpoint_io import load_state_dict
    dist.load_model_state_dict(model, load_state_dict(folder))


def load_checkpoint(folder: Path, *, model, optimizer, scheduler, dist) -> TrainerState:
    if not (folder / "optimizer.pt").is_file():
        raise FileNotFoundError(f"{folder} holds only the model (save_only_model=True): it cannot resume training")
    load_model_weights(folder, model, dist)
    dist.load_optimizer_state_dict(model, optimizer, torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng_file = folder / rng_file_name(dist.rank)
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainerState.load_from_json(folder / "trainer_state.json")


def sorted_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones live under a .tmp- name and are never listed)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := PATTERN.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume) -> Path | None:
    if resume in (None, False):
        return None
    if resume is True:
        found = sorted_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir} holds no complete checkpoint")
        for folder in reversed(found):  # the newest intact one
            problem = damaged(folder)
            if problem is None:
                if folder != found[-1]:
                    logger.warning(f"resuming from {folder} instead, the newest intact checkpoint")
                return folder
            logger.warning(f"checkpoint {folder} is damaged and is skipped: {problem}")
        raise CheckpointError(f"resume_from_checkpoint=True but every checkpoint in {output_dir} is damaged; the "
                              f"oldest: {damaged(found[0])}")
    folder = Path(resume)
    if not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no trainer_state.json)")
    problem = damaged(folder)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {folder}: {problem}; pass an earlier checkpoint, or "
                              "resume_from_checkpoint=True to take the newest intact one")
    return folder


def rotate_checkpoints(output_dir: str | Path, limit: int | None, best: str | None) -> None:
    """Keep `limit` checkpoints: the best one and the newest others (with limit 1: the best and the newest)."""
    for leftover in [*Path(output_dir).glob(".tmp-checkpoint-*"), *Path(output_dir).glob(".stale-checkpoint-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # what a killed run left half-written
    if limit is None:
        return
    found = sorted_checkpoints(output_dir)
    best_path = Path(best).resolve() if best else None
    is_best = lambda p: best_path is not None and p.resolve() == best_path  # noqa: E731
    others = [p for p in found if not is_best(p)]
    newest = max(1, limit - 1) if len(others) < len(found) else limit
    for path in others[:-newest]:
        shutil.rmtree(path, ignore_errors=True)
