"""Read and write Hugging Face checkpoint folders: config.json + model.safetensors (sharded too), or
pytorch_model.bin through torch.load(weights_only=True) only. Writes are atomic (temporary file, then rename).

Loading is a strict state-dict load plus one small literal rename map; what the checkpoint lacks or has in excess is
reported in one readable warning, as the reference does.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from .errors import InputError

logger = logging.getLogger("tuneforge")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointError(InputError, OSError):
    """A model folder or weight file that cannot be used, with one line saying which and why."""


# --------------------------------------------------------------------------------------------- folders


def is_local(name_or_path: str | os.PathLike) -> bool:
    """Anything that exists, or looks like a path rather than a hub id ('org/name'), is a local folder."""
    s = str(name_or_path)
    return (Path(s).exists() or s.startswith((".", "/", "~")) or os.sep + os.sep in s or s.count("/") > 1
            or (os.name == "nt" and "\\" in s))


def resolve_folder(name_or_path, *, revision=None, token=None, **hub_options) -> Path:
    """A local folder as it is, or a hub id fetched through the hub cache (hub.py is the only hub client);
    hub_options are pop_hub_options'."""
    if is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"model folder {folder} does not exist")
        return folder
    from .hub import resolve_folder as fetch
    return fetch(str(name_or_path), revision=revision, token=token, **hub_options)


def pop_hub_options(kwargs: dict, caller: str) -> dict:
    """The reference's from_pretrained keywords about where files come from, taken out of `kwargs`: cache_dir,
    force_download, local_files_only for the hub download; trust_remote_code and from_tf refused when True
    (tuneforge never runs a checkpoint's code, and reads no TensorFlow weights)."""
    if kwargs.pop("trust_remote_code", None):
        raise InputError(f"{caller}(trust_remote_code=True) is refused: tuneforge never runs code from a "
                         "checkpoint; its model families are built in (pass trust_remote_code=False or leave it "
                         "out)")
    if kwargs.pop("from_tf", None):
        raise InputError(f"{caller}(from_tf=True) is not supported: tuneforge reads safetensors and PyTorch "
                         "weights, not TensorFlow checkpoints")
    if kwargs.pop("from_flax", None):
        raise InputError(f"{caller}(from_flax=True) is not supported: tuneforge reads safetensors and PyTorch "
                         "weights")
    options = {k: kwargs.pop(k) for k in ("cache_dir", "force_download", "local_files_only") if k in kwargs}
    return {k: v for k, v in options.items() if v is not None}


def read_config_dict(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; a model folder holds config.json and "
                              "model.safetensors (the Hugging Face format)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise CheckpointError(f"{path} has no \"model_type\" key, so the model family is unknown")
    return values


# ---------------------------------------------------------------------------------------------- weights


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as safetensors ({e})") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), reason[0] if reason else "")
        raise CheckpointError(f"{path} was refused: it holds more than plain tensors and loading it would run code "
                              f"({detail.strip()[:200]}). Only weights_only loads are allowed; convert it to "
                              "safetensors from a trusted source") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def _load_index(path: Path, load_shard) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{path} is not a valid shard index ({e})") from None
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{path} lists the shard {shard}, which is missing from {path.parent}")
        state.update(load_shard(shard_path))
    return state


