"""The Keras models: a keras.Model over a tuneforge torch model, whose Keras variables are the torch parameters.

No second implementation of any model: `call` runs the torch model (packed, never computing on padding), the
default loss is the torch model's own (models/losses.py), and `train_step` is Keras' torch train step with two
changes that make it as fast as tuneforge's Trainer step: Keras' Adam/AdamW update runs in torch's fused kernel
(optim.py), and on CPU the word embedding's update touches only the rows that ever had a gradient.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from ..errors import InputError
from ..models import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from ..models.registry import config_from_values, model_class
from .backend import load_keras
from .optim import EmbeddingRows, KerasAdamStep, fused_reason

keras = load_keras()
from keras.src.backend.torch.core import Variable as _TorchVariable  # noqa: E402  (after the backend is set)
from keras.src.trainers.data_adapters import data_adapter_utils  # noqa: E402

TORCH_AUTO = {"base": AutoModel, "sequence_classification": AutoModelForSequenceClassification,
              "causal_lm": AutoModelForCausalLM}


class ParameterVariable(_TorchVariable):
    """A Keras variable that is a torch parameter: its value is the nn.Parameter itself, and `trainable` is the
    parameter's requires_grad, so that freezing through Keras or through torch is seen by both."""

    @property
    def trainable(self) -> bool:
        return self._value.requires_grad

    @trainable.setter
    def trainable(self, value) -> None:
        self._value.requires_grad_(bool(value))


