"""MODEL_TYPES: config.json "model_type" -> the family's defaults and classes; and the Auto* classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint_io import CheckpointError, read_config_dict, resolve_folder
from . import bert, distilbert
from .config import TASK_DEFAULTS, Config


@dataclass(frozen=True)
class Family:
    defaults: dict
    base: type
    sequence_classification: type


MODEL_TYPES = {
    "bert": Family(bert.BERT_DEFAULTS, bert.BertModel, bert.BertForSequenceClassification),
    "roberta": Family(bert.ROBERTA_DEFAULTS, bert.RobertaModel, bert.RobertaForSequenceClassification),
    "xlm-roberta": Family(bert.XLM_ROBERTA_DEFAULTS, bert.RobertaModel, bert.RobertaForSequenceClassification),
    "distilbert": Family(distilbert.DISTILBERT_DEFAULTS, distilbert.DistilBertModel,
                         distilbert.DistilBertForSequenceClassification),
}


def family(model_type: str, source: str = "config.json") -> Family:
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} in {source} is not supported; supported: "
                              f"{', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type]


def config_from_folder(folder: Path, **overrides) -> Config:
    """config.json with the caller's overrides; an override that is no config field is a TypeError, not lost."""
    values = read_config_dict(folder)
    fam = family(values["model_type"], str(Path(folder) / "config.json"))
    known = values.keys() | fam.defaults.keys() | TASK_DEFAULTS.keys() | {"num_labels"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}: not a field of this {values['model_type']} "
                        f"config (fields: {', '.join(sorted(known))})")
    if "num_labels" in overrides and "id2label" in values and "id2label" not in overrides:
        values.pop("id2label")
        values.pop("label2id", None)
    if "id2label" in overrides and "label2id" not in overrides:
        values.pop("label2id", None)
    return Config(fam.defaults, **{**values, **overrides})


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_path, *, revision=None, token=None, **overrides) -> Config:
        return config_from_folder(resolve_folder(name_or_path, revision=revision, token=token), **overrides)

    @staticmethod
    def for_model(model_type: str, **values) -> Config:
        return Config(family(model_type, "for_model()").defaults, **values)


class _AutoModelBase:
    _task = ""

    @classmethod
    def from_pretrained(cls, name_or_path, *, revision=None, token=None, config: Config | None = None, **kwargs):
        folder = resolve_folder(name_or_path, revision=revision, token=token)
        model_type = config.model_type if config is not None else read_config_dict(folder)["model_type"]
        model_class = getattr(family(model_type, str(Path(folder) / "config.json")), cls._task)
        model = model_class.from_pretrained(folder, config=config, **kwargs)
        model.config.name_or_path = str(name_or_path)
        return model

    @classmethod
    def from_config(cls, config: Config):
        return getattr(family(config.model_type, "the config"), cls._task).from_config(config)


class AutoModel(_AutoModelBase):
    _task = "base"


class AutoModelForSequenceClassification(_AutoModelBase):
    _task = "sequence_classification"
