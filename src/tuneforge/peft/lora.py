"""LoRA with PEFT's names, module layout and file format, so adapters move between tuneforge and PEFT unchanged.

A targeted linear layer y = x W^T + b becomes y = x W^T + b + s (dropout(x) A^T) B^T with A (r, in), B (out, r)
and s = lora_alpha / r (/ sqrt(r) with use_rslora); only A and B (and any `modules_to_save` copy, and biases if
`bias` says so) train. In memory the layout is PEFT's: PeftModel.base_model (LoraModel).model is the wrapped model,
a targeted layer is a `Linear` with `base_layer`, `lora_A[adapter]`, `lora_B[adapter]`; a head to train whole is a
`ModulesToSaveWrapper` with `original_module` and `modules_to_save[adapter]`. On disk an adapter folder holds
adapter_config.json and adapter_model.safetensors with keys `base_model.model.<path>.lora_A.weight` (the adapter
name left out) and a saved head as `base_model.model.<path>.<param>`.

The encoders' written-out fast paths (attention.py, layers.py) read `.weight` only of plain modules
(layers.is_plain); a LoRA layer offers them its parts through `low_rank_parts()` so they can fold the update into
their GEMMs, and otherwise they call it as a module.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..checkpoint_io import CheckpointError, atomic_write, resolve_folder, save_state_dict
from ..models.gpt2 import Conv1D
from ..models.layers import Dropout, LinearParts

CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
ALL_LINEAR = "all-linear"


class TaskType(str, Enum):
    SEQ_CLS = "SEQ_CLS"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


# PEFT's defaults when target_modules is not given (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
                   "distilbert": ["q_lin", "v_lin"], "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
                   "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
# Heads a task trains whole and saves with the adapter, as PEFT's task classes add them.
TASK_HEADS = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"],
              "QUESTION_ANS": ["qa_outputs"]}
# adapter_config.json fields that change nothing computed here (bookkeeping, or other methods' settings).
_INERT = {"peft_type", "peft_version", "auto_mapping", "revision", "inference_mode", "megatron_core",
          "qalora_group_size", "base_model_name_or_path", "task_type"}
# Fields of PEFT's LoraConfig this module does not implement, with the value that means "off": refused otherwise.
_NOT_IMPLEMENTED = {"use_dora": False, "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {},
                    "layers_to_transform": None, "layers_pattern": None, "layer_replication": None,
                    "target_parameters": None, "trainable_token_indices": None, "loftq_config": {},
                    "megatron_config": None, "eva_config": None, "corda_config": None, "use_qalora": False,
                    "alora_invocation_tokens": None, "arrow_config": None, "ensure_weight_tying": False,
                    "use_bdlora": None, "kasa_config": None, "lora_ga_config": None, "monteclora_config": None,
                    "velora_config": None}


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class LoraConfig:
    r: int = 8
    lora_alpha: float = 8
    target_modules: list[str] | str | None = None
    lora_dropout: float = 0.0
    bias: str = "none"  # "none", "all" or "lora_only": which biases train too
    task_type: str | None = None
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True  # True: A Kaiming-uniform, B zero; "gaussian": A ~ N(0, 1/r); False: B too
    fan_in_fan_out: bool = False
    exclude_modules: list[str] | str | None = None
    inference_mode: bool = False
    base_model_name_or_path: str | None = None
    revision: str | None = None
    peft_type: str = field(default="LORA", init=False)

    def __post_init__(self):
        if isinstance(self.task_type, Enum):
            self.task_type = self.task_type.value
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise InputError(f"LoraConfig r={self.r!r}: the rank must be a positive integer")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"LoraConfig lora_dropout={self.lora_dropout!r} is outside [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise InputError(f"LoraConfig bias={self.bias!r}: expected 'none', 'all' or 'lora_only'")
        if self.task_type is not None and self.task_type not in TaskType._value2member_map_:
            raise InputError(f"LoraConfig task_type={self.task_type!r} is not supported; supported: "
                             f"{', '.join(TaskType._value2member_map_)}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise InputError(f"LoraConfig init_lora_weights={self.init_lora_weights!r} is not supported "
                             "(True, False or 'gaussian')")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict:
        values = asdict(self)
        return {**_NOT_IMPLEMENTED, **values, "lora_bias": False}

    def save_pretrained(self, folder) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(folder) / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def from_pretrained(cls, folder) -> LoraConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}: it is not an adapter folder")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from None
        if values.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{path}: peft_type {values.get('peft_type')!r} is not supported (only LORA)")
        for key, off in _NOT_IMPLEMENTED.items():
            if values.get(key, off) not in (off, None) and values.get(key) != off:
                raise CheckpointError(f"{path}: {key}={values[key]!r} is not supported by tuneforge's LoRA "
                                      f"(only {off!r})")
        known = {f for f in cls.__dataclass_fields__ if f != "peft_type"}
        unknown = sorted(k for k, v in values.items() if k not in known | _INERT | set(_NOT_IMPLEMENTED) and v)
        if unknown:
            raise CheckpointError(f"{path}: field(s) {', '.join(unknown)} are not supported by tuneforge's LoRA")
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------- layers


class Linear(nn.Module):
    """A linear layer (nn.Linear, or GPT-2's Conv1D with its weight (in, out)) with a LoRA update:
    y = base_layer(x) + s (dropout(x) A^T) B^T. PEFT's lora.Linear, for one adapter at a time."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig):
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        self.in_features, self.out_features = weight.shape if self.fan_in_fan_out else weight.shape[::-1]
        # Adapters train in float32 even on a half-precision base, as PEFT's autocast_adapter_dtype.
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        make = dict(bias=False, device=weight.device, dtype=dtype)
        self.lora_A = nn.ModuleDict({adapter_name: nn.Linear(self.in_features, config.r, **make)})
        self.lora_B = nn.ModuleDict({adapter_name: nn.Linear(config.r, self.out_features, **make)})
        p = config.lora_dropout
        self.lora_dropout = nn.ModuleDict({adapter_name: Dropout(p) if p > 0 else nn.Identity()})
        self.scaling = {adapter_name: config.scaling}
        self.active_adapter, self.merged, self.disabled = adapter_name, False, False
        self.reset_lora_parameters(config.init_lora_weights)

    def reset_lora_parameters(self, init) -> None:
        a, b = self.lora_A[self.active_adapter].weight, self.lora_B[self.active_adapter].weight
        if init == "gaussian":
            nn.init.normal_(a, std=1 / a.shape[0])
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise
        if init is False:  # PEFT leaves B at nn.Linear's initialisation: the adapter changes the output at once
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        else:
            nn.init.zeros_(b)

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def low_rank_parts(self) -> LinearParts | None:
        """W (out, in), b, A (r, in), B (out, r) and s, for a fast path that folds the update into its own GEMMs;
        None where it must call the module: merged, disabled, dropout on the adapter's input while training,
        hooks, or a base layer that is not a plain nn.Linear."""
        name = self.active_adapter
        if (self.merged or self.disabled or type(self.base_layer) is not nn.Linear or self._forward_hooks
                or self._forward_pre_hooks or self.base_layer._forward_hooks or self.base_layer._forward_pre_hooks
                or (self.training and not isinstance(self.lora_dropout[name], nn.Identity))):
            return None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if a.dtype != self.base_layer.weight.dtype:
            return None
        return LinearParts(self.base_layer.weight, self.base_layer.bias, a, b, self.scaling[name])

    def delta_weight(self) -> Tensor:
        """s B A, in the base weight's layout ((in, out) for Conv1D)."""
        name = self.active_adapter
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        delta = (b.float() @ a.float()) * self.scaling[name]  # (out, in)
        return (delta.t() if self.fan_in_fan_out else delta).to(self.base_layer.weight.dtype)

    def merge(self) -> None:
        if not self.merged:
            with torch.no_grad():
                self.base_layer.weight += self.delta_weight()
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            with torch.no_grad():
                self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        name = self.active_adapter
        a = self.lora_A[name]
        h = self.lora_dropout[name](x.to(a.weight.dtype))
        flat_y, flat_h = y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1])  # (M, out), (M, in)
        b = self.lora_B[name].weight.to(y.dtype)
        # y + s (h A^T) B^T, the add folded into the second GEMM.
        out = torch.addmm(flat_y, a(flat_h).to(y.dtype), b.t(), alpha=self.scaling[name])
        return out.view(y.shape)

    def extra_repr(self) -> str:
        return f"r={self.lora_A[self.active_adapter].out_features}, scaling={self.scaling[self.active_adapter]}"