@keras.saving.register_keras_serializable(package="tuneforge")
class TFPreTrainedModel(keras.Model):
    """A tuneforge model as a Keras 3 model (torch backend). Build it with a TFAutoModel* class's from_pretrained;
    `model.torch_model` is the torch model, sharing every parameter."""

    def __init__(self, torch_model: torch.nn.Module | None = None, *, task: str = "sequence_classification",
                 config: dict | None = None, **kwargs):
        policy = kwargs.get("dtype") or keras.config.dtype_policy()
        policy = getattr(policy, "name", policy)
        if policy != "float32":
            raise InputError(f"dtype policy {policy!r}: tuneforge's Keras models compute in the torch model's own "
                             "dtype (float32); call keras.config.set_dtype_policy('float32') (or pass no dtype)")
        super().__init__(**kwargs)
        if torch_model is None:  # from a .keras file: the architecture from its config, the weights loaded after
            values = {k: v for k, v in config.items() if k != "name_or_path"}
            torch_model = model_class(values["model_type"], task, "the .keras config").from_config(
                config_from_values(values, "the .keras config"))
        from keras.src.backend.torch.core import get_device
        # Registered as this Module's child (not wrapped in Keras' TorchModuleWrapper: its config pickles the module),
        # so that parameters(), zero_grad() and to() reach it.
        torch.nn.Module.__setattr__(self, "torch_model", torch_model.to(get_device()))
        self.task = task
        self._inputs = set(inspect.signature(torch_model.forward).parameters) - {"labels"}
        with keras.name_scope(self.name, caller=self):
            for name, param in torch_model.named_parameters():
                self._track_variable(ParameterVariable(param, name=name, trainable=param.requires_grad,
                                                       autocast=False))
        self.built = True
        self._adam_step: KerasAdamStep | None = None
        self._embedding_rows_ok = True

    # Keras' torch layer collects its variables into a ParameterDict keyed by path, which cannot hold dotted names;
    # here the torch model already holds them, as its parameters.
    def _track_variables(self):
        pass

    def _post_track_variable(self, variable):
        pass

    def _post_untrack_variable(self, variable):
        pass

    @property
    def config(self):
        return self.torch_model.config

    # ---------------------------------------------------------------------------------------------- forward

    def call(self, inputs, training=None):
        """inputs: a dict of the torch model's inputs (input_ids, attention_mask, ...), or the input ids alone; with
        "labels" among them the output has the loss too. training=None is inference (no dropout)."""
        if not isinstance(inputs, Mapping):
            inputs = {"input_ids": inputs}
        unknown = sorted(set(inputs) - self._inputs - {"labels"})
        if unknown:
            raise InputError(f"inputs {', '.join(unknown)} are not taken by {type(self.torch_model).__name__} "
                             f"(it takes {', '.join(sorted(self._inputs))}, and labels)")
        if inputs["input_ids"].is_meta:  # Keras tracing output shapes: the packed model needs real lengths
            return self._output_spec(inputs["input_ids"])
        if self.torch_model.training != bool(training):
            self.torch_model.train(bool(training))
        outputs = self.torch_model(**inputs)
        return dict(outputs)

    def _output_spec(self, input_ids: torch.Tensor) -> dict:
        batch, width = input_ids.shape[:2]
        c = self.config
        meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
        if self.task == "sequence_classification":
            return {"logits": meta(batch, c.num_labels)}
        if self.task == "causal_lm":
            return {"logits": meta(batch, width, c.vocab_size)}
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd")
        spec = {"last_hidden_state": meta(batch, width, hidden)}
        if getattr(self.torch_model, "pooler", None) is not None:
            spec["pooler_output"] = meta(batch, hidden)
        return spec

    # ---------------------------------------------------------------------------------------------- compile

    def compile(self, optimizer="rmsprop", loss=None, *args, jit_compile="auto", **kwargs):
        """Keras' compile. With no loss the model's own is used: cross-entropy, BCE for multi-label, MSE for
        regression (by config.problem_type, as the torch model's labels= loss); language models' next-token loss."""
        if jit_compile is True:
            raise InputError("jit_compile=True is not supported: tuneforge's packed forward has shapes that depend on "
                             "each batch's lengths, so torch.compile would retrace or break at every batch; it is "
                             "already free of padding compute. Leave jit_compile at its default")
        super().compile(optimizer, loss, *args, jit_compile=False, **kwargs)
        reason = fused_reason(self.optimizer)
        self._adam_step = KerasAdamStep(self.optimizer) if reason is None else None

    def compile_from_config(self, config) -> None:
        """Compile settings from a .keras file (Keras skips an overridden compile(); ours takes its arguments)."""
        from keras.src.saving import serialization_lib
        self.compile(**serialization_lib.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)  # its variables, for the saved ones to load into

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._compile_loss is not None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        if self.task == "base":
            raise InputError("a base model has no loss of its own: pass loss= to compile()")
        if y is None:
            raise InputError("no labels: the dataset gives no y (prepare_tf_dataset keeps a 'label' or 'labels' "
                             "column), and compile() was given no loss")
        return self._default_loss(y_pred, y, sample_weight)

    def _default_loss(self, y_pred: dict, y, sample_weight) -> torch.Tensor:
        if self.task == "causal_lm":
            if sample_weight is not None:
                raise InputError("sample_weight and class_weight are not supported with a language model's own "
                                 "loss (a mean over labelled tokens); weight tokens with -100 labels instead")
            return y_pred["loss"]
        logits = y_pred["logits"]
        if sample_weight is None and "loss" in y_pred:
            return y_pred["loss"]
        from ..models.losses import sequence_classification_loss
        per_example = sequence_classification_loss(logits, torch.as_tensor(y, device=logits.device), self.config,
                                                   reduction="none")  # (B,)
        if sample_weight is None:
            return per_example.mean()
        weights = torch.as_tensor(sample_weight, dtype=per_example.dtype, device=per_example.device).reshape(-1)
        return (per_example * weights).sum() / len(per_example)  # Keras' "sum_over_batch_size"

    # -------------------------------------------------------------------------------------------------- steps

    def _split(self, data):
        """(x, y, sample_weight), with labels given inside x moved to y."""
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        if isinstance(x, Mapping) and "labels" in x:
            x = dict(x)
            labels = x.pop("labels")
            y = labels if y is None else y
        return x, y, sample_weight

    def _forward(self, x, y, training: bool):
        """The model's outputs; with its own loss and labels, the loss too, from the same forward."""
        if y is not None:  # here, not in call(): Keras wraps what call() raises in a paragraph of its own
            check_labels(torch.as_tensor(y), self.config, self.task)
        if self._compile_loss is None and y is not None and self.task != "base":
            x = {**(x if isinstance(x, Mapping) else {"input_ids": x}), "labels": y}
        return self(x, training=training)

    def train_step(self, data):
        x, y, sample_weight = self._split(data)
        trainable = self.trainable_weights
        embedding = self._sparse_embedding(trainable)
        if embedding is not None:
            embedding.sparse = True  # gradients of the rows the batch reads only
        try:
            y_pred = self._forward(x, y, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(loss, sample_weight=_batch_size(x))
            loss = self.optimizer.scale_loss(loss)
            for v in trainable:
                v.value.grad = None
            if trainable:
                loss.backward()
        finally:
            if embedding is not None:
                embedding.sparse = False
        if trainable:
            grads = [v.value.grad for v in trainable]
            if self._adam_step is not None:
                self._adam_step.apply(grads, trainable)
            else:
                self.optimizer.apply(grads, trainable)
            for v in trainable:
                v.value.grad = None
        else:
            import warnings
            warnings.warn("The model does not have any trainable weights.")
        return self.compute_metrics(x, y, _metric_view(y_pred), sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = self._split(data)
        y_pred = self._forward(x, y, training=False)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        self._loss_tracker.update_state(loss, sample_weight=_batch_size(x))
        return self.compute_metrics(x, y, _metric_view(y_pred), sample_weight=sample_weight)

    def predict_step(self, data):
        x, _, _ = self._split(data)
        return self(x, training=False)

    def _sparse_embedding(self, trainable) -> torch.nn.Embedding | None:
        """The word embedding, when its update can run on the touched rows only (CPU, fused step, exact)."""
        step = self._adam_step
        if step is None or not self._embedding_rows_ok:
            return None
        getter = getattr(self.torch_model, "get_input_embeddings", None)
        embedding = getter() if getter is not None else None
        if not isinstance(embedding, torch.nn.Embedding) or embedding.weight.device.type != "cpu" \
                or embedding.max_norm is not None or not embedding.weight.requires_grad:
            return None
        if sum(p is embedding.weight for _, p in self.torch_model.named_parameters(remove_duplicate=False)) > 1:
            self._embedding_rows_ok = False  # tied to a language-model head: every row gets a gradient
            return None
        variable = next((v for v in trainable if v.value is embedding.weight), None)
        if variable is None or not step.sparse_rows_exact(variable):
            return None
        opt = self.optimizer
        if not opt.built:
            with keras.name_scope(opt.name, caller=opt):
                opt.build(trainable)
        if step.rows is None or step.rows.variable is not variable:
            i = opt._get_variable_index(variable)
            step.rows = EmbeddingRows(variable, opt._momentums[i], opt._velocities[i])
        return None if step.rows.dense else embedding

    def fit(self, *args, **kwargs):
        """Keras' fit. A prepare_tf_dataset dataset shuffles itself (from its seed, every epoch), as the reference's
        tf.data does, where Keras ignores fit's shuffle; here too, rather than Keras reordering its batches again."""
        from ..training.trainer import reuse_freed_memory
        from .data import KerasDataset
        if isinstance(args[0] if args else kwargs.get("x"), KerasDataset):
            kwargs["shuffle"] = False
        if self._adam_step is not None:
            self._adam_step.rows = None  # re-read the touched rows from the moments: they may have been loaded
        with reuse_freed_memory():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        from ..training.trainer import reuse_freed_memory
        with reuse_freed_memory():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        from ..training.trainer import reuse_freed_memory
        with reuse_freed_memory():
            return super().predict(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------- data in

    def prepare_tf_dataset(self, dataset, batch_size: int = 8, shuffle: bool = True, tokenizer=None,
                           collate_fn=None, collate_fn_args=None, drop_remainder=None, prefetch: bool = True,
                           seed: int | None = None):
        """The reference's prepare_tf_dataset as a Keras PyDataset (see data.py)."""
        from .data import KerasDataset
        return KerasDataset(dataset, self, batch_size=batch_size, shuffle=shuffle, tokenizer=tokenizer,
                            collate_fn=collate_fn, collate_fn_args=collate_fn_args, drop_remainder=drop_remainder,
                            prefetch=prefetch, seed=seed)

    # ------------------------------------------------------------------------------------------- saving

    def get_config(self) -> dict:
        """JSON only: the task and the model's config.json values (safe mode loads it; no pickled module)."""
        return {"name": self.name, "trainable": self.trainable, "task": self.task,
                "config": {k: v for k, v in self.config.to_dict().items() if k != "name_or_path"},
                "frozen": [n for n, p in self.torch_model.named_parameters() if not p.requires_grad]}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        trainable, frozen = config.pop("trainable", True), set(config.pop("frozen", ()))
        model = cls(task=config.pop("task"), config=config.pop("config"), **config)
        for name, param in model.torch_model.named_parameters():
            param.requires_grad_(name not in frozen)
        model.trainable = trainable
        return model

    def save_own_variables(self, store) -> None:
        """The weights by parameter name (the torch state dict; a tied tensor once), not by position."""
        for name, value in self._state_to_save().items():
            store[name] = value.detach().cpu().numpy()

    def load_own_variables(self, store) -> None:
        state = {(k.decode() if isinstance(k, bytes) else k): torch.as_tensor(store[k][...] if hasattr(
            store[k], "shape") else store[k]) for k in store.keys()}
        expected = set(self._state_to_save())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise InputError(f"the saved weights do not match {type(self.torch_model).__name__}: missing "
                             f"{', '.join(missing[:5]) or 'none'}; unexpected {', '.join(unexpected[:5]) or 'none'}")
        with_tied = getattr(self.torch_model, "with_tied_weights", lambda s: s)
        self.torch_model.load_state_dict(with_tied(state), strict=True)

    def _state_to_save(self) -> dict:
        tied = getattr(self.torch_model, "_tied_keys", lambda: set())()
        return {k: v for k, v in self.torch_model.state_dict().items() if k not in tied}

    def save_pretrained(self, folder, **kwargs):
        """A normal model folder (config.json + model.safetensors), read by tuneforge and by the reference."""
        return self.torch_model.save_pretrained(folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        return self.torch_model.push_to_hub(repo_id, **kwargs)


def check_labels(labels, config, task: str) -> None:
    """Class ids outside [0, num_labels) fail here, in one line, not as an index error in the loss."""
    if task != "sequence_classification" or labels.dtype.is_floating_point or config.num_labels < 2 \
            or config.problem_type in ("regression", "multi_label_classification"):
        return
    bad = labels[(labels < 0) | (labels >= config.num_labels)]
    if len(bad):
        raise InputError(f"label {int(bad[0])} is outside [0, {config.num_labels}) for a model with "
                         f"num_labels={config.num_labels}; map the labels to ids first, or load the model with "
                         "from_pretrained(..., num_labels=N)")


def _batch_size(x) -> int:
    first = next(iter(x.values())) if isinstance(x, Mapping) else x
    return first.shape[0]


def _metric_view(y_pred: dict):
    """What compiled metrics see: the logits (the loss is no prediction)."""
    return {k: v for k, v in y_pred.items() if k != "loss"}


class _TFAutoModelBase:
    _task = ""

    @classmethod
    def from_pretrained(cls, name_or_path, *args, **kwargs) -> TFPreTrainedModel:
        """As the torch Auto class's from_pretrained (same arguments), wrapped for Keras."""
        if kwargs.pop("from_pt", None) is False:
            raise InputError("from_pt=False: tuneforge reads PyTorch/safetensors checkpoints only")
        torch_model = TORCH_AUTO[cls._task].from_pretrained(name_or_path, *args, **kwargs)
        return TFPreTrainedModel(torch_model, task=cls._task, name=_keras_name(torch_model))

    @classmethod
    def from_config(cls, config) -> TFPreTrainedModel:
        torch_model = TORCH_AUTO[cls._task].from_config(config)
        return TFPreTrainedModel(torch_model, task=cls._task, name=_keras_name(torch_model))


def _keras_name(torch_model) -> str:
    import re
    return "tf_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(torch_model).__name__).lower()


class TFAutoModel(_TFAutoModelBase):
    _task = "base"


class TFAutoModelForSequenceClassification(_TFAutoModelBase):
    _task = "sequence_classification"


class TFAutoModelForCausalLM(_TFAutoModelBase):
    _task = "causal_lm"


__all__ = ["TFAutoModel", "TFAutoModelForCausalLM", "TFAutoModelForSequenceClassification", "TFPreTrainedModel",
           "ParameterVariable"]
