"""The guide's Keras callbacks: KerasMetricCallback (compute_metrics on an eval set after each epoch, into the logs)
and PushToHubCallback (save the model as a normal model folder and upload it)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..data import store_rows
from .backend import load_keras

keras = load_keras()
logger = logging.getLogger("tuneforge")


class KerasMetricCallback(keras.callbacks.Callback):
    """After each epoch, predicts on eval_dataset (from prepare_tf_dataset, shuffle=False) and adds
    metric_fn((predictions, labels))'s dict to the epoch's logs, where EarlyStopping or ModelCheckpoint see it."""

    def __init__(self, metric_fn, eval_dataset, output_cols=None, label_cols=None, batch_size=None,
                 predict_with_generate: bool = False, use_xla_generation: bool = False, generate_kwargs=None):
        super().__init__()
        if predict_with_generate or use_xla_generation or generate_kwargs:
            raise InputError("KerasMetricCallback(predict_with_generate=...) is not implemented: it computes "
                             "metrics on the logits")
        if batch_size is not None:
            raise InputError("KerasMetricCallback(batch_size=...): the eval_dataset's own batches are used (set "
                             "the batch size in prepare_tf_dataset)")
        if label_cols is not None and list(label_cols if isinstance(label_cols, (list, tuple)) else [label_cols]) \
                != ["labels"]:
            raise InputError(f"label_cols={label_cols!r}: the dataset's labels are its 'labels' (prepare_tf_dataset "
                             "renames 'label' and 'label_ids' to it)")
        self.metric_fn, self.eval_dataset = metric_fn, eval_dataset
        self.output_cols = [output_cols] if isinstance(output_cols, str) else output_cols

    def on_epoch_end(self, epoch, logs=None):
        predictions = labels = None
        count = sum(len(b) for b in getattr(self.eval_dataset, "batches", [])) or None
        start = 0
        for i in range(len(self.eval_dataset)):
            batch = self.eval_dataset[i]
            if len(batch) < 2:
                raise InputError("KerasMetricCallback: the eval_dataset has no labels")
            x, y = batch[0], batch[1]
            outputs = self.model.predict_on_batch(x)
            cols = self.output_cols or ["logits"]
            missing = [c for c in cols if c not in outputs]
            if missing:
                raise KeyError(f"output_cols {missing} are not in the model's outputs ({', '.join(outputs)})")
            values = np.asarray(outputs[cols[0]]) if len(cols) == 1 else tuple(np.asarray(outputs[c]) for c in cols)
            rows = list(range(start, start + len(y)))
            total = count or start + len(y)
            if isinstance(values, tuple):
                predictions = values if predictions is None else tuple(np.concatenate([a, b]) for a, b in
                                                                       zip(predictions, values))
            else:
                predictions = store_rows(predictions, rows, values, max(total, start + len(y)))
            labels = store_rows(labels, rows, np.asarray(y), max(total, start + len(y)))
            start += len(y)
        if not isinstance(predictions, tuple):
            predictions = predictions[:start]
        metrics = self.metric_fn((predictions, labels[:start]))
        if not isinstance(metrics, dict):
            raise TypeError(f"metric_fn returned {type(metrics).__name__}; it must return a dict of metric values")
        if logs is not None:
            logs.update({k: float(v) if np.ndim(v) == 0 else v for k, v in metrics.items()})


class PushToHubCallback(keras.callbacks.Callback):
    """Saves the model (config.json + model.safetensors) and the tokenizer to output_dir and uploads the folder to
    hub_model_id (default: output_dir's name): after every epoch (save_strategy="epoch") or every save_steps
    batches ("steps"), and at the end of training. checkpoint=True also saves the model with its optimizer state as
    output_dir/checkpoint/model.keras (uploaded too; keras.saving.load_model reads it back)."""

    def __init__(self, output_dir, save_strategy: str = "epoch", save_steps: int | None = None, tokenizer=None,
                 hub_model_id: str | None = None, hub_token: str | None = None, checkpoint: bool = False,
                 **model_card_args):
        super().__init__()
        if save_strategy not in ("epoch", "steps", "no"):
            raise InputError(f"save_strategy={save_strategy!r}: it must be 'epoch', 'steps' or 'no'")
        if save_strategy == "steps" and not (isinstance(save_steps, int) and save_steps > 0):
            raise InputError(f"save_strategy='steps' needs save_steps, a positive number of batches (got {save_steps!r})")
        unknown = sorted(set(model_card_args) - {"finetuned_from", "dataset"})
        if unknown:
            raise TypeError(f"PushToHubCallback(): model card argument(s) {', '.join(unknown)} are not implemented "
                            "(the card takes finetuned_from and dataset)")
        self.output_dir = Path(output_dir)
        self.save_strategy, self.save_steps = save_strategy, save_steps
        self.tokenizer, self.hub_token, self.checkpoint = tokenizer, hub_token, checkpoint
        self.repo_id = hub_model_id or self.output_dir.resolve().name
        self.card = model_card_args
        self.steps = 0
        self.history: list[dict] = []

    def _push(self, message: str) -> str:
        from ..hub import push_folder, write_model_card
        self.model.save_pretrained(self.output_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(self.output_dir)
        if self.checkpoint:
            (self.output_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            self.model.save(self.output_dir / "checkpoint" / "model.keras")
        config = self.model.config
        dataset = self.card.get("dataset")
        write_model_card(self.output_dir, repo_id=self.repo_id,
                         base_model=self.card.get("finetuned_from") or getattr(config, "name_or_path", None),
                         dataset=dataset, log_history=self.history, id2label=getattr(config, "id2label", None))
        return push_folder(self.output_dir, self.repo_id, token=self.hub_token, commit_message=message)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.save_strategy == "steps" and self.steps % self.save_steps == 0:
            self._push(f"Training in progress steps {self.steps}")

    def on_epoch_end(self, epoch, logs=None):
        # Evaluation results for the card: the reference's names ("eval_*") for Keras' "val_*" logs.
        self.history.append({"epoch": epoch + 1, "step": self.steps,
                             **{("eval_" + k[4:] if k.startswith("val_") else k): v for k, v in (logs or {}).items()
                                if k.startswith("val_")}})
        if self.save_strategy == "epoch":
            self._push(f"Training in progress epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._push("End of training")