class ModulesToSaveWrapper(nn.Module):
    """A module trained whole (a fresh classification head): a trainable copy beside the frozen original, as PEFT."""

    def __init__(self, module: nn.Module, adapter_name: str):
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict({adapter_name: copy.deepcopy(module)})
        self.original_module.requires_grad_(False)
        self.modules_to_save[adapter_name].requires_grad_(True)
        self.active_adapter, self.disabled = adapter_name, False

    @property
    def active_module(self) -> nn.Module:
        return self.original_module if self.disabled else self.modules_to_save[self.active_adapter]

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.active_module, name)

    def forward(self, *args, **kwargs):
        return self.active_module(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------- models


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _matches(patterns, key: str) -> bool:
    """PEFT's rule: a string is a regex the whole module name must match; a list entry names the module itself or
    its last dotted parts."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return any(key == t or key.endswith(f".{t}") for t in patterns)


def _is_head(name: str, heads: list[str]) -> bool:
    """PEFT's rule for modules_to_save: the module's name ends with the entry (so DistilBERT's pre_classifier is
    one with "classifier": PEFT trains it whole, and so must we for the files to match)."""
    return bool(name) and any(name.endswith(h) for h in heads)


def _in_modules_to_save(key: str, heads: list[str]) -> bool:
    parts = key.split(".")
    return any(_is_head(".".join(parts[:i]), heads) for i in range(1, len(parts) + 1))


class LoraModel(nn.Module):
    """The wrapped model with LoRA layers put in place of its targeted linear layers (PEFT's LoraModel)."""

    prefix = "lora_"

    def __init__(self, model: nn.Module, config: LoraConfig, adapter_name: str = "default"):
        super().__init__()
        self.model = model
        self.peft_config = {adapter_name: config}
        self.active_adapter = adapter_name
        self._inject(config, adapter_name)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _targets(self, config: LoraConfig) -> list[str]:
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        targets = config.target_modules
        if targets is None:
            if model_type not in DEFAULT_TARGETS:
                raise InputError(f"LoraConfig target_modules is not set and model_type {model_type!r} has no "
                                 f"default; name the layers, e.g. target_modules='all-linear'")
            targets = config.target_modules = list(DEFAULT_TARGETS[model_type])
        linear = [name for name, m in self.model.named_modules() if _is_linear(m)]
        heads = list(config.modules_to_save or []) + TASK_HEADS.get(config.task_type, [])
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            # As PEFT: every linear layer but the output layer (lm_head) and a classification head.
            excluded = {"lm_head"} | ({"classifier", "score"} if config.task_type == "SEQ_CLS" else set())
            chosen = [n for n in linear if n not in excluded]
        else:
            chosen = [n for n in linear if _matches(targets, n)]
            entries = [targets] if isinstance(targets, str) else targets
            for entry in entries:
                pattern = entry if isinstance(targets, str) else [entry]
                hits = [n for n in linear if _matches(pattern, n)]
                unsupported = [n for n, m in self.model.named_modules()
                               if n and not _is_linear(m) and _matches(pattern, n)]
                if not hits:
                    names = sorted({n.rsplit(".", 1)[-1] for n in linear})
                    also = (f"; {', '.join(unsupported[:3])} matched but LoRA supports only linear layers"
                            if unsupported else "")
                    raise InputError(f"LoraConfig target_modules entry {entry!r} matches no linear layer of this "
                                     f"{type(self.model).__name__}{also}; its linear layers are named: "
                                     f"{', '.join(names)} (or use target_modules='all-linear')")
        if config.exclude_modules:
            chosen = [n for n in chosen if not _matches(config.exclude_modules, n)]
        chosen = [n for n in chosen if not _in_modules_to_save(n, heads)]
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            config.target_modules = sorted(chosen)  # as PEFT writes it: the layers it chose
        return chosen

    def _inject(self, config: LoraConfig, adapter_name: str) -> None:
        targets = self._targets(config)
        heads = list(config.modules_to_save or [])
        if config.task_type in TASK_HEADS:
            heads += [h for h in TASK_HEADS[config.task_type] if h not in heads]
            config.modules_to_save = heads
        for p in self.model.parameters():
            p.requires_grad_(False)
        if any(isinstance(self.model.get_submodule(n), Conv1D) for n in targets):
            config.fan_in_fan_out = True  # GPT-2's weights are (in, out): PEFT records it so
        for name in targets:
            owner, attr = _owner(self.model, name)
            setattr(owner, attr, Linear(getattr(owner, attr), adapter_name, config))
        wrapped = 0
        for name, module in list(self.model.named_modules()):
            if _is_head(name, heads) and \
                    not any(isinstance(m, ModulesToSaveWrapper) for m in _parents(self.model, name)):
                owner, attr = _owner(self.model, name)
                setattr(owner, attr, ModulesToSaveWrapper(module, adapter_name))
                wrapped += 1
        if config.modules_to_save and not wrapped and config.task_type not in TASK_HEADS:
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in self.model.named_children()})
            raise InputError(f"LoraConfig modules_to_save {config.modules_to_save} matches no module; the model's "
                             f"top-level modules are: {', '.join(names)}")
        for name, module in self.model.named_modules():
            if isinstance(module, Linear):
                module.lora_A.requires_grad_(True)
                module.lora_B.requires_grad_(True)
        if config.bias != "none":
            for name, p in self.model.named_parameters():
                owner = name.rpartition(".")[0]
                if name.rpartition(".")[2] != "bias" or any(
                        isinstance(m, ModulesToSaveWrapper) for m in _parents(self.model, name)):
                    continue
                if config.bias == "all" or _parent_is_lora(self.model, owner):
                    p.requires_grad_(True)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def _parents(model: nn.Module, name: str):
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield model.get_submodule(".".join(parts[:i]))


