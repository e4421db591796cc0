"""prepare_tf_dataset as a Keras PyDataset: the reference's behaviour (the model's input and label columns only,
dynamic padding with the tokenizer, drop_remainder defaulting to shuffle, a new order every epoch from a seed)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..data import LABEL_KEYS, DataCollatorWithPadding, column_names, column_values, default_data_collator, \
    shuffled_batches
from .backend import load_keras

keras = load_keras()


class KerasDataset(keras.utils.PyDataset):
    """Batches of (features, labels) for fit/evaluate/predict: features a dict of the model's inputs, labels the
    'labels' column after collation (absent when the dataset has none). Epoch e's order is a pure function of
    (seed, e), as the Trainer's."""

    def __init__(self, dataset, model, batch_size: int = 8, shuffle: bool = True, tokenizer=None, collate_fn=None,
                 collate_fn_args=None, drop_remainder=None, prefetch: bool = True, seed: int | None = None):
        # prefetch is the reference's tf.data hint; a batch is collated on demand here (well under a millisecond
        # next to a step): Keras' worker threads (workers > 1) would race the per-epoch reshuffle.
        super().__init__(workers=1, use_multiprocessing=False)
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"prepare_tf_dataset() takes a datasets.Dataset (or a list of dicts), not "
                            f"{type(dataset).__name__}")
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: it must be at least 1")
        if len(dataset) == 0:
            raise InputError("prepare_tf_dataset(): the dataset is empty")
        collate_fn_args = dict(collate_fn_args or {})
        if collate_fn is None:
            collate_fn = (DataCollatorWithPadding(tokenizer, **collate_fn_args) if tokenizer is not None
                          else default_data_collator)
            collate_fn_args = {}
        self.collate_fn, self.collate_fn_args = collate_fn, collate_fn_args
        inputs = model._inputs
        columns = column_names(dataset)
        self.columns = [c for c in columns if c in inputs or c in LABEL_KEYS]
        if not any(c in inputs for c in self.columns):
            raise InputError(f"the dataset has no column the model takes (it takes {', '.join(sorted(inputs))}; "
                             f"the dataset has {', '.join(columns)}); tokenize it first, e.g. "
                             "dataset.map(tokenize, batched=True)")
        self.inputs = inputs
        label = next((c for c in LABEL_KEYS if c in self.columns), None)
        if label is not None:
            _check_label_column(dataset, label, model)
        self.dataset = dataset.select_columns(self.columns) if hasattr(dataset, "select_columns") else dataset
        self.batch_size, self.shuffle = batch_size, shuffle
        self.drop_remainder = shuffle if drop_remainder is None else drop_remainder
        self.seed = int(np.random.randint(2**31)) if seed is None else seed  # keras.utils.set_random_seed fixes it
        self.epoch = 0
        self._read_past_first = False
        self._order()

    def _order(self) -> None:
        n = len(self.dataset)
        if self.shuffle:
            self.batches = shuffled_batches(n, self.batch_size, self.seed, self.epoch, self.drop_remainder)
        else:
            self.batches = [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
            if self.drop_remainder and len(self.batches[-1]) < self.batch_size:
                self.batches.pop()
        if not self.batches:
            raise InputError(f"prepare_tf_dataset(): {n} rows make no full batch of {self.batch_size} with "
                             "drop_remainder=True")

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        self._read_past_first |= index > 0
        indices = self.batches[index]
        if hasattr(self.dataset, "select_columns"):  # one Arrow read for the batch
            block = self.dataset[indices]
            features = [{k: block[k][j] for k in self.columns} for j in range(len(indices))]
        else:
            features = [{k: self.dataset[i][k] for k in self.columns} for i in indices]
        batch = self.collate_fn(features, **self.collate_fn_args)
        if not isinstance(batch, Mapping):
            raise TypeError(f"collate_fn returned {type(batch).__name__}; it must return a dict of arrays")
        x = {k: _array(v) for k, v in batch.items() if k in self.inputs}
        labels = [k for k in batch if k in LABEL_KEYS]
        if not labels:
            return (x,)
        return x, _array(batch[labels[0]])

    def on_epoch_end(self) -> None:
        """The next epoch's order. Keras peeks at the first batch (to build its metrics) and then calls this before
        the first epoch: a peek is no epoch, so epoch 0's order is what the first epoch trains on."""
        if self._read_past_first or len(self) == 1:
            self.epoch += 1
            self._read_past_first = False
            self._order()

    def to_tf_dataset(self):
        """The same batches as a tf.data.Dataset (TensorFlow must be installed): for code that needs one."""
        try:
            import tensorflow as tf
        except ImportError:
            raise ImportError("to_tf_dataset() needs TensorFlow (pip install tensorflow); Keras' fit, evaluate "
                              "and predict take this PyDataset as it is") from None
        first = self[0]
        signature = tuple({k: tf.TensorSpec((None,) + v.shape[1:], tf.as_dtype(v.dtype)) for k, v in part.items()}
                          if isinstance(part, dict) else tf.TensorSpec((None,) + part.shape[1:],
                                                                       tf.as_dtype(part.dtype)) for part in first)

        def batches():
            for i in range(len(self)):
                yield self[i]
            self.on_epoch_end()
        return tf.data.Dataset.from_generator(batches, output_signature=signature)


def _array(value):
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _check_label_column(dataset, name: str, model) -> None:
    """Labels the head cannot take fail before training, naming the row."""
    config = model.config
    if model.task != "sequence_classification" or config.num_labels < 2 \
            or config.problem_type in ("regression", "multi_label_classification"):
        return
    for row, value in enumerate(column_values(dataset, name)):
        if isinstance(value, (list, tuple, np.ndarray)):
            return  # multi-label targets: the loss infers the problem type from them
        if isinstance(value, str) or not float(value) == int(value):
            raise InputError(f"column '{name}' row {row}: label {value!r} is not a class id; the model's head takes "
                             f"ids 0..{config.num_labels - 1} (map names to ids first, e.g. with "
                             "model.config.label2id)")
        if not 0 <= int(value) < config.num_labels:
            raise InputError(f"column '{name}' row {row}: label {value!r} is outside [0, {config.num_labels}) for "
                             f"a model with num_labels={config.num_labels}")
