"""The Auto* classes: config.json's "model_type" picks the family (registry.py), the class picks the task."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint_io import resolve_folder
from .base import read_checkpoint
from .config import Config
from .registry import MODEL_TYPES, config_from_values, model_class, spec


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path, *, revision=None, token=None, gguf_file=None, **overrides) -> Config:
        folder = resolve_folder(name_or_path, revision=revision, token=token)
        values, _ = read_checkpoint(folder, gguf_file)
        return config_from_values(values, str(Path(folder) / (gguf_file or "config.json")), **overrides)

    @staticmethod
    def for_model(model_type: str, **values) -> Config:
        return Config(spec(model_type, "for_model()").defaults, **values)


class _AutoModelBase:
    _task = ""

    @classmethod
    def from_pretrained(cls, name_or_path, *, revision=None, token=None, config: Config | None = None,
                        gguf_file: str | None = None, ignore_mismatched_sizes: bool = False, **kwargs):
        folder = resolve_folder(name_or_path, revision=revision, token=token)
        values, state = read_checkpoint(folder, gguf_file)
        model_type = config.model_type if config is not None else values["model_type"]
        source = str(Path(folder) / (gguf_file or "config.json"))
        model = model_class(model_type, cls._task, source)._from_checkpoint(
            name_or_path, folder, values, state, config, kwargs, ignore_mismatched_sizes)
        model.config.name_or_path = str(name_or_path)
        return model

    @classmethod
    def from_config(cls, config: Config):
        return model_class(config.model_type, cls._task, "the config").from_config(config)


class AutoModel(_AutoModelBase):
    _task = "base"


class AutoModelForSequenceClassification(_AutoModelBase):
    _task = "sequence_classification"


class AutoModelForCausalLM(_AutoModelBase):
    _task = "causal_lm"


__all__ = ["MODEL_TYPES", "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
           "Config"]