def _parent_is_lora(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    return bool(name) and isinstance(model.get_submodule(parent) if parent else model, Linear)


class PeftModel(nn.Module):
    """A model with a LoRA adapter: calls, attributes (config, generate, ...) and the Trainer go to the wrapped
    model; save_pretrained writes only the adapter, in PEFT's format."""

    def __init__(self, model: nn.Module, peft_config: LoraConfig, adapter_name: str = "default"):
        super().__init__()
        self.base_model = LoraModel(model, peft_config, adapter_name)
        self.active_adapter = adapter_name

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def peft_config(self) -> dict[str, LoraConfig]:
        return self.base_model.peft_config

    @property
    def active_peft_config(self) -> LoraConfig:
        return self.peft_config[self.active_adapter]

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    def forward(self, *args, **kwargs):
        return self.get_base_model()(*args, **kwargs)

    # ------------------------------------------------------------------------------------ parameters

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: "
              f"{100 * trainable / total:.4f}")

    def with_tied_weights(self, state: dict) -> dict:
        return state  # an adapter's state holds no tied tensor

    # ------------------------------------------------------------------------------------ adapter state

    def adapter_keys(self) -> dict[str, str]:
        """This model's state-dict keys that the adapter holds -> their keys in adapter_model.safetensors."""
        config, name = self.active_peft_config, self.active_adapter
        keys = {}
        for path, module in self.get_base_model().named_modules():
            full = f"base_model.model.{path}"
            if isinstance(module, Linear):
                for part in ("lora_A", "lora_B"):
                    keys[f"{full}.{part}.{name}.weight"] = f"{full}.{part}.weight"
            elif isinstance(module, ModulesToSaveWrapper):
                for k in module.modules_to_save[name].state_dict():
                    keys[f"{full}.modules_to_save.{name}.{k}"] = f"{full}.{k}"
        if config.bias != "none":
            for key, p in self.named_parameters():
                if key.endswith("bias") and p.requires_grad and ".modules_to_save." not in key:
                    keys[key] = key
        return keys

    def adapter_state_dict(self, state_dict: dict | None = None) -> dict[str, Tensor]:
        state = self.state_dict() if state_dict is None else state_dict
        return {saved: state[ours] for ours, saved in self.adapter_keys().items() if ours in state}

    def adapter_state_from_folder(self, folder) -> dict[str, Tensor]:
        """adapter_model.safetensors of `folder` as this model's state-dict entries, checked to fit: every key the
        adapter should hold, no other, each of this model's shape."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = Path(folder) / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_NAME} (adapter folders hold {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME})")
        try:
            saved = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as safetensors ({e})") from None
        ours = {v: k for k, v in self.adapter_keys().items()}
        shapes = {k: v.shape for k, v in self.state_dict().items()}
        base = getattr(self.get_base_model(), "config", None)
        here = f"{type(self.get_base_model()).__name__} ({getattr(base, 'name_or_path', None) or 'this model'})"
        trained_on = self.active_peft_config.base_model_name_or_path
        extra, missing = sorted(saved.keys() - ours.keys()), sorted(ours.keys() - saved.keys())
        wrong = [f"{k} is {list(saved[k].shape)} in the adapter, {list(shapes[ours[k]])} here"
                 for k in sorted(saved.keys() & ours.keys()) if saved[k].shape != shapes[ours[k]]]
        if extra or missing or wrong:
            detail = "; ".join(filter(None, [
                wrong and "; ".join(wrong[:3]),
                extra and f"it has {len(extra)} weight(s) this model has no place for, e.g. {extra[0]}",
                missing and f"it lacks {len(missing)} weight(s) this model's adapter has, e.g. {missing[0]}"]))
            raise CheckpointError(f"the adapter in {folder} (trained on {trained_on or 'an unnamed base model'}) "
                                  f"does not fit {here}: {detail}")
        return {ours[k]: v for k, v in saved.items()}

    def load_adapter_weights(self, folder) -> None:
        self.load_state_dict(self.adapter_state_from_folder(folder), strict=False)

    # ------------------------------------------------------------------------------------ folders

    def save_pretrained(self, save_directory, *, state_dict: dict | None = None, safe_serialization: bool = True,
                        selected_adapters: list[str] | None = None, is_main_process: bool = True, **kwargs) -> Path:
        kwargs.pop("save_function", None)  # accelerate scripts pass it; safetensors writes the file (as PEFT's)
        if kwargs:
            raise TypeError(f"save_pretrained() got argument(s) it does not implement: {', '.join(sorted(kwargs))}")
        if not safe_serialization:
            raise InputError("safe_serialization=False is not supported: tuneforge writes safetensors only")
        if selected_adapters not in (None, [self.active_adapter]):
            raise InputError(f"selected_adapters={selected_adapters}: this model has only the adapter "
                             f"{self.active_adapter!r}")
        folder = Path(save_directory)
        if not is_main_process:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.copy(self.active_peft_config)
        config.inference_mode = True
        config.save_pretrained(folder)
        save_state_dict(self.adapter_state_dict(state_dict), folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id, adapter_name: str = "default", is_trainable: bool = False,
                        config: LoraConfig | None = None, *, revision: str | None = None, token: str | None = None,
                        **kwargs) -> PeftModel:
        if kwargs:
            raise TypeError(f"PeftModel.from_pretrained() got argument(s) it does not implement: "
                            f"{', '.join(sorted(kwargs))}")
        folder = resolve_folder(model_id, revision=revision, token=token)
        config = copy.deepcopy(config) if config is not None else LoraConfig.from_pretrained(folder)
        config.inference_mode = not is_trainable
        peft_class = TASK_CLASSES.get(config.task_type, PeftModel) if cls is PeftModel else cls
        try:
            peft = peft_class(model, config, adapter_name)
        except ValueError as e:
            trained_on = config.base_model_name_or_path or "an unnamed base model"
            raise CheckpointError(f"the adapter in {folder} (trained on {trained_on}) does not fit "
                                  f"{type(model).__name__}: {e}") from None
        peft.load_adapter_weights(folder)
        if not is_trainable:
            peft.requires_grad_(False)
        return peft

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload adapter with tuneforge", revision: str | None = None) -> str:
        """Save the adapter (with a model card naming the base model) and upload it to `repo_id` in one commit."""
        import tempfile
        from ..hub import push_folder, write_model_card
        with tempfile.TemporaryDirectory(prefix="tuneforge-adapter-") as tmp:
            self.save_pretrained(tmp)
            write_model_card(tmp, repo_id=repo_id, base_model=self.active_peft_config.base_model_name_or_path,
                             adapter=True)
            return push_folder(tmp, repo_id, token=token, private=private, commit_message=commit_message,
                               revision=revision)

    # ------------------------------------------------------------------------------------ merge

    def _layers(self):
        return [m for m in self.get_base_model().modules() if isinstance(m, (Linear, ModulesToSaveWrapper))]

    def merge_adapter(self) -> None:
        for m in self._layers():
            if isinstance(m, Linear):
                m.merge()

    def unmerge_adapter(self) -> None:
        for m in self._layers():
            if isinstance(m, Linear):
                m.unmerge()

    @contextlib.contextmanager
    def disable_adapter(self):
        """The base model's own outputs inside the block."""
        layers = self._layers()
        for m in layers:
            m.disabled = True
        try:
            yield
        finally:
            for m in layers:
                m.disabled = False

    def _unload(self, merge: bool) -> nn.Module:
        model = self.get_base_model()
        for name, module in list(model.named_modules()):
            if isinstance(module, Linear):
                if merge:
                    module.merge()
                owner, attr = _owner(model, name)
                setattr(owner, attr, module.base_layer)
            elif isinstance(module, ModulesToSaveWrapper):
                owner, attr = _owner(model, name)
                setattr(owner, attr, module.modules_to_save[module.active_adapter])  # the trained head, as PEFT
        return model

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """The wrapped model with each update merged into its weight (W + s B A) and the trained heads in place:
        a plain model, saved and loaded like any other."""
        if adapter_names not in (None, [self.active_adapter]):
            raise InputError(f"adapter_names={adapter_names}: this model has only {self.active_adapter!r}")
        model = self._unload(merge=True)
        if safe_merge:
            bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise ValueError(f"merging the adapter gave non-finite weights in {', '.join(bad[:3])}")
        return model

    def unload(self) -> nn.Module:
        """The wrapped model without the LoRA layers (their updates dropped), the trained heads kept."""
        return self._unload(merge=False)


