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
from torch import nn

logger = logging.getLogger("tuneforge")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Legacy names: old TF-ported checkpoints call LayerNorm parameters gamma/beta.
LEGACY_RENAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
# Buffers some checkpoints carry that we compute on the fly instead; never worth a warning.
IGNORED_KEYS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


class CheckpointError(OSError):
    """A model folder or weight file that cannot be used, with one line saying which and why."""


# --------------------------------------------------------------------------------------------- folders


def is_local(name_or_path: str | os.PathLike) -> bool:
    """Anything that exists, or looks like a path rather than a hub id ('org/name'), is a local folder."""
    s = str(name_or_path)
    return (Path(s).exists() or s.startswith((".", "/", "~")) or os.sep + os.sep in s or s.count("/") > 1
            or (os.name == "nt" and "\\" in s))


def resolve_folder(name_or_path, *, revision=None, token=None) -> Path:
    """A local folder as it is, or a hub id fetched through the hub cache (hub.py is the only hub client)."""
    if is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"model folder {folder} does not exist")
        return folder
    from .hub import resolve_folder as fetch
    return fetch(str(name_or_path), revision=revision, token=token)


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


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, safetensors first."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return _load_safetensors(folder / "model.safetensors")
    if (folder / "model.safetensors.index.json").is_file():
        return _load_index(folder / "model.safetensors.index.json", _load_safetensors)
    if (folder / "pytorch_model.bin").is_file():
        return _load_bin(folder / "pytorch_model.bin")
    if (folder / "pytorch_model.bin.index.json").is_file():
        return _load_index(folder / "pytorch_model.bin.index.json", _load_bin)
    raise CheckpointError(f"{folder} has no weights: looked for {', '.join(WEIGHT_FILES)}")


def atomic_write(path: Path, write) -> Path:
    """write(tmp_path) then rename over path: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


# ---------------------------------------------------------------------------------------------- matching


def rename_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> this model's keys: legacy names, and the backbone prefix ('bert.') added or dropped
    depending on whether a bare backbone or a model with a head saved the checkpoint."""
    expected = model.state_dict().keys()
    prefix = model.base_model_prefix + "."
    model_has_prefix = any(k.startswith(prefix) for k in expected)
    out = {}
    for key, tensor in state.items():
        for old, new in LEGACY_RENAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        if model_has_prefix and not key.startswith(prefix) and prefix + key in expected:
            key = prefix + key
        elif not model_has_prefix and key.startswith(prefix):
            key = key[len(prefix):]
        if not IGNORED_KEYS.search(key):
            out[key] = tensor
    return out


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
              ignore_mismatched_sizes: bool = False) -> dict[str, list]:
    """Strict load of a renamed state dict into a model built on the meta device; what the checkpoint lacks is
    initialised fresh. Returns the key report and logs it as one warning."""
    state = rename_keys(state, model)
    expected = model.state_dict()
    mismatched = [(key, list(state[key].shape), list(expected[key].shape))
                  for key in sorted(state.keys() & expected.keys()) if state[key].shape != expected[key].shape]
    if mismatched and not ignore_mismatched_sizes:
        shapes = "; ".join(f"{key} is {old} in the checkpoint, {new} in the model" for key, old, new in mismatched)
        raise CheckpointError(f"{source} does not fit this model ({shapes}), e.g. a head for another num_labels; "
                              "pass ignore_mismatched_sizes=True to initialise those weights fresh")
    for key, _, _ in mismatched:
        state.pop(key)
    missing = sorted(expected.keys() - state.keys())
    unused = sorted(state.keys() - expected.keys())
    for key in unused:
        state.pop(key)

    model.to_empty(device="cpu")
    from .models.layers import init_weights
    fresh = {k.rsplit(".", 1)[0] for k in missing}
    for name, module in model.named_modules():
        if name in fresh:
            init_weights(module, getattr(model.config, "initializer_range", 0.02))
    model.load_state_dict(state, strict=False)
    report = {"missing": missing, "unused": unused, "mismatched": mismatched}
    warn_about_keys(type(model).__name__, source, report)
    return report


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


# ------------------------------------------------------------------------------------------------ models


class PreTrainedModel(nn.Module):
    """The one thing every model family shares: reading and writing checkpoint folders. Nothing numerical."""

    base_model_prefix = ""

    def __init__(self, config):
        super().__init__()
        self.config = config

    @classmethod
    def from_config(cls, config):
        """A model with the reference's fresh initialisation (N(0, initializer_range))."""
        from .models.layers import init_weights
        model = cls(config)
        std = getattr(config, "initializer_range", 0.02)
        model.apply(lambda m: init_weights(m, std))
        return model

    @classmethod
    def from_pretrained(cls, name_or_path, *, config=None, ignore_mismatched_sizes: bool = False,
                        revision: str | None = None, token: str | None = None, **config_overrides):
        from .models import config_from_folder
        folder = resolve_folder(name_or_path, revision=revision, token=token)
        if config is None:
            config = config_from_folder(folder, **config_overrides)
        elif config_overrides:
            raise TypeError(f"pass either config= or config overrides, not both ({', '.join(config_overrides)})")
        state = load_state_dict(folder)
        with torch.device("meta"):
            model = cls(config)
        load_into(model, state, source=str(name_or_path), ignore_mismatched_sizes=ignore_mismatched_sizes)
        config.name_or_path = str(name_or_path)
        return model.eval()

    def save_pretrained(self, folder, *, state_dict: dict | None = None, push_to_hub: bool = False,
                        repo_id: str | None = None, token: str | None = None, **_ignored) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        config = {k: v for k, v in self.config.to_dict().items() if k != "name_or_path"}
        atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
        save_state_dict(self.state_dict() if state_dict is None else state_dict, folder / "model.safetensors")
        if push_to_hub:
            self.push_to_hub(repo_id or folder.name, token=token)
        return folder

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload model with tuneforge", revision: str | None = None) -> str:
        """Save the model (config.json + model.safetensors) and upload it to the hub repo `repo_id` in one commit.

        The repo is created if missing (a bare name goes to the token owner's namespace); `revision` names a
        branch. Returns the commit URL; failures raise `tuneforge.hub.HubError` (an OSError, one line, no token).
        """
        from .hub import push_folder
        with tempfile.TemporaryDirectory(prefix="tuneforge-model-") as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, token=token, private=private, commit_message=commit_message,
                               revision=revision)

    def get_input_embeddings(self) -> nn.Embedding:
        base = getattr(self, self.base_model_prefix, self)
        return base.embeddings.word_embeddings

    def gradient_checkpointing_enable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
