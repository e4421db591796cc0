"""Scripts written for transformers (beside this file) run with only their imports changed, and give the
reference's metrics: each runs here twice, once as written and once with "transformers" swapped for "tuneforge"."""
import csv
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).parent
SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2" / "train.tsv"


def load_script(name: str, library: str) -> types.ModuleType:
    source = (HERE / name).read_text(encoding="utf-8")
    if library == "tuneforge":
        source = re.sub(r"\btransformers\b", "tuneforge", source)
    module = types.ModuleType(f"compat_{library}_{name[:-3]}")
    exec(compile(source, str(HERE / name), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, minilm_dir):
    """A tiny random BERT saved by the reference (its format), with the packaged MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(minilm_dir) / name).exists():
            shutil.copy(Path(minilm_dir) / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def sst2_rows(tmp_path_factory):
    """64 SST-2 rows (the shared copy when present, else made-up sentences in its format)."""
    path = tmp_path_factory.mktemp("sst2") / "train.tsv"
    if SST2.exists():
        with open(SST2, encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))[:64]
    else:
        words = ["good", "bad", "fine", "awful", "great", "dull", "a film", "the plot", "very", "not"]
        rows = [{"sentence": " ".join(words[(i * k) % 10] for k in range(1, 6)), "label": str(i % 2)}
                for i in range(64)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sentence", "label"], delimiter="\t")
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"], "label": r["label"]} for r in rows)
    return path


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    from tuneforge.utils import logging as tf_logging
    tf_logging._reset()  # the scripts configure the library loggers; later tests' caplog needs propagation


def test_text_classification_script(tiny_checkpoint, sst2_rows, tmp_path):
    results = {}
    for library in ("transformers", "tuneforge"):
        argv = ["--model_name_or_path", str(tiny_checkpoint), "--train_file", str(sst2_rows),
                "--output_dir", str(tmp_path / library), "--do_train", "--do_eval", "--do_predict", "--max_steps", "6",
                "--per_device_train_batch_size", "8", "--learning_rate", "5e-4", "--logging_steps", "2",
                "--train_sampling_strategy", "sequential", "--save_strategy", "no", "--report_to", "none",
                "--disable_tqdm", "true", "--seed", "0"]
        results[library] = load_script("script_text_classification.py", library).main(argv)
    ref, ours = results["transformers"], results["tuneforge"]
    assert ours["optimizer_steps"] == ref["optimizer_steps"] == 6
    assert ours["logged_losses"] == pytest.approx(ref["logged_losses"], abs=2e-3)
    for key in ("train_loss", "eval_loss", "eval_accuracy", "predict_accuracy"):
        assert ours[key] == pytest.approx(ref[key], abs=2e-3), key
    assert ours["predicted"] == ref["predicted"]
    assert (tmp_path / "tuneforge" / "all_results.json").exists() and (tmp_path / "tuneforge" / "config.json").exists()


def test_native_loop_with_get_scheduler(tiny_checkpoint, sst2_rows):
    ref = load_script("script_native_loop.py", "transformers").main(str(tiny_checkpoint), str(sst2_rows))
    ours = load_script("script_native_loop.py", "tuneforge").main(str(tiny_checkpoint), str(sst2_rows))
    assert ours["losses"] == pytest.approx(ref["losses"], abs=1e-4)
    assert ours["last_lr"] == pytest.approx(ref["last_lr"])


def test_resuming_from_get_last_checkpoint(tiny_checkpoint, sst2_rows, tmp_path):
    """The example scripts' resume: a second run in the same output_dir continues from its newest checkpoint."""
    script = load_script("script_text_classification.py", "tuneforge")
    argv = ["--model_name_or_path", str(tiny_checkpoint), "--train_file", str(sst2_rows), "--output_dir",
            str(tmp_path), "--do_train", "--max_steps", "4", "--save_steps", "2", "--report_to", "none",
            "--disable_tqdm", "true", "--max_train_samples", "32"]
    script.main(argv)
    from tuneforge.trainer_utils import get_last_checkpoint
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    again = script.main([*argv[:-2], "--max_train_samples", "32", "--max_steps", "6"])
    assert again["optimizer_steps"] == 2  # steps 5 and 6 only