class PeftModelForSequenceClassification(PeftModel):
    pass


class PeftModelForCausalLM(PeftModel):
    pass


class PeftModelForTokenClassification(PeftModel):
    pass


class PeftModelForFeatureExtraction(PeftModel):
    pass


TASK_CLASSES = {"SEQ_CLS": PeftModelForSequenceClassification, "CAUSAL_LM": PeftModelForCausalLM,
                "TOKEN_CLS": PeftModelForTokenClassification, "FEATURE_EXTRACTION": PeftModelForFeatureExtraction}


def get_peft_model(model: nn.Module, peft_config: LoraConfig, adapter_name: str = "default", mixed: bool = False,
                   autocast_adapter_dtype: bool = True, revision: str | None = None,
                   low_cpu_mem_usage: bool = False) -> PeftModel:
    """The model with LoRA layers in place (the model itself is changed, as in PEFT) and only the adapter (and the
    task's head) trainable."""
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"get_peft_model() takes a LoraConfig, not {type(peft_config).__name__}")
    if mixed:
        raise InputError("mixed=True (several adapter types at once) is not supported")
    if not autocast_adapter_dtype:
        raise InputError("autocast_adapter_dtype=False is not supported: adapters on a half-precision base train "
                         "in float32")
    if any(isinstance(m, (Linear, ModulesToSaveWrapper)) for m in model.modules()):
        raise InputError("this model already has a LoRA adapter; merge_and_unload() it first")
    config = copy.deepcopy(peft_config)
    config.base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    if revision is not None:
        config.revision = revision
    return TASK_CLASSES.get(config.task_type, PeftModel)(model, config, adapter_name)