def load_state_dict(folder: Path, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, safetensors first; `variant` reads model.<variant>.safetensors and the like."""
    folder = Path(folder)
    for name, load in (("model.safetensors", _load_safetensors), ("model.safetensors.index.json", None),
                       ("pytorch_model.bin", _load_bin), ("pytorch_model.bin.index.json", None)):
        path = folder / variant_name(name, variant)
        if path.is_file():
            if load is not None:
                return load(path)
            return _load_index(path, _load_safetensors if "safetensors" in name else _load_bin)
    names = ", ".join(variant_name(n, variant) for n in WEIGHT_FILES)
    raise CheckpointError(f"{folder} has no weights{f' of variant {variant!r}' if variant else ''}: looked for {names}")


def variant_name(name: str, variant: str | None) -> str:
    """The reference's file name of a weights variant: model.safetensors -> model.<variant>.safetensors."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> Path:
    """write(tmp_path) then rename over path: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private (0600): give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str = "50GB",
                 variant: str | None = None) -> None:
    """model.safetensors, or shards of at most max_shard_size (a tensor larger than that gets one of its own) named
    as the reference names them, with model.safetensors.index.json written last; the other layout's files of an
    earlier save are removed, so that a load never reads stale weights."""
    limit = file_size(max_shard_size)
    shards, size = [{}], 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    single, index = variant_name("model.safetensors", variant), variant_name("model.safetensors.index.json", variant)
    stem = single.removesuffix(".safetensors")
    names = [single] if len(shards) == 1 else [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
                                               for i in range(1, len(shards) + 1)]
    shard_name = re.compile(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.safetensors")  # this variant's shards only
    for stale in [folder / single, folder / index, *(p for p in folder.iterdir() if shard_name.fullmatch(p.name))]:
        if stale.name not in names:
            stale.unlink(missing_ok=True)
    for name, shard in zip(names, shards):
        save_state_dict(shard, folder / name)
    if len(shards) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.numel() * t.element_size() for t in state.values())
        atomic_write(folder / index, lambda tmp: Path(tmp).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n",
            encoding="utf-8"))


def file_size(value: int | str) -> int:
    """Bytes of max_shard_size as the reference reads it: an int, or "5GB" (10^9), "5GiB" (2^30), "500MB", ..."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", str(value))
    if not match or match.group(2).upper() not in units or float(match.group(1)) <= 0:
        raise InputError(f"max_shard_size={value!r} is not a size; give bytes (an int) or e.g. '5GB', '500MB', '2GiB'")
    return int(float(match.group(1)) * units[match.group(2).upper()])


# ---------------------------------------------------------------------------------------------- matching


def rename_keys(state: dict[str, torch.Tensor], expected: set[str], prefix: str, renames: dict[str, str],
                ignored: re.Pattern | None) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> the model's keys (`expected`): the family's literal renames (old suffix -> new), and the
    backbone prefix ('bert.') added or dropped depending on whether a bare backbone or a model with a head saved
    the checkpoint. Keys matching `ignored` (buffers we compute on the fly) are dropped without a warning."""
    prefix += "."
    model_has_prefix = any(k.startswith(prefix) for k in expected)
    out = {}
    for key, tensor in state.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        if model_has_prefix and not key.startswith(prefix) and prefix + key in expected:
            key = prefix + key
        elif not model_has_prefix and key.startswith(prefix):
            key = key[len(prefix):]
        if ignored is None or not ignored.search(key):
            out[key] = tensor
    return out


def match_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], *, source: str,
               ignore_mismatched_sizes: bool = False) -> dict[str, list]:
    """Checks a renamed state dict against the model's shapes; drops what does not fit (mismatched shapes only with
    ignore_mismatched_sizes) or is unused, in place. Returns the key report."""
    mismatched = [(key, list(state[key].shape), list(expected[key]))
                  for key in sorted(state.keys() & expected.keys()) if state[key].shape != expected[key]]
    if mismatched and not ignore_mismatched_sizes:
        shapes = "; ".join(f"{key} is {old} in the checkpoint, {new} in the model" for key, old, new in mismatched)
        raise CheckpointError(f"{source} does not fit this model ({shapes}), e.g. a head for another num_labels; "
                              "pass ignore_mismatched_sizes=True to initialise those weights fresh")
    for key, _, _ in mismatched:
        state.pop(key)
    unused = sorted(state.keys() - expected.keys())
    for key in unused:
        state.pop(key)
    return {"missing": sorted(expected.keys() - state.keys()), "unused": unused, "mismatched": mismatched}


def warn_about_keys(model_name: str, source: str, report: dict[str, list]) -> None:
    lines = []
    if report["unused"]:
        lines.append(f"Some weights of the model checkpoint at {source} were not used when initializing "
                     f"{model_name}: {report['unused']}")
    if report["missing"] or report["mismatched"]:
        fresh = set(report["missing"]) | {k for k, _, _ in report["mismatched"]}
        lines.append(f"Some weights of {model_name} were not initialized from the model checkpoint at {source} "
                     f"and are newly initialized: {sorted(fresh)}")
        for key, old, new in report["mismatched"]:
            lines.append(f"- {key}: found shape {old} in the checkpoint and {new} in the model")
        lines.append("You should probably TRAIN this model on a down-stream task to be able to use it for "
                     "predictions and inference.")
    if lines:
        logger.warning("\n".join(lines))
