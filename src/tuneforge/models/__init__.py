"""The Auto* classes: config.json's "model_type" picks the family (registry.py), the class picks the task."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..checkpoint_io import resolve_folder
from ..checkpoint_io import pop_hub_options
from .base import pop_load_options, read_checkpoint
from .config import Config
from .registry import MODEL_TYPES, config_from_values, model_class, spec


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path, *, revision=None, token=None, gguf_file=None, **overrides) -> Config:
        """config.json (or a GGUF file's metadata) as a Config; the hub keywords (cache_dir, force_download,
        local_files_only, trust_remote_code=False) go to the download, every other keyword overrides a value (e.g.
        num_labels=, finetuning_task=)."""
        if overrides.pop("return_unused_kwargs", False):
            raise InputError("AutoConfig.from_pretrained(return_unused_kwargs=True) is not supported: a keyword "
                             "that is no config field is a TypeError")
        folder = resolve_folder(name_or_path, revision=revision, token=token,
                                **pop_hub_options(overrides, "AutoConfig.from_pretrained"))
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
        """The task's class of the checkpoint's family. Loading keywords (cache_dir, dtype, device_map,
        attn_implementation, ...: base.pop_load_options) are honoured, with or without config=; the others
        override config values (not with config=, which is then the whole config)."""
        options = pop_load_options(kwargs, f"{cls.__name__}.from_pretrained")
        folder = resolve_folder(name_or_path, revision=revision, token=token, **options["hub"])
        values, state = read_checkpoint(folder, gguf_file)
        model_type = config.model_type if config is not None else values["model_type"]
        source = str(Path(folder) / (gguf_file or "config.json"))
        model = model_class(model_type, cls._task, source)._from_checkpoint(
            name_or_path, folder, values, state, config, kwargs, ignore_mismatched_sizes, options)
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


class AutoModelForMaskedLM(_AutoModelBase):
    _task = "masked_lm"


class AutoModelForTokenClassification(_AutoModelBase):
    _task = "token_classification"


class AutoModelForQuestionAnswering(_AutoModelBase):
    _task = "question_answering"


class AutoModelForMultipleChoice(_AutoModelBase):
    _task = "multiple_choice"


__all__ = ["MODEL_TYPES", "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
           "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice", "Config"]