# ---------------------------------------------------------------------------------------------------- folders

TASK_AUTO_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM",
                     "TOKEN_CLS": "AutoModelForTokenClassification",
                     "QUESTION_ANS": "AutoModelForQuestionAnswering", None: "AutoModel",
                     "FEATURE_EXTRACTION": "AutoModel"}


def is_adapter_folder(folder) -> bool:
    return (Path(folder) / CONFIG_NAME).is_file()


def save_head_config(folder, model: PeftModel) -> None:
    """The wrapped model's config.json beside the adapter: what the base checkpoint cannot say about the trained
    head (num_labels, id2label). PEFT and the reference ignore it (they load the base from the adapter config's
    base_model_name_or_path); tuneforge's evaluate, predict and merge read the labels from it."""
    config = model.get_base_model().config
    config.architectures = [type(model.get_base_model()).__name__]
    values = {k: v for k, v in config.to_dict().items() if k != "name_or_path"}
    text = json.dumps(values, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(folder) / "config.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_adapter_folder(folder, auto_class=None, base: str | None = None, is_trainable: bool = False) -> PeftModel:
    """An adapter folder with its base model: the base from `base` or the adapter config's
    base_model_name_or_path, loaded by the task's Auto class, with the head's labels from the folder's config.json
    when it has one (as tuneforge's CLI writes it)."""
    from .. import models
    folder = Path(folder)
    config = LoraConfig.from_pretrained(folder)
    base = base or config.base_model_name_or_path
    if not base:
        raise CheckpointError(f"{folder / CONFIG_NAME} names no base_model_name_or_path: pass the base model")
    auto_class = auto_class or getattr(models, TASK_AUTO_CLASSES[config.task_type])
    overrides = {}
    if (folder / "config.json").is_file():
        head = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        overrides = {k: head[k] for k in ("id2label", "label2id", "problem_type") if k in head}
        if "id2label" in overrides:
            overrides["id2label"] = {int(k): v for k, v in overrides["id2label"].items()}
            overrides["num_labels"] = len(overrides["id2label"])
    try:
        model = auto_class.from_pretrained(base, ignore_mismatched_sizes=True, **overrides) if overrides \
            else auto_class.from_pretrained(base)
    except CheckpointError as e:
        raise CheckpointError(f"the base model of the adapter {folder} could not be loaded: {e}") from None
    return PeftModel.from_pretrained(model, folder, is_trainable=is_trainable)
