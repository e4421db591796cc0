"""From user datasets to model batches: row views that drop what the model does not take, collators that pad
to the batch's longest sequence, and the seeded batch orders (shuffled, length-grouped, or sorted for eval)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

PADDED_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("labels", "label", "label_ids")


# --------------------------------------------------------------------------------------------- row views


def column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if len(dataset) == 0:
        return []
    first = dataset[0]
    if not isinstance(first, Mapping):
        raise TypeError(f"dataset rows must be dicts of features, got {type(first).__name__} at row 0")
    return list(first.keys())


def column_values(dataset, name: str) -> list:
    """One column's values, in row order. A datasets.Dataset is read in one go: indexed by a column name it gives a
    lazy column that formats row by row (50 ms for SST-2's 872 test rows, against 1 ms)."""
    if hasattr(dataset, "select_columns") and hasattr(dataset, "__len__"):  # a datasets.Dataset, not an iterable one
        column = dataset.select_columns([name])
        if column.format["columns"] is not None:  # a format limited to chosen columns: read this one unformatted
            column = column.with_format(None)
        return column[:][name]
    return [row[name] for row in dataset]


class RowView(torch.utils.data.Dataset):
    """A read-only view of the user's dataset with only `keep` columns and 'label'/'label_ids' named 'labels'.
    Nothing is copied and the user's dataset is left as it was."""

    def __init__(self, dataset, keep: Sequence[str]):
        self.dataset = dataset
        self.keep = list(keep)
        self.is_arrow = hasattr(dataset, "column_names") and hasattr(dataset, "select_columns")
        self.columns = dataset.select_columns(self.keep) if self.is_arrow else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _rename(self, row: Mapping) -> dict:
        return {("labels" if k in LABEL_KEYS else k): row[k] for k in self.keep}

    def __getitem__(self, i: int) -> dict:
        return self._rename(self.columns[int(i)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        if self.is_arrow:  # one Arrow read for the batch instead of one per row
            block = self.columns[list(map(int, indices))]
            return [self._rename({k: block[k][j] for k in self.keep}) for j in range(len(indices))]
        return [self[i] for i in indices]


def sequence_lengths(dataset, length_column: str = "length") -> np.ndarray:
    """Real-token counts per row: a precomputed column, else the attention mask's sum, else len(input_ids)."""
    names = column_names(dataset)
    if length_column in names:
        return np.asarray(column_values(dataset, length_column), dtype=np.int64)
    if "attention_mask" in names:
        return np.asarray([int(np.asarray(m).sum()) for m in column_values(dataset, "attention_mask")], dtype=np.int64)
    return np.asarray([len(ids) for ids in column_values(dataset, "input_ids")], dtype=np.int64)


# --------------------------------------------------------------------------------------------- collators


def _pad_rows(rows: list, pad_value: int, width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:width] if len(row) > width else row
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _real_length(features: list[Mapping]) -> int:
    """The longest real sequence of the batch; rows padded beforehand (padding="max_length") are cut back to it."""
    if "attention_mask" in features[0]:
        return max(int(np.count_nonzero(f["attention_mask"])) for f in features)
    return max(len(f["input_ids"]) for f in features)


def _stack(values: list):
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return torch.as_tensor(array, dtype=torch.long)
    if array.dtype.kind == "f":
        return torch.as_tensor(array, dtype=torch.float32)
    return values  # strings and the like are passed through untouched


class DataCollatorWithPadding:
    """Pads input_ids/attention_mask/token_type_ids to the batch's longest real sequence (right side).
    Same name and arguments as the reference's."""

    def __init__(self, tokenizer=None, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")

    def __call__(self, features: list[Mapping]) -> dict:
        width = self.max_length if self.padding == "max_length" else _real_length(features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key in PADDED_KEYS:
                batch[key] = _pad_rows(values, self.pad_token_id if key == "input_ids" else 0, width)
            else:
                batch["labels" if key in LABEL_KEYS else key] = _stack(values)
        return batch


class DataCollatorForLanguageModeling:
    """Causal language modelling (mlm=False): pads input_ids/attention_mask to the batch's longest sequence (on the
    tokenizer's padding side) and makes labels, the input ids with -100 at padding: the model shifts them. As in the
    reference, a real token equal to pad_token_id is not trained on either. Rows that bring their own labels keep
    them (padded with -100)."""

    makes_labels = True  # the Trainer needs no label column

    def __init__(self, tokenizer=None, mlm: bool = True, mlm_probability: float = 0.15, pad_to_multiple_of=None,
                 return_tensors: str = "pt"):
        if mlm:
            raise ValueError("DataCollatorForLanguageModeling(mlm=True) (masked language modelling) is not "
                             "implemented yet; pass mlm=False for causal language modelling")
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[Mapping]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.pad_token_id if self.pad_token_id is not None else 0

        def padded(key, value, default):
            rows = [list(f[key]) if key in f else default(f) for f in features]
            rows = [r[::-1] for r in rows] if self.left else rows
            out = _pad_rows(rows, value, width)
            return out.flip(1) if self.left else out

        batch = {"input_ids": padded("input_ids", pad, None),
                 "attention_mask": padded("attention_mask", 0, lambda f: [1] * len(f["input_ids"]))}
        if any(k in features[0] for k in LABEL_KEYS):
            key = next(k for k in LABEL_KEYS if k in features[0])
            batch["labels"] = padded(key, -100, None)
        else:
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            if self.pad_token_id is not None:
                labels[labels == self.pad_token_id] = -100
            batch["labels"] = labels
        for key in features[0]:
            if key not in batch and key not in LABEL_KEYS:
                batch[key] = _stack([f[key] for f in features])
        return batch


def default_data_collator(features: list[Mapping]) -> dict:
    """Stacks features of equal length (e.g. padded with padding="max_length"); 'label' becomes 'labels'."""
    if any(k in features[0] for k in PADDED_KEYS):
        lengths = {len(f["input_ids"]) for f in features} if "input_ids" in features[0] else {0}
        if len(lengths) > 1:
            return DataCollatorWithPadding()(features)
    return {("labels" if k in LABEL_KEYS else k): _stack([f[k] for f in features]) for k in features[0]}


# ------------------------------------------------------------------------------------------ batch orders


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[list[int]]:
    """A pure function of (seed, epoch): resuming mid-epoch only needs the step number."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return _chunk(order, batch_size, drop_last)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                           drop_last: bool = False, mega_batch_mult: int = 50) -> list[list[int]]:
    """Shuffle, cut into mega-batches of mega_batch_mult * batch_size, sort each by length, then shuffle the
    batches: similar lengths within a batch, random order overall. The longest batch goes first, so running out
    of memory happens at once rather than late."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mega = batch_size * mega_batch_mult
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches.extend(_chunk(group, batch_size, False))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    perm = torch.randperm(len(batches), generator=g).tolist()
    batches = [batches[i] for i in perm]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b])) if batches else 0
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation order: by length, so batches hold similar lengths; callers put outputs back in input order."""
    order = np.argsort(-lengths, kind="stable").tolist()
    return _chunk(order, batch_size, False)


def _chunk(items: list[int], size: int, drop_last: bool) -> list[list[int]]:
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if drop_last and chunks and len(chunks[-1]) < size:
        chunks.pop()
    return chunks


def store_rows(array: np.ndarray | None, indices, values: np.ndarray, rows: int) -> np.ndarray:
    """Writes a batch's outputs into the rows `indices` of the whole set's array. Outputs whose length varies by
    batch (per-token logits, labels) are padded with -100 to the widest seen, as in the reference."""
    if array is None:
        array = np.full((rows, *values.shape[1:]), -100, dtype=values.dtype)
    if values.ndim > 1 and values.shape[1] != array.shape[1]:
        width = max(values.shape[1], array.shape[1])
        grow = lambda a: np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),  # noqa: E731
                                constant_values=-100)
        array, values = grow(array), grow(values)
    array[indices] = values
    return array
