"""A model's config.json as an object: family defaults, overridden by the file, then by the caller."""
from __future__ import annotations

import copy
import json

from ..errors import InputError

# Fields every family shares: they describe the task head and are written back on save.
TASK_DEFAULTS = {
    "architectures": None,
    "problem_type": None,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
}
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class Config:
    """Attribute access to config.json values. Keys it does not know are kept and written back unchanged."""

    def __init__(self, defaults: dict | None = None, **values):
        num_labels = values.pop("num_labels", None)
        merged = {**copy.deepcopy(TASK_DEFAULTS), **copy.deepcopy(defaults or {}), **values}
        self.__dict__.update(merged)
        # JSON keys are strings; the reference and our heads use integer ids.
        self.id2label = {int(k): str(v) for k, v in (self.id2label or {}).items()}
        if "label2id" not in values or values["label2id"] is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        if num_labels is not None and num_labels != len(self.id2label):
            self.num_labels = num_labels
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise InputError(f"problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise InputError(f"num_labels must be a positive integer, got {n!r}")
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    def to_dict(self) -> dict:
        out = copy.deepcopy(self.__dict__)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return out

    def __repr__(self) -> str:
        return f"Config({json.dumps(self.to_dict(), sort_keys=True)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()
