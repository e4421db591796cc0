"""PreTrainedModel: what every model family shares, reading and writing checkpoint folders (through checkpoint_io
and gguf_io, which know nothing of models) and asking the family's spec (registry.py) what is family-specific.
Nothing numerical lives here."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..checkpoint_io import (atomic_write, load_state_dict, match_keys, pop_hub_options, read_config_dict, rename_keys,
                             resolve_folder, save_weights, warn_about_keys)
from .layers import init_weights

logger = logging.getLogger("tuneforge")


def read_checkpoint(folder: Path, gguf_file: str | None = None) -> tuple[dict, dict | None]:
    """(config.json values, the tensors or None if they come later). A GGUF file holds both, read at once."""
    if gguf_file is None:
        return read_config_dict(folder), None
    from ..gguf_io import read_gguf
    checkpoint = read_gguf(Path(folder) / gguf_file)
    return checkpoint.config, checkpoint.state_dict


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # the same maths here: tuneforge's attention serves both
DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "half": torch.float16, "float64": torch.float64}


def pop_load_options(kwargs: dict, caller: str = "from_pretrained") -> dict:
    """The reference's from_pretrained keywords about the loaded model, taken out of `kwargs` and checked:
    dtype (or torch_dtype: a torch.dtype, its name, or "auto" for the checkpoint's, the default), device_map ("cpu",
    "auto", a device, or {"": device}), low_cpu_mem_usage (always so: the model is built on the meta device and the
    weights loaded into it), attn_implementation ("sdpa" or "eager"); plus the hub's (pop_hub_options)."""
    options = {"hub": pop_hub_options(kwargs, caller)}
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(dtype, str) and dtype != "auto":
        if dtype.removeprefix("torch.") not in DTYPES:
            raise InputError(f"{caller}(dtype={dtype!r}): not a dtype; use one of {', '.join(DTYPES)} or 'auto'")
        dtype = DTYPES[dtype.removeprefix("torch.")]
    elif dtype is not None and dtype != "auto" and not isinstance(dtype, torch.dtype):
        raise InputError(f"{caller}(dtype={dtype!r}): not a torch.dtype, a dtype name or 'auto'")
    options["dtype"] = "auto" if dtype is None else dtype  # the checkpoint's dtype: the reference's default since 5.0
    device_map = kwargs.pop("device_map", None)
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise InputError(f"{caller}(device_map={device_map!r}): a model split over several devices is not "
                             "supported; give one device")
        device_map = devices.pop()
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    elif device_map in ("balanced", "balanced_low_0", "sequential"):
        raise InputError(f"{caller}(device_map={device_map!r}): splitting a model over devices is not supported; "
                         "use 'auto', 'cpu' or a device")
    try:
        options["device"] = None if device_map is None else torch.device(device_map)
    except (RuntimeError, TypeError):
        raise InputError(f"{caller}(device_map={device_map!r}): not a device") from None
    kwargs.pop("low_cpu_mem_usage", None)  # always true (see above)
    options["variant"] = kwargs.pop("variant", None)  # model.<variant>.safetensors (save_pretrained(variant=))
    attn = kwargs.pop("attn_implementation", None)
    if attn is not None and attn not in ATTENTION_IMPLEMENTATIONS:
        raise InputError(f"{caller}(attn_implementation={attn!r}) is not supported: tuneforge computes attention "
                         f"its own way, on real tokens only (varlen kernels on CUDA); use one of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
    return options


def _apply_load_options(model: nn.Module, options: dict, state: dict) -> nn.Module:
    dtype = options.get("dtype")
    if dtype == "auto":  # the config's dtype, else the weights'
        named = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
        dtype = DTYPES.get(str(named).removeprefix("torch."), None) if named is not None else None
        if dtype is None:
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    if dtype is not None:
        model.to(dtype)
    if options.get("device") is not None:
        model.to(options["device"])
    return model


class PreTrainedModel(nn.Module):
    base_model_prefix = ""
    # Parameters that are the same tensor as another when config.tie_word_embeddings: ours -> the one it shares.
    tied_weights: dict[str, str] = {}
    # Other prefixes the family's checkpoints keep this model's backbone under (another head's name for it): such
    # keys load as base_model_prefix's when the checkpoint has none of those.
    backbone_aliases: tuple[str, ...] = ()

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

    def _match_tied(self, state: dict, source: str) -> None:
        """A tied pair in a checkpoint: saved once (either name) loads into the shared tensor; saved twice with
        different values, they stay two tensors, as the reference decides."""
        for ours, shared in self.tied_weights.items():
            if not getattr(self.config, "tie_word_embeddings", False):
                return
            if ours in state and shared in state and not torch.equal(state[ours], state[shared]):
                logger.warning(f"{source} holds {ours} and {shared} with different values: they are not tied")
                self.config.tie_word_embeddings = False
            elif ours in state and shared not in state:
                state[shared] = state.pop(ours)

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
        """Load a checkpoint folder (or hub id). Keywords the reference takes about loading (cache_dir, dtype,
        device_map, ...: pop_load_options) are honoured; the others override config values."""
        options = pop_load_options(config_overrides, f"{cls.__name__}.from_pretrained")
        folder = resolve_folder(name_or_path, revision=revision, token=token, **options["hub"])
        values, state = read_checkpoint(folder, gguf_file)
        return cls._from_checkpoint(name_or_path, folder, values, state, config, config_overrides,
                                    ignore_mismatched_sizes, options)

    @classmethod
    def _from_checkpoint(cls, name_or_path, folder: Path, values: dict, state: dict | None, config,
                         config_overrides: dict, ignore_mismatched_sizes: bool, options: dict | None = None):
        from .registry import config_from_values
        if config is None:
            config = config_from_values(values, str(Path(folder) / "config.json"), **config_overrides)
        elif config_overrides:
            raise TypeError(f"pass either config= or config overrides, not both ({', '.join(config_overrides)})")
        if state is None:
            state = load_state_dict(folder, (options or {}).get("variant"))
        with torch.device("meta"):
            model = cls(config)
        model._load(state, str(name_or_path), ignore_mismatched_sizes)
        if hasattr(cls, "generate"):
            from .generation import GenerationConfig
            model.generation_config = GenerationConfig.for_model(folder, config)
        config.name_or_path = str(name_or_path)
        return _apply_load_options(model, options or {}, state).eval()

    def _load(self, state: dict, source: str, ignore_mismatched_sizes: bool) -> dict[str, list]:
        """Strict load of the renamed checkpoint into this model, built on the meta device; what the checkpoint
        lacks is initialised fresh. Returns the key report and logs it as one warning."""
        spec = self.spec
        expected = {k: v.shape for k, v in self.state_dict().items()}
        prefix = self.base_model_prefix + "."
        for alias in self.backbone_aliases:
            if not any(k.startswith(prefix) for k in state):
                state = {prefix + k[len(alias) + 1:] if k.startswith(alias + ".") else k: v for k, v in state.items()}
        state = rename_keys(state, set(expected), self.base_model_prefix, spec.renames, spec.ignored_keys)
        self._match_tied(state, source)
        report = match_keys(state, expected, source=source, ignore_mismatched_sizes=ignore_mismatched_sizes)
        report["missing"] = [k for k in report["missing"] if k not in self._tied_keys()]
        # The checkpoint's tensors become the parameters (assign): the weights are never in memory twice. Only
        # what the checkpoint lacks is allocated, and initialised fresh.
        self._materialize(skip=set(state) | self._tied_keys())
        fresh = {k.rsplit(".", 1)[0] for k in report["missing"]} | {k.rsplit(".", 1)[0] for k, _, _ in
                                                                    report["mismatched"]}
        for name, module in self.named_modules():
            if name in fresh:
                init_weights(module, getattr(self.config, "initializer_range", 0.02))
        dtypes = {k: v.dtype for k, v in self.state_dict().items()}
        for key, tensor in state.items():  # the model's dtype, as a copying load gives
            state[key] = tensor.to(dtypes[key]).contiguous() if tensor.is_floating_point() else tensor.contiguous()
        self.load_state_dict(state, strict=False, assign=True)
        self.tie_weights()
        for module in self.modules():  # computed buffers (rotary frequencies) are in no checkpoint
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        warn_about_keys(type(self).__name__, source, report)
        return report

    def _materialize(self, skip: set[str]) -> None:
        """Allocate (uninitialised, on the CPU) every parameter and buffer still on the meta device, but `skip`."""
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_meta and prefix + name not in skip:
                    module._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                                                  requires_grad=param.requires_grad)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta and prefix + name not in skip:
                    module._buffers[name] = torch.empty_like(buffer, device="cpu")

    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict: dict | None = None,
                        push_to_hub: bool = False, max_shard_size: int | str = "50GB", variant: str | None = None,
                        token: str | None = None, save_peft_format: bool = True, save_original_format: bool = True,
                        distributed_checkpoint: bool = False, *, repo_id: str | None = None,
                        safe_serialization: bool = True, **kwargs) -> Path:
        """config.json, the weights (model.safetensors, or shards of max_shard_size with their index; variant names
        them model.<variant>.safetensors), generation_config.json for a generating model; then push_to_hub if asked
        (kwargs: commit_message, private). Only the process with is_main_process=True writes. As in the reference,
        `save_function` (passed by accelerate scripts) is taken and not called: safetensors writes the files."""
        kwargs.pop("save_function", None)
        hub = {k: kwargs.pop(k) for k in ("commit_message", "private") if k in kwargs}
        if kwargs:
            raise TypeError(f"save_pretrained() got argument(s) it does not implement: {', '.join(sorted(kwargs))}")
        if not safe_serialization:
            raise InputError("safe_serialization=False is not supported: tuneforge writes safetensors only")
        for name, value, default in (("save_original_format", save_original_format, True),
                                     ("distributed_checkpoint", distributed_checkpoint, False)):
            if value != default:
                raise InputError(f"save_pretrained({name}={value!r}) is not supported; tuneforge writes the "
                                 "checkpoint's own key names, in one consolidated copy")
        # save_peft_format only concerns the reference's PEFT-integrated models: tuneforge's LoRA models save
        # adapters in PEFT's format themselves (tuneforge.peft).
        folder = Path(save_directory)
        if not is_main_process:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        config = {k: v for k, v in self.config.to_dict().items() if k not in ("name_or_path", "torch_dtype")}
        floating = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        if floating is not None:  # the weights' dtype as saved, which dtype="auto" loads them in (as the reference)
            config["dtype"] = str(floating).removeprefix("torch.")
        atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
        state = self.state_dict() if state_dict is None else state_dict
        state = {k: v for k, v in state.items() if k not in self._tied_keys()}  # the reference saves one copy
        save_weights(state, folder, max_shard_size, variant)
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.save_pretrained(folder)
        if push_to_hub:
            self.push_to_hub(repo_id or folder.name, token=token, **hub)
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
            raise InputError("gradient_checkpointing_kwargs={'use_reentrant': True} is not supported "
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
