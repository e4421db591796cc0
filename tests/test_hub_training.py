"""The hub flow end to end (issue 7): train with push_to_hub, load the pushed id in a fresh process, every_save
checkpoints, an unreachable hub, model/tokenizer push_to_hub, offline loading, and a planted token that must
never leak. Runs against tests/hub_server.py on 127.0.0.1 (fixtures in conftest.py).

The model is a tiny BERT whose vocabulary is the packaged MiniLM's (about 2 MB of weights), so its
model.safetensors goes through the server's LFS flow: HF_HUB_DISABLE_XET=1 is set, as the server has no Xet.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi  # noqa: E402

from hub_testing import QUICK, TOKEN, closed_port_endpoint, unique_repo  # noqa: E402
from tuneforge import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, Trainer,  # noqa: E402
                       TrainingArguments, hub)
from tuneforge.models.bert import BertConfig, BertForSequenceClassification  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCES = ["a gripping, beautifully acted film", "dull and far too long", "i loved every minute of it",
             "the plot makes no sense at all", "warm, funny and wise", "a tedious mess", "great fun for everyone",
             "nothing works here", "an instant classic", "i want my two hours back", "smart and moving",
             "painfully bad dialogue"]
FIXED_INPUT = ["a fixed sentence to compare logits", "and a second, shorter one"]
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "training_args.json", "README.md"}


# --------------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tokenizer_dir(minilm_dir, tmp_path_factory):
    """A tokenizer folder made of the packaged MiniLM's tokenizer files, so AutoTokenizer loads it."""
    folder = tmp_path_factory.mktemp("tokenizer")
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, folder / name)
    return folder


@pytest.fixture
def env(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    return hub_env


def tiny_model(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification.from_config(config)


def make_rows(tokenizer, n=None):
    sentences = SENTENCES[:n] if n else SENTENCES
    enc = tokenizer(sentences, truncation=True, max_length=24)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "label": i % 2}
            for i in range(len(sentences))]


def accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def make_trainer(tmp_path, tokenizer_dir, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(tokenizer.vocab_size)
    values = dict(output_dir=str(tmp_path / "out"), disable_tqdm=True, learning_rate=1e-3, max_steps=3,
                  per_device_train_batch_size=4, logging_steps=1, save_strategy="steps", save_steps=2,
                  push_to_hub=True, hub_token=TOKEN)
    values.update(overrides)
    rows = make_rows(tokenizer)
    eval_rows = rows[:4] if values.get("eval_strategy", "no") != "no" else None
    return Trainer(model=model, args=TrainingArguments(**values), train_dataset=rows, eval_dataset=eval_rows,
                   processing_class=tokenizer, compute_metrics=accuracy)


def logits_of(model, tokenizer) -> np.ndarray:
    enc = tokenizer(FIXED_INPUT, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**enc)["logits"].float().numpy()


def user_name(endpoint: str) -> str:
    return HfApi(endpoint=endpoint).whoami(token=TOKEN)["name"]


def server_commits(server, repo_id: str) -> list[dict]:
    """The main branch's commits, oldest first, read from the test server's store (title and file table)."""
    doc = json.loads((server.data_dir / "repos" / "models" / f"{repo_id}.json").read_text())
    chain, sha = [], doc["branches"]["main"]
    while sha:
        commit = doc["commits"][sha]
        chain.append({"sha": sha, "title": commit["title"], "files": commit["files"]})
        sha = commit["parents"][0] if commit["parents"] else None
    return chain[::-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from tuneforge import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    repo, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    config = AutoConfig.from_pretrained(repo)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc)["logits"]
    json.dump({"logits": logits.tolist(), "input_ids": enc["input_ids"].tolist(),
               "id2label": {str(k): v for k, v in config.id2label.items()}}, open(out, "w"))
""")


def load_in_fresh_process(repo_id: str, hf_home: Path, out: Path) -> dict:
    child_env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    child_env["HF_HOME"] = str(hf_home)
    result = subprocess.run([sys.executable, "-c", CHILD, repo_id, str(out), json.dumps(FIXED_INPUT)],
                            env=child_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------------------- tests
def test_train_push_end_then_load_the_pushed_id_in_a_fresh_process(env, tmp_path, tokenizer_dir, monkeypatch):
    name = unique_repo("tiny-bert", namespace=None)  # a bare name: pushed to the token owner's namespace
    trainer = make_trainer(tmp_path, tokenizer_dir, hub_model_id=name, hub_strategy="end", eval_strategy="steps",
                           eval_steps=2)
    trainer.train()
    repo_id = f"{user_name(env.endpoint)}/{name}"
    out = Path(trainer.args.output_dir)
    assert (out / "checkpoint-2").is_dir() and (out / "log.jsonl").is_file()  # there locally, never pushed

    # One commit at the end, holding the model folder and nothing else.
    commits = server_commits(env, repo_id)
    assert [c["title"] for c in commits] == ["initial commit", "End of training"]
    files = set(HfApi(endpoint=env.endpoint).list_repo_files(repo_id))
    assert files == MODEL_FILES | {".gitattributes"}
    for filename in MODEL_FILES:
        assert commits[-1]["files"][filename]["sha256"] == sha256(out / filename), filename
    assert json.loads((out / "training_args.json").read_text())["hub_token"] == "<redacted>"

    # The model card: label names, one row per evaluation, hyperparameters, framework versions.
    card = (hub.resolve_folder(repo_id, allow_patterns=["README.md"]) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: tuneforge\n")
    assert f"# {name}" in card and "| 0 | negative |" in card and "| 1 | positive |" in card
    table = [line for line in card.split("## Evaluation results")[1].split("##")[0].splitlines()
             if line.startswith("|")]
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evaluations) >= 1 and len(table) == 2 + len(evaluations)  # header, separator, one row each
    assert table[0] == "| Epoch | Step | Loss | Accuracy |" and f"| {evaluations[0]['step']} |" in table[2]
    assert "- learning_rate: 0.001" in card and "- max_steps: 3" in card
    versions = card.split("## Framework versions")[1]
    assert f"- torch: {torch.__version__}" in versions and "- tuneforge: " in versions

    # A fresh process with an empty cache loads the pushed id: same tokens, same logits as the local model.
    local_logits = logits_of(trainer.model, trainer.processing_class)
    fresh_home = tmp_path / "fresh_hf_home"
    child = load_in_fresh_process(repo_id, fresh_home, tmp_path / "child.json")
    np.testing.assert_allclose(np.array(child["logits"]), local_logits, atol=1e-5, rtol=1e-5)
    local_ids = trainer.processing_class(FIXED_INPUT, padding=True)["input_ids"]
    assert child["input_ids"] == local_ids
    assert child["id2label"] == {"0": "negative", "1": "positive"}

    # Offline, the cache that process filled is enough for AutoModel*, AutoConfig and AutoTokenizer.
    monkeypatch.setenv("HF_HOME", str(fresh_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    model = AutoModelForSequenceClassification.from_pretrained(repo_id)
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    np.testing.assert_allclose(logits_of(model, tokenizer), local_logits, atol=1e-5, rtol=1e-5)
    assert AutoConfig.from_pretrained(repo_id).id2label == {0: "negative", 1: "positive"}
    assert model.config.name_or_path == repo_id

    # Neither the cache nor the hub has it: one clear line, for each loader.
    missing = unique_repo("never-pushed")
    for load in (AutoModelForSequenceClassification.from_pretrained, AutoConfig.from_pretrained,
                 AutoTokenizer.from_pretrained):
        with pytest.raises(OSError) as info:
            load(missing)
        message = str(info.value)
        assert message.startswith(f"'{missing}' is not a local folder") and "offline mode is on" in message
        assert "\n" not in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", env.endpoint)
    with pytest.raises(OSError, match="repository not found"):
        AutoModelForSequenceClassification.from_pretrained(missing)


def test_every_save_pushes_each_checkpoint(env, tmp_path, tokenizer_dir):
    repo_id = unique_repo("every-save")
    trainer = make_trainer(tmp_path, tokenizer_dir, hub_model_id=repo_id, hub_strategy="every_save",
                           hub_private_repo=True, max_steps=5)
    trainer.train()
    out = Path(trainer.args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]

    commits = server_commits(env, repo_id)
    assert [c["title"] for c in commits] == ["initial commit", "Training in progress, step 2",
                                            "Training in progress, step 4", "Training in progress, step 5",
                                            "End of training"]
    for step, commit in zip((2, 4, 5), commits[1:4]):
        local = out / f"checkpoint-{step}"
        files = commit["files"]
        # The checkpoint's model at the repo root ...
        for filename in ("config.json", "model.safetensors", "tokenizer.json", "training_args.json"):
            assert files[filename]["sha256"] == sha256(local / filename), (step, filename)
        assert "optimizer.pt" not in files and "trainer_state.json" not in files
        # ... and the whole checkpoint under last-checkpoint/, replacing the previous one.
        under = {k[len("last-checkpoint/"):]: v for k, v in files.items() if k.startswith("last-checkpoint/")}
        assert set(under) == {p.name for p in local.iterdir()}
        for filename, entry in under.items():
            assert entry["sha256"] == sha256(local / filename), (step, filename)
        assert json.loads((local / "trainer_state.json").read_text())["global_step"] == step
    final = commits[-1]["files"]
    assert final["model.safetensors"]["sha256"] == sha256(out / "model.safetensors") and "README.md" in final
    assert final["last-checkpoint/model.safetensors"] == commits[3]["files"]["last-checkpoint/model.safetensors"]

    api = HfApi(endpoint=env.endpoint)
    tree = {f.path for f in api.list_repo_tree(repo_id, recursive=True, token=TOKEN)}
    assert MODEL_FILES | {"last-checkpoint/optimizer.pt", "last-checkpoint/trainer_state.json"} <= tree
    assert not any(p.startswith("checkpoint-") or p.endswith("log.jsonl") for p in tree)

    # revision= picks a commit: the step-2 push holds checkpoint-2's weights. The repo is private: the token
    # reads it, and without one the error says so.
    early = AutoModelForSequenceClassification.from_pretrained(repo_id, revision=commits[1]["sha"], token=TOKEN)
    expected = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint-2")
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(early.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(OSError, match="private and no token was given"):
        AutoConfig.from_pretrained(repo_id)

    # Trainer.push_to_hub by hand: card fields, and the repo id stays the one in the arguments.
    info = trainer.push_to_hub(commit_message="Add card details", finetuned_from="tf-org/tiny-base",
                               dataset="sst2")
    assert info.startswith(f"{env.endpoint}/{repo_id}/commit/")
    card = (hub.resolve_folder(repo_id, token=TOKEN, allow_patterns=["README.md"]) / "README.md").read_text()
    assert "base_model: tf-org/tiny-base" in card and "datasets:\n- sst2" in card
    assert "fine-tuned version of [tf-org/tiny-base]" in card and "on the sst2 dataset" in card
    from huggingface_hub import ModelCard
    data = ModelCard(card).data  # valid card data: the task comes from the model class, as the reference's card
    assert data.base_model == "tf-org/tiny-base" and data.datasets == ["sst2"] and data.library_name == "tuneforge"
    assert "text-classification" in data.tags

    # The reference's other keywords: to a branch, with dataset_tags and tags of the caller's.
    trainer.push_to_hub(commit_message="On a branch", revision="dev", dataset_tags="glue", tags=["demo"])
    dev = (hub.resolve_folder(repo_id, token=TOKEN, revision="dev", allow_patterns=["README.md"]) / "README.md")
    data = ModelCard(dev.read_text()).data
    assert data.datasets == ["glue"] and "demo" in data.tags


def test_unreachable_hub_fails_clearly_after_training_and_keeps_the_output(env, tmp_path, tokenizer_dir,
                                                                           monkeypatch, caplog):
    endpoint = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    repo_id = unique_repo("nowhere")
    trainer = make_trainer(tmp_path, tokenizer_dir, hub_model_id=repo_id, hub_strategy="every_save", max_steps=3)
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    with pytest.raises(hub.HubError) as info:
        trainer.train()
    assert time.monotonic() - start < 3 * QUICK
    message = str(info.value)
    out = trainer.args.output_dir
    assert message.startswith(f"could not push {out!r} to {repo_id!r} on the hub at {endpoint} (could not connect")
    assert message.endswith(f"the model is saved in {out!r}: call trainer.push_to_hub() to try again")
    assert "\n" not in message and TOKEN not in message
    assert isinstance(info.value, OSError)

    # Training ran to the end: the failed intermediate pushes were warnings, one per checkpoint.
    assert trainer.state.global_step == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "could not push" in
                r.getMessage()]
    assert len(warnings) == 2 and "checkpoint-2" in warnings[0] and "checkpoint-3" in warnings[1]
    assert all("training goes on" in w and "\n" not in w for w in warnings)

    # Nothing was lost: the final model, its card and the checkpoints are in output_dir and load.
    out = Path(out)
    assert MODEL_FILES <= {p.name for p in out.iterdir()} and (out / "checkpoint-3").is_dir()
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    np.testing.assert_allclose(logits_of(reloaded, tokenizer), logits_of(trainer.model, trainer.processing_class),
                               atol=1e-6)

    # Once the hub is back, pushing again works.
    monkeypatch.setenv("HF_ENDPOINT", env.endpoint)
    trainer.push_to_hub(commit_message="Retry")
    assert [c["title"] for c in server_commits(env, repo_id)] == ["initial commit", "Retry"]


def test_model_and_tokenizer_push_to_hub_round_trip(env, tmp_path, tokenizer_dir, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(tokenizer.vocab_size, seed=3)
    repo_id = unique_repo("round-trip")
    first = model.push_to_hub(repo_id, token=TOKEN)
    second = tokenizer.push_to_hub(repo_id, token=TOKEN, commit_message="Add tokenizer")
    assert first.startswith(f"{env.endpoint}/{repo_id}/commit/") and second != first
    assert [c["title"] for c in server_commits(env, repo_id)][1:] == ["Upload model with tuneforge",
                                                                      "Add tokenizer"]

    loaded = AutoModelForSequenceClassification.from_pretrained(repo_id)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    loaded_tokenizer = AutoTokenizer.from_pretrained(repo_id)
    assert loaded_tokenizer(FIXED_INPUT)["input_ids"] == tokenizer(FIXED_INPUT)["input_ids"]
    assert loaded_tokenizer.special_tokens_map == tokenizer.special_tokens_map
    np.testing.assert_array_equal(logits_of(loaded, loaded_tokenizer), logits_of(model, tokenizer))

    # A branch through revision=, on both sides.
    other = tiny_model(tokenizer.vocab_size, seed=4)
    other.push_to_hub(repo_id, token=TOKEN, revision="dev")
    dev = AutoModelForSequenceClassification.from_pretrained(repo_id, revision="dev")
    torch.testing.assert_close(dev.classifier.weight, other.classifier.weight, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(repo_id, revision="dev")(FIXED_INPUT)["input_ids"] == \
        tokenizer(FIXED_INPUT)["input_ids"]  # the branch started from main, which has the tokenizer

    # A local folder named like the hub id wins over the hub.
    monkeypatch.chdir(tmp_path)
    local = tiny_model(tokenizer.vocab_size, seed=5)
    local.save_pretrained(tmp_path / repo_id)
    tokenizer.save_pretrained(tmp_path / repo_id)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())  # the hub is not even asked
    from_local = AutoModelForSequenceClassification.from_pretrained(repo_id)
    torch.testing.assert_close(from_local.classifier.weight, local.classifier.weight, rtol=0, atol=0)
    assert AutoConfig.from_pretrained(repo_id).num_labels == 2
    assert AutoTokenizer.from_pretrained(repo_id).vocab_size == tokenizer.vocab_size


def test_planted_token_never_leaks(env, tmp_path, tokenizer_dir, monkeypatch, capfd, caplog):
    hf_logger = logging.getLogger("huggingface_hub")
    hf_logger.addHandler(caplog.handler)  # huggingface_hub's loggers may not propagate to the root logger
    old_level = hf_logger.level
    caplog.set_level(logging.DEBUG)
    hf_logger.setLevel(logging.DEBUG)
    errors: list[BaseException] = []
    shown = []
    try:
        repo_id = unique_repo("leak")
        trainer = make_trainer(tmp_path, tokenizer_dir, hub_model_id=repo_id, hub_strategy="every_save",
                               hub_private_repo=True, eval_strategy="steps", eval_steps=1, max_steps=2,
                               save_steps=1)
        shown += [repr(trainer.args), str(trainer.args), trainer.args.to_json_string(), str(trainer.args.to_dict())]
        trainer.train()
        AutoModelForSequenceClassification.from_pretrained(repo_id, token=TOKEN)
        AutoTokenizer.from_pretrained(repo_id, token=TOKEN)
        trainer.processing_class.push_to_hub(repo_id, token=TOKEN)
        trainer.model.push_to_hub(repo_id, token=TOKEN)
        shown += [repr(trainer.model.config), repr(trainer.processing_class)]

        for call in (lambda: AutoModelForSequenceClassification.from_pretrained(repo_id, token=TOKEN,
                                                                                revision="nope"),
                     lambda: AutoTokenizer.from_pretrained(unique_repo("missing"), token=TOKEN),
                     lambda: trainer.model.push_to_hub("bad//repo id", token=TOKEN)):
            with pytest.raises(OSError) as info:
                call()
            errors.append(info.value)
        monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
        for call in (trainer.push_to_hub,
                     lambda: trainer.processing_class.push_to_hub(repo_id, token=TOKEN),
                     lambda: AutoConfig.from_pretrained(unique_repo("x"), token=TOKEN)):
            with pytest.raises(OSError) as info:
                call()
            errors.append(info.value)
        trainer._push_folder(Path(trainer.args.output_dir) / "checkpoint-2", "warns")  # a warning, not a raise
    finally:
        hf_logger.removeHandler(caplog.handler)
        hf_logger.setLevel(old_level)

    assert len(errors) == 6
    for err in errors:
        texts = [str(err), repr(err), str(err.args), "".join(traceback.format_exception(err))]
        for attr in ("reason", "original"):
            texts.append(str(getattr(err, attr, "")))
        for text in texts:
            assert TOKEN not in text
    for text in shown:
        assert TOKEN not in text
    out, err_text = capfd.readouterr()
    assert TOKEN not in out and TOKEN not in err_text
    assert any("could not push" in r.getMessage() for r in caplog.records)  # the warning was captured
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and TOKEN not in str(record.args)

    # Every file written: output_dir (model, card, checkpoints, logs, state), the HF cache, and the server's log.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"README.md", "training_args.json", "log.jsonl", "trainer_state.json", "optimizer.pt"} <= names
    assert any("hf_home" in str(p) and "models--" in str(p) for p in written)  # the cache was filled
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in env.log_path.read_text()
    for path in env.data_dir.rglob("*"):  # what the hub stored: repos, commits, uploaded files
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
