"""The CLI's error discipline: the user's mistakes (InputError and the missing-file family) are one line and exit
code 2; anything else is a bug that keeps its traceback (the exception leaves cli.main)."""
import errno
import importlib
import json
import pkgutil
import shutil

import pytest
import torch

import tuneforge
from tuneforge import InputError, cli
from tuneforge.checkpoint_io import CheckpointError
from tuneforge.hub import HubError
from conftest import save_tiny_bert
from tuneforge.training import trainer as trainer_module
from tuneforge.training.checkpoint import CheckpointWriteError
from test_cli import make_rows, run, write_rows


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A random 1-layer BERT with the MiniLM tokenizer: a model folder that trains a step in a second."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=19)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "train.csv", make_rows(24, seed=1))


def train(tiny_dir, train_file, tmp_path, *extra, model=None):
    return run("train", "--model", model or tiny_dir, "--train", train_file, "--output-dir", tmp_path / "out",
               "--batch-size", 8, "--max-steps", 1, *extra)


def one_line(code, out, err):
    """The error line (stderr also holds progress bars, which can end on the same terminal line)."""
    assert code == 2 and out == "", err
    assert "Traceback" not in err and err.count("tuneforge train: error: ") == 1, err
    return "tuneforge train: error: " + err.split("tuneforge train: error: ")[1].splitlines()[0]


def write_config(tmp_path, values):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


def edited_model(tiny_dir, tmp_path, file, **changes):
    """A copy of the tiny model folder with `changes` written into one of its JSON files."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    values = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**values, **changes}))
    return folder


# ------------------------------------------------------------------------------------ the user's mistakes


def test_a_bad_training_arguments_value(tiny_dir, train_file, tmp_path):
    config = write_config(tmp_path, {"lr_scheduler_type": "zigzag"})
    line = one_line(*train(tiny_dir, train_file, tmp_path, "--config", config))
    assert line.startswith("tuneforge train: error: lr_scheduler_type='zigzag' is not supported; use one of ")


def test_a_refused_option(tiny_dir, train_file, tmp_path):
    config = write_config(tmp_path, {"label_smoothing_factor": 0.1})
    line = one_line(*train(tiny_dir, train_file, tmp_path, "--config", config))
    assert "label_smoothing_factor=0.1 is not supported by tuneforge (label smoothing is not available" in line


def test_a_bad_tokenizer_setting(tiny_dir, train_file, tmp_path):
    model = edited_model(tiny_dir, tmp_path, "tokenizer_config.json", padding_side="middle")
    line = one_line(*train(tiny_dir, train_file, tmp_path, model=model))
    assert line == f"tuneforge train: error: padding_side must be 'right' or 'left', got 'middle' (loading '{model}')"


def test_a_model_config_the_family_does_not_implement(tiny_dir, train_file, tmp_path):
    model = edited_model(tiny_dir, tmp_path, "config.json", position_embedding_type="relative_key")
    line = one_line(*train(tiny_dir, train_file, tmp_path, model=model))
    assert "position_embedding_type='relative_key' is not supported (only 'absolute')" in line


def test_a_bad_data_column(tiny_dir, train_file, tmp_path):
    line = one_line(*train(tiny_dir, train_file, tmp_path, "--label-column", "stars"))
    assert "has no column 'stars' (--label-column)" in line


def test_a_metric_for_best_model_the_evaluation_does_not_return(tiny_dir, train_file, tmp_path):
    """The reference raises a KeyError here; tuneforge's is also an InputError, so the CLI reports it in one line."""
    config = write_config(tmp_path, {"metric_for_best_model": "bleu", "eval_strategy": "steps", "eval_steps": 1})
    line = one_line(*train(tiny_dir, train_file, tmp_path, "--config", config))
    assert "metric_for_best_model='bleu': the evaluation returned no 'eval_bleu'" in line


def input_error_classes():
    """Every InputError subclass in the package (each module imported, so none is missed)."""
    for info in pkgutil.walk_packages(tuneforge.__path__, "tuneforge."):
        if not info.name.startswith(("tuneforge.keras", "tuneforge.__main__")):
            importlib.import_module(info.name)
    found, todo = [], [InputError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__qualname__)


def test_the_input_error_classes():
    names = {c.__name__ for c in input_error_classes()}
    assert {"InputError", "UsageError", "CheckpointError", "GGUFError", "ChatTemplateError", "QADataError",
            "TagDataError", "MetricNotFoundError"} <= names
    assert issubclass(InputError, ValueError)  # code that catches ValueError, as with the reference, still does
    assert issubclass(CheckpointError, OSError)  # and the reference's OSError for an unusable checkpoint
    assert issubclass(trainer_module.MetricNotFoundError, KeyError)  # the reference's KeyError
    assert issubclass(HubError, OSError) and not issubclass(HubError, InputError)  # a network failure is no ValueError


@pytest.mark.parametrize("error", [*input_error_classes(), FileNotFoundError, PermissionError, IsADirectoryError,
                                   NotADirectoryError, HubError, FloatingPointError], ids=lambda c: c.__name__)
def test_each_reported_class_is_one_line(monkeypatch, error):
    def fail(opts):
        raise error("what the user gave is wrong:\n  this part")
    monkeypatch.setattr(cli, "cmd_train", fail)
    code, out, err = run("train")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["tuneforge train: error: what the user gave is wrong: this part"]


def test_a_disk_with_no_room_is_one_line(monkeypatch):
    def fail(opts):
        raise CheckpointWriteError(errno.ENOSPC, "could not write out/checkpoint-8: the disk is full (ENOSPC)")
    monkeypatch.setattr(cli, "cmd_train", fail)
    code, out, err = run("train")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["tuneforge train: error: could not write out/checkpoint-8: the disk is full (ENOSPC)"]


# -------------------------------------------------------------------------------------------- internal bugs


def test_a_plain_value_error_deep_in_training_keeps_its_traceback(tiny_dir, train_file, tmp_path, monkeypatch):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise ValueError("an internal invariant broke")
    monkeypatch.setattr(trainer_module.Trainer, "compute_loss", compute_loss)
    with pytest.raises(ValueError, match="an internal invariant broke") as caught:
        train(tiny_dir, train_file, tmp_path)
    assert not isinstance(caught.value, InputError)
    assert caught.traceback[-1].name == "compute_loss"


def test_a_key_error_in_evaluation_keeps_its_traceback(tiny_dir, train_file, tmp_path, monkeypatch):
    def store_rows(*args, **kwargs):
        raise KeyError("logits")
    monkeypatch.setattr(trainer_module, "store_rows", store_rows)
    with pytest.raises(KeyError, match="logits"):
        train(tiny_dir, train_file, tmp_path, "--eval", train_file)
