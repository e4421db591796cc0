"""PreTrainedModel: what every model family shares, reading and writing checkpoint folders (through checkpoint_io
and gguf_io, which know nothing of models) and asking the family's spec (registry.py) what is family-specific.
Nothing numerical lives here."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..checkpoint_io import (atomic_write, load_state_dict, match_keys, read_config_dict, rename_keys, resolve_folder,
                             save_state_dict, warn_about_keys)
from .layers import init_weights


def read_checkpoint(folder: Path, gguf_file: str | None = None) -> tuple[dict, dict | None]:
    """(config.json values, the tensors or None if they come later). A GGUF file holds both, read at once."""
    if gguf_file is None:
        return read_config_dict(folder), None
    from ..gguf_io import read_gguf
    checkpoint = read_gguf(Path(folder) / gguf_file)
    return checkpoint.config, checkpoint.state_dict


class PreTrainedModel(nn.Module):
    base_model_prefix = ""
    # Parameters that are the same tensor as another when config.tie_word_embeddings: ours -> the one it shares.
    tied_weights: dict[str, str] = {}

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def spec(self):
        from .registry import spec
        return spec(self.config.model_type)

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.get_submodule(self.spec.input_embeddings)

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks: FSDP's unit of sharding, and what activation checkpointing recomputes."""
        return self.base_model.get_submodule(self.spec.blocks)

    def tie_weights(self) -> None:
        if getattr(self.config, "tie_word_embeddings", False):
            for ours, shared in self.tied_weights.items():
                owner, name = ours.rsplit(".", 1)
                setattr(self.get_submodule(owner), name, self.get_parameter(shared))

    def _tied_keys(self) -> set[str]:
        return set(self.tied_weights) if getattr(self.config, "tie_word_embeddings", False) else set()

    def with_tied_weights(self, state: dict) -> dict:
        """A saved state (which holds a tied tensor once) completed for a strict load."""
        return {**state, **{k: state[self.tied_weights[k]] for k in self._tied_keys() if k not in state}}

    @classmethod
    def from_config(cls, config):
        """A model with the reference's fresh initialisation (N(0, initializer_range))."""
        model = cls(config)
        std = getattr(config, "initializer_range", 0.02)
        model.apply(lambda m: init_weights(m, std))
        model.tie_weights()
        return model

    @classmethod
    def from_pretrained(cls, name_or_path, *, config=None, ignore_mismatched_sizes: bool = False,
                        revision: str | None = None, token: str | None = None, gguf_file: str | None = None,
                        **config_overrides):
        folder = resolve_folder(name_or_path, revision=revision, token=token)
        values, state = read_checkpoint(folder, gguf_file)
        return cls._from_checkpoint(name_or_path, folder, values, state, config, config_overrides,
                                    ignore_mismatched_sizes)

    @classmethod
    def _from_checkpoint(cls, name_or_path, folder: Path, values: dict, state: dict | None, config,
                         config_overrides: dict, ignore_mismatched_sizes: bool):
        from .registry import config_from_values
        if config is None:
            config = config_from_values(values, str(Path(folder) / "config.json"), **config_overrides)
        elif config_overrides:
            raise TypeError(f"pass either config= or config overrides, not both ({', '.join(config_overrides)})")
        if state is None:
            state = load_state_dict(folder)
        with torch.device("meta"):
            model = cls(config)
        model._load(state, str(name_or_path), ignore_mismatched_sizes)
        if hasattr(cls, "generate"):
            from .generation import GenerationConfig
            model.generation_config = GenerationConfig.for_model(folder, config)
        config.name_or_path = str(name_or_path)
        return model.eval()

    def _load(self, state: dict, source: str, ignore_mismatched_sizes: bool) -> dict[str, list]:
        """Strict load of the renamed checkpoint into this model, built on the meta device; what the checkpoint
        lacks is initialised fresh. Returns the key report and logs it as one warning."""
        spec = self.spec
        expected = {k: v.shape for k, v in self.state_dict().items()}
        state = rename_keys(state, set(expected), self.base_model_prefix, spec.renames, spec.ignored_keys)
        report = match_keys(state, expected, source=source, ignore_mismatched_sizes=ignore_mismatched_sizes)
        report["missing"] = [k for k in report["missing"] if k not in self._tied_keys()]
        self.to_empty(device="cpu")
        self.tie_weights()  # to_empty gives every parameter its own storage
        fresh = {k.rsplit(".", 1)[0] for k in report["missing"]} | {k.rsplit(".", 1)[0] for k, _, _ in
                                                                    report["mismatched"]}
        for name, module in self.named_modules():
            if name in fresh:
                init_weights(module, getattr(self.config, "initializer_range", 0.02))
        for module in self.modules():  # computed buffers (rotary frequencies) are in no checkpoint
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        self.load_state_dict(state, strict=False)
        warn_about_keys(type(self).__name__, source, report)
        return report

    def save_pretrained(self, folder, *, state_dict: dict | None = None, push_to_hub: bool = False,
                        repo_id: str | None = None, token: str | None = None, safe_serialization: bool = True,
                        **kwargs) -> Path:
        if kwargs:
            raise TypeError(f"save_pretrained() got argument(s) it does not implement: {', '.join(sorted(kwargs))}")
        if not safe_serialization:
            raise ValueError("safe_serialization=False is not supported: tuneforge writes safetensors only")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        config = {k: v for k, v in self.config.to_dict().items() if k != "name_or_path"}
        atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
        state = self.state_dict() if state_dict is None else state_dict
        state = {k: v for k, v in state.items() if k not in self._tied_keys()}  # the reference saves one copy
        save_state_dict(state, folder / "model.safetensors")
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.save_pretrained(folder)
        if push_to_hub:
            self.push_to_hub(repo_id or folder.name, token=token)
        return folder

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload model with tuneforge", revision: str | None = None) -> str:
        """Save the model (config.json + model.safetensors) and upload it to the hub repo `repo_id` in one commit.

        The repo is created if missing (a bare name goes to the token owner's namespace); `revision` names a
        branch. Returns the commit URL; failures raise `tuneforge.hub.HubError` (an OSError, one line, no token).
        """
        from ..hub import push_folder
        with tempfile.TemporaryDirectory(prefix="tuneforge-model-") as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, token=token, private=private, commit_message=commit_message,
                               revision=revision)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        if gradient_checkpointing_kwargs and gradient_checkpointing_kwargs.get("use_reentrant", False):
            raise ValueError("gradient_checkpointing_kwargs={'use_reentrant': True} is not supported "
                             "(tuneforge checkpoints with use_reentrant=False)")
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
