"""Batch orders and collators."""
import numpy as np
import torch

from tuneforge.data import (DataCollatorWithPadding, RowView, column_values, default_data_collator,
                            length_grouped_batches, sequence_lengths, shuffled_batches, sorted_batches)


def test_shuffled_batches_are_a_seeded_permutation():
    a = shuffled_batches(103, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(103))
    assert a == shuffled_batches(103, 8, seed=1, epoch=0)
    assert a != shuffled_batches(103, 8, seed=1, epoch=1)
    assert len(shuffled_batches(103, 8, 1, 0, drop_last=True)) == 12


def test_length_grouped_batches_keep_lengths_together_but_order_random():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, size=2000)
    batches = length_grouped_batches(lengths, 16, seed=5, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    assert batches == length_grouped_batches(lengths, 16, seed=5, epoch=0)  # resumable: a function of seed/epoch
    spread_grouped = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    spread_random = np.mean([lengths[b].max() - lengths[b].min() for b in shuffled_batches(2000, 16, 5, 0)])
    assert spread_grouped < spread_random / 5
    assert max(lengths[batches[0]]) == lengths.max(), "the longest batch comes first"
    firsts = [lengths[b].max() for b in batches[1:]]
    assert not (np.all(np.diff(firsts) <= 0) or np.all(np.diff(firsts) >= 0)), "batches are not sorted by length"


def test_sorted_batches_for_evaluation():
    lengths = np.array([5, 9, 1, 7, 3])
    assert sorted_batches(lengths, 2) == [[1, 3], [0, 4], [2]]


def test_collator_pads_to_the_longest_real_sequence_and_renames_label():
    features = [{"input_ids": [101, 7, 102, 0, 0, 0], "attention_mask": [1, 1, 1, 0, 0, 0], "label": 1},
                {"input_ids": [101, 7, 8, 9, 102, 0], "attention_mask": [1, 1, 1, 1, 1, 0], "label": 0}]
    batch = DataCollatorWithPadding()(features)
    assert batch["input_ids"].shape == (2, 5), "padding='max_length' rows are cut back to the longest real row"
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    ragged = [{"input_ids": [1, 2, 3]}, {"input_ids": [1]}]
    assert default_data_collator(ragged)["input_ids"].tolist() == [[1, 2, 3], [1, 0, 0]]
    floats = default_data_collator([{"x": [0.5, 1.0], "labels": 0.25}, {"x": [1.5, 2.0], "labels": 1.0}])
    assert floats["labels"].dtype == torch.float32 and floats["x"].shape == (2, 2)


def test_row_view_reads_batches_without_touching_the_dataset():
    datasets = __import__("pytest").importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]], "label": [0, 1, 0], "text": ["a", "b", "c"]})
    view = RowView(ds, ["input_ids", "label"])
    assert view.__getitems__([2, 0]) == [{"input_ids": [4, 5, 6], "labels": 0}, {"input_ids": [1, 2], "labels": 0}]
    assert view[1] == {"input_ids": [3], "labels": 1}
    assert ds.column_names == ["input_ids", "label", "text"]


def test_sequence_lengths_from_a_length_column_the_mask_or_the_ids_in_any_format():
    """Real tokens per row, read in one go from a datasets.Dataset (in any format) or from a list of rows."""
    import datasets
    ids = [[5, 6, 7, 0, 0], [5, 6, 0, 0, 0], [5, 6, 7, 8, 9]]  # padded to one width, as padding="max_length" does
    mask = [[1 if t else 0 for t in row] for row in ids]
    rows = [{"input_ids": i, "attention_mask": m, "label": n % 2} for n, (i, m) in enumerate(zip(ids, mask))]
    table = datasets.Dataset.from_list(rows)
    for data in (rows, table, table.with_format("numpy"), table.with_format("torch")):
        assert sequence_lengths(data).tolist() == [3, 2, 5]  # the mask's count, not the padded width
        assert [int(v) for v in column_values(data, "label")] == [0, 1, 0]
    assert sequence_lengths(table.with_format("numpy", columns=["input_ids"])).tolist() == [3, 2, 5]
    assert sequence_lengths(table.to_iterable_dataset()).tolist() == [3, 2, 5]
    no_mask = datasets.Dataset.from_list([{"input_ids": i[:n]} for i, n in zip(ids, (3, 2, 5))])
    assert sequence_lengths(no_mask).tolist() == [3, 2, 5]
    assert sequence_lengths(table.add_column("length", [9, 8, 7])).tolist() == [9, 8, 7]
