"""Training checkpoints: output_dir/checkpoint-<step>/ with model, optimizer, scheduler, RNG states and
trainer_state.json. Each is written into a temporary folder and renamed into place, so a process killed at any
moment leaves the previous complete checkpoint usable. Everything loads with weights_only=True."""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_io import atomic_write
from .callbacks import TrainerState

PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
    if dist.is_main:
        tmp = output_dir / f".tmp-checkpoint-{state.global_step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model_folder(tmp, model, processing_class, args, weights)
        if not args.save_only_model:
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            for rank, states in enumerate(rng_states):
                torch.save(states, tmp / rng_file_name(rank))
        state.save_to_json(tmp / "trainer_state.json")
        if final.exists():  # re-saving a step after a resume: swap, never leave a moment without a complete folder
            stale = output_dir / f".stale-checkpoint-{state.global_step}"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
    dist.barrier()
    return final


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
        return found[-1]
    folder = Path(resume)
    if not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no trainer_state.json)")
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
