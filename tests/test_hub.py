"""tuneforge.hub against a hub-compatible server (tests/hub_server.py) run as a subprocess on 127.0.0.1.

Every test gets its own HF_HOME (so its own cache and saved token) and HF_ENDPOINT pointing at the server;
hub.py reads both at call time, so it does not matter when huggingface_hub was imported.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("huggingface_hub")
from safetensors.numpy import load_file, save_file  # noqa: E402

from tuneforge import hub  # noqa: E402
from hub_testing import LFS_THRESHOLD, QUICK, TOKEN, closed_port_endpoint, unique_repo  # noqa: E402

# The hub_server and hub_env fixtures are in conftest.py.


def make_checkpoint(folder: Path, *, scale: float = 1.0, big: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "scale": scale}))
    rng = np.random.default_rng(0)
    tensors = {
        "embeddings.weight": (rng.standard_normal((16, 8)) * scale).astype(np.float32),
        "classifier.weight": (rng.standard_normal((2, 8)) * scale).astype(np.float32),
        "classifier.bias": np.zeros(2, dtype=np.float32),
    }
    if big:  # above the server's LFS threshold
        tensors["big.weight"] = rng.standard_normal((LFS_THRESHOLD // 4 + 1000,)).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (folder / "notes.txt").write_text("not a checkpoint file\n")
    return folder


FETCHED = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def assert_same_files(local: Path, fetched: Path, names=FETCHED):
    for name in names:
        assert (fetched / name).read_bytes() == (local / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------------------
def test_push_then_resolve_gives_the_same_bytes(hub_env, tmp_path):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("tiny")
    url = hub.push_folder(src, repo, token=TOKEN)
    assert isinstance(url, str) and url.startswith(f"{hub_env.endpoint}/{repo}/commit/")

    folder = hub.resolve_folder(repo)
    assert isinstance(folder, Path) and folder.is_dir()
    assert_same_files(src, folder)
    assert not (folder / "notes.txt").exists()  # only the default allow_patterns are fetched
    tensors = load_file(str(folder / "model.safetensors"))
    np.testing.assert_array_equal(tensors["classifier.weight"], load_file(str(src / "model.safetensors"))["classifier.weight"])
    assert str(folder).startswith(str(Path(os.environ["HF_HOME"]) / "hub"))  # cache under the *current* HF_HOME

    notes = hub.resolve_folder(repo, allow_patterns=["*.txt"])
    assert (notes / "notes.txt").read_bytes() == (src / "notes.txt").read_bytes()


def test_push_again_to_the_same_repo_is_fine(hub_env, tmp_path):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("again")
    first = hub.push_folder(src, repo, token=TOKEN)
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "changed": True}))
    second = hub.push_folder(src, repo, token=TOKEN, commit_message="second")
    assert first != second
    assert json.loads((hub.resolve_folder(repo) / "config.json").read_text())["changed"] is True


def test_large_file_goes_through_lfs(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    # With hf_xet installed the client sends LFS files to Xet storage, which the test server does not
    # implement; the legacy git-LFS flow is what it serves.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    src = make_checkpoint(tmp_path / "ckpt", big=True)
    assert (src / "model.safetensors").stat().st_size > LFS_THRESHOLD
    repo = unique_repo("lfs")
    hub.push_folder(src, repo, token=TOKEN)
    entries = {f.path: f for f in HfApi(endpoint=hub_env.endpoint).list_repo_tree(repo)}
    assert entries["model.safetensors"].lfs is not None and entries["config.json"].lfs is None
    assert_same_files(src, hub.resolve_folder(repo))


def test_local_folder_always_wins(hub_env, tmp_path, monkeypatch):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("local")
    hub.push_folder(src, repo, token=TOKEN)
    monkeypatch.chdir(tmp_path)
    local = tmp_path / repo
    local.mkdir(parents=True)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())  # no hub needed
    assert hub.resolve_folder(repo) == Path(repo)
    assert hub.resolve_folder(local) == local
    assert hub.resolve_folder(str(src)) == src


def test_revisions_branches_and_commits(hub_env, tmp_path):
    repo = unique_repo("rev")
    v1 = make_checkpoint(tmp_path / "v1", scale=1.0)
    v2 = make_checkpoint(tmp_path / "v2", scale=2.0)
    v3 = make_checkpoint(tmp_path / "v3", scale=3.0)
    first = hub.push_folder(v1, repo, token=TOKEN)
    hub.push_folder(v2, repo, token=TOKEN)
    on_branch = hub.push_folder(v3, repo, token=TOKEN, revision="dev")
    assert "/commit/" in on_branch

    assert_same_files(v2, hub.resolve_folder(repo))
    assert_same_files(v2, hub.resolve_folder(repo, revision="main"))
    assert_same_files(v3, hub.resolve_folder(repo, revision="dev"))
    oid = getattr(first, "oid", None) or first.rstrip("/").rsplit("/", 1)[-1]
    assert_same_files(v1, hub.resolve_folder(repo, revision=oid))

    with pytest.raises(hub.HubError) as info:
        hub.resolve_folder(repo, revision="no-such-branch")
    assert "revision 'no-such-branch' not found" in str(info.value)


def test_offline_resolution_from_the_cache(hub_env, tmp_path, monkeypatch):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("offline")
    hub.push_folder(src, repo, token=TOKEN)
    hub.push_folder(make_checkpoint(tmp_path / "dev", scale=5.0), repo, token=TOKEN, revision="dev")
    online = hub.resolve_folder(repo)
    online_dev = hub.resolve_folder(repo, revision="dev")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())  # would fail if anything were fetched
    assert hub.resolve_folder(repo) == online
    assert hub.resolve_folder(repo, revision="dev") == online_dev
    assert_same_files(src, hub.resolve_folder(repo))

    with pytest.raises(hub.HubError) as info:
        hub.resolve_folder(unique_repo("never-fetched"))
    assert "offline mode is on" in str(info.value)


def test_unreachable_hub_falls_back_to_the_cache(hub_env, tmp_path, monkeypatch):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("fallback")
    hub.push_folder(src, repo, token=TOKEN)
    online = hub.resolve_folder(repo)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    start = time.monotonic()
    assert hub.resolve_folder(repo) == online
    assert time.monotonic() - start < QUICK
    assert_same_files(src, online)


def test_missing_repo_with_empty_cache_gives_a_clear_error(hub_env):
    repo = unique_repo("missing")
    with pytest.raises(OSError) as info:
        hub.resolve_folder(repo)
    err = info.value
    assert isinstance(err, hub.HubError)
    message = str(err)
    assert message.startswith(
        f"'{repo}' is not a local folder and could not be fetched from the hub at {hub_env.endpoint} "
        "(repository not found"
    )
    assert "\n" not in message


def test_unreachable_endpoint_gives_a_clear_error_quickly(hub_env, tmp_path, monkeypatch):
    endpoint = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    repo = unique_repo("nowhere")

    start = time.monotonic()
    with pytest.raises(hub.HubError) as info:
        hub.resolve_folder(repo, token=TOKEN)
    assert time.monotonic() - start < QUICK
    message = str(info.value)
    assert message.startswith(f"'{repo}' is not a local folder and could not be fetched from the hub at {endpoint} (")
    assert "could not connect" in message and "\n" not in message and TOKEN not in message

    start = time.monotonic()
    with pytest.raises(hub.HubError) as info:
        hub.push_folder(make_checkpoint(tmp_path / "ckpt"), repo, token=TOKEN)
    assert time.monotonic() - start < QUICK
    message = str(info.value)
    assert endpoint in message and repo in message and "could not connect" in message
    assert "\n" not in message and TOKEN not in message


def test_not_a_folder_nor_a_repo_id(hub_env, tmp_path):
    with pytest.raises(hub.HubError) as info:
        hub.resolve_folder(str(tmp_path / "no" / "such" / "dir"))
    assert "is not a local folder" in str(info.value) and "not a valid hub repo id" in str(info.value)


def test_push_needs_a_valid_token(hub_env, tmp_path):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("auth")
    wrong = "hf_WrongTokenWrongToken" + secrets.token_hex(6)
    for token in (None, wrong):
        with pytest.raises(hub.HubError) as info:
            hub.push_folder(src, repo, token=token)
        message = str(info.value)
        assert hub_env.endpoint in message and repo in message and "401" in message
        assert wrong not in message and "\n" not in message


def test_private_repo_needs_the_token_to_read(hub_env, tmp_path):
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("private")
    hub.push_folder(src, repo, token=TOKEN, private=True)
    with pytest.raises(hub.HubError, match="repository not found"):
        hub.resolve_folder(repo)
    assert_same_files(src, hub.resolve_folder(repo, token=TOKEN))


def test_login_saves_the_token_for_later_calls(hub_env, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    hub.login(token=TOKEN)
    token_file = Path(os.environ["HF_HOME"]) / "token"
    assert token_file.read_text().strip() == TOKEN  # huggingface_hub's own storage, under the current HF_HOME

    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("after-login")
    hub.push_folder(src, repo)  # no token argument: the saved one is used
    assert_same_files(src, hub.resolve_folder(repo))

    with pytest.raises(hub.HubError) as info:
        hub.login(token="hf_NotAValidTokenAtAll123")
    assert "could not log in" in str(info.value) and hub_env.endpoint in str(info.value)
    assert "hf_NotAValidTokenAtAll123" not in str(info.value)

    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_login_uses_hf_token_from_the_environment(hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.login()
    assert (Path(os.environ["HF_HOME"]) / "token").read_text().strip() == TOKEN


def test_login_without_any_token_fails_clearly_when_not_interactive(hub_env, monkeypatch):
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        with pytest.raises(hub.HubError, match="no token: pass token= or set HF_TOKEN"):
            hub.login()


def test_model_card(hub_env, tmp_path):
    log_history = [
        {"loss": 0.7, "learning_rate": 2e-5, "epoch": 0.5, "step": 10},
        {"eval_loss": 0.41, "eval_accuracy": 0.8, "eval_runtime": 1.5, "eval_samples_per_second": 100.0,
         "eval_num_tokens": 1234, "epoch": 1.0, "step": 20},
        {"loss": 0.3, "epoch": 1.5, "step": 30},
        {"eval_loss": 0.3, "eval_accuracy": 0.9, "epoch": 2.0, "step": 40},
        {"train_runtime": 12.0, "train_loss": 0.5, "epoch": 2.0, "step": 40},
    ]
    hyperparameters = {"learning_rate": 2e-5, "num_train_epochs": 2, "seed": 42, "hub_token": TOKEN,
                       "push_to_hub_token": None, "optim": "adamw_torch",
                       "optim_args": {"betas": [0.9, 0.999], "auth": {"api_token": TOKEN}}}
    card = hub.write_model_card(
        tmp_path / "out", repo_id="tf-org/sst2-model", base_model="sentence-transformers/all-MiniLM-L6-v2",
        dataset="sst2", log_history=log_history, hyperparameters=hyperparameters,
        id2label={0: "negative", 1: "positive"},
    )
    assert card == tmp_path / "out" / "README.md"
    text = card.read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "tuneforge"
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "tuneforge" in front["tags"] and front["datasets"] == ["sst2"]

    for heading in ("# sst2-model", "## Model description", "## Label names", "## Evaluation results",
                    "## Training hyperparameters", "## Framework versions"):
        assert heading in text
    assert "fine-tuned version of [sentence-transformers/all-MiniLM-L6-v2]" in text and "sst2" in text
    assert "| 0 | negative |" in text and "| 1 | positive |" in text

    evaluation = text.split("## Evaluation results")[1].split("##")[0]
    table = [line for line in evaluation.splitlines() if line.startswith("|")]
    assert table[0] == "| Epoch | Step | Loss | Accuracy |"
    assert len(table) == 4  # header, separator, one row per evaluation
    assert table[2] == "| 1.0 | 20 | 0.4100 | 0.8000 |" and table[3] == "| 2.0 | 40 | 0.3000 | 0.9000 |"

    assert "- learning_rate: 2e-05" in text and "- num_train_epochs: 2" in text and "- optim: adamw_torch" in text
    assert "hub_token" not in text and "num_tokens" not in text  # keys containing "token" are never written
    assert TOKEN not in text
    versions = text.split("## Framework versions")[1]
    for name in ("tuneforge", "torch", "tokenizers", "datasets", "python"):
        assert f"- {name}: " in versions

    # The card is valid for the hub: push it and fetch it back.
    repo = unique_repo("card")
    make_checkpoint(tmp_path / "out")
    hub.push_folder(tmp_path / "out", repo, token=TOKEN)
    fetched = hub.resolve_folder(repo, allow_patterns=["README.md"])
    assert (fetched / "README.md").read_text() == text


def test_model_card_minimal(tmp_path):
    card = hub.write_model_card(tmp_path / "minimal", base_model=str(tmp_path / "some" / "local" / "ckpt"))
    text = card.read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "tuneforge" and "base_model" not in front  # local paths are not hub ids
    assert "No evaluation results were logged." in text and "No label names were given." in text


def test_redact():
    @dataclasses.dataclass
    class Args:
        output_dir: str = "out"
        hub_token: str | None = TOKEN
        push_to_hub_token: str | None = None
        learning_rate: float = 1e-3

    args = {"output_dir": "out", "hub_token": TOKEN, "HF_TOKEN": TOKEN, "push_to_hub_token": None,
            "nested": {"auth_token": TOKEN, "lr": 0.1}, "items": [{"token": TOKEN}], "learning_rate": 1e-3}
    redacted = hub.redact(args)
    assert redacted == {"output_dir": "out", "hub_token": "<redacted>", "HF_TOKEN": "<redacted>",
                        "push_to_hub_token": None, "nested": {"auth_token": "<redacted>", "lr": 0.1},
                        "items": [{"token": "<redacted>"}], "learning_rate": 1e-3}
    assert args["hub_token"] == TOKEN and args["nested"]["auth_token"] == TOKEN  # a copy: input untouched
    assert TOKEN not in json.dumps(redacted)
    assert hub.redact(Args()) == {"output_dir": "out", "hub_token": "<redacted>", "push_to_hub_token": None,
                                  "learning_rate": 1e-3}


def test_planted_token_never_leaks(hub_env, tmp_path, capfd, caplog):
    hf_logger = logging.getLogger("huggingface_hub")
    hf_logger.addHandler(caplog.handler)  # huggingface_hub's loggers may not propagate to the root logger
    old_level = hf_logger.level
    caplog.set_level(logging.DEBUG)
    hf_logger.setLevel(logging.DEBUG)
    messages = []
    try:
        src = make_checkpoint(tmp_path / "ckpt")
        hub.write_model_card(src, repo_id="tf-org/leak", hyperparameters={"hub_token": TOKEN, "lr": 1.0},
                             log_history=[{"eval_loss": 1.0, "eval_token": TOKEN, "step": 1}])
        (src / "training_args.json").write_text(json.dumps(hub.redact({"hub_token": TOKEN, "lr": 1.0})))
        repo = unique_repo("leak")
        hub.push_folder(src, repo, token=TOKEN, private=True)
        fetched = hub.resolve_folder(repo, token=TOKEN, allow_patterns=["*"])
        assert (fetched / "README.md").exists()

        for call in (
            lambda: hub.resolve_folder(unique_repo("missing"), token=TOKEN),
            lambda: hub.resolve_folder(repo, token=TOKEN, revision="nope"),
            lambda: hub.push_folder(src, "bad//repo id", token=TOKEN),
            lambda: hub.push_folder(tmp_path / "no-such-folder", repo, token=TOKEN),
        ):
            with pytest.raises(hub.HubError) as info:
                call()
            messages.append(info.value)
        os.environ["HF_ENDPOINT"] = closed_port_endpoint()  # restored by monkeypatch in hub_env
        for call in (lambda: hub.push_folder(src, repo, token=TOKEN),
                     lambda: hub.resolve_folder(unique_repo("x"), token=TOKEN)):
            with pytest.raises(hub.HubError) as info:
                call()
            messages.append(info.value)
    finally:
        hf_logger.removeHandler(caplog.handler)
        hf_logger.setLevel(old_level)

    for err in messages:
        for text in (str(err), repr(err), str(err.reason), str(err.args)):
            assert TOKEN not in text
    out, err_text = capfd.readouterr()
    assert TOKEN not in out and TOKEN not in err_text
    assert TOKEN not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in written) and any("hf_home" in str(p) for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in hub_env.log_path.read_text()


def test_model_card_is_card_data_that_huggingface_hub_parses_back(tmp_path):
    from huggingface_hub import ModelCard

    log_history = [{"eval_loss": 0.5, "eval_accuracy": 0.7, "eval_f1": 0.6, "epoch": 1.0, "step": 10},
                   {"eval_loss": 0.4, "eval_accuracy": 0.8, "eval_f1": 0.75, "eval_runtime": 2.0, "epoch": 2.0,
                    "step": 20},
                   {"train_runtime": 5.0, "train_loss": 0.6, "epoch": 2.0, "step": 20}]
    path = hub.write_model_card(tmp_path / "out", repo_id="tf-org/sst2-model", base_model="tf-org/tiny-base",
                                dataset="sst2", dataset_args="default", log_history=log_history,
                                id2label={0: "neg", 1: "pos"}, tasks="text-classification", license="apache-2.0",
                                language="en", tags=["sentiment"])
    data = ModelCard.load(path).data
    assert data.library_name == "tuneforge" and data.base_model == "tf-org/tiny-base"
    assert data.datasets == ["sst2"] and data.license == "apache-2.0" and data.language == "en"
    assert {"tuneforge", "text-classification", "sentiment"} <= set(data.tags)
    assert data.metrics == ["accuracy", "f1"]  # the hub's metric ids, as the reference's card
    assert data.model_name == "sst2-model"
    results = {(r.task_type, r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("text-classification", "sst2", "default", "accuracy"): 0.8,  # the last evaluation's
                       ("text-classification", "sst2", "default", "f1"): 0.75}
    assert "model-index" in path.read_text() and "on the sst2 (default) dataset" in path.read_text()

    # Without a task or a dataset there is no complete result: no model-index, and the card still parses.
    bare = ModelCard.load(hub.write_model_card(tmp_path / "bare", base_model="bad//id", log_history=log_history)).data
    assert bare.eval_results is None and bare.base_model is None and bare.metrics == ["accuracy", "f1"]


def one_line_failure(call) -> hub.HubError:
    with pytest.raises(hub.HubError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and TOKEN not in message
    return info.value


def test_failures_are_classified_by_huggingface_hubs_error_classes(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants, errors

    endpoint_before, offline_before = constants.ENDPOINT, constants.HF_HUB_OFFLINE
    src = make_checkpoint(tmp_path / "ckpt")
    repo = unique_repo("classes")
    hub.push_folder(src, repo, token=TOKEN)
    assert constants.ENDPOINT == endpoint_before  # the call-time settings were applied for the call only

    err = one_line_failure(lambda: hub.resolve_folder(unique_repo("missing"), token=TOKEN))
    assert "repository not found, or private and the token cannot read it" in err.reason
    assert isinstance(err.original, errors.RepositoryNotFoundError)

    err = one_line_failure(lambda: hub.resolve_folder(repo, revision="no-such-branch"))
    assert err.reason == "revision 'no-such-branch' not found"
    assert isinstance(err.original, errors.RevisionNotFoundError)

    gated = unique_repo("gated")
    hub.push_folder(src, gated, token=TOKEN)
    HfApi(endpoint=hub_env.endpoint).update_repo_settings(gated, gated="auto", token=TOKEN)
    for token in (None, TOKEN):
        err = one_line_failure(lambda: hub.resolve_folder(gated, token=token))
        assert err.reason.startswith("gated repository: accept its conditions on the hub")
        assert isinstance(err.original, errors.GatedRepoError)
        assert str(err).startswith(f"'{gated}' is not a local folder and could not be fetched from the hub at "
                                   f"{hub_env.endpoint} (gated repository")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_failure(lambda: hub.resolve_folder(repo))  # pushed, never fetched: not in the cache
    assert err.reason == "offline mode is on (HF_HUB_OFFLINE) and the local cache has no copy"
    assert isinstance(err.original, errors.LocalEntryNotFoundError)
    assert "fetch it once online so that it is cached in" in str(err)
    err = one_line_failure(lambda: hub.push_folder(src, repo, token=TOKEN))
    assert err.reason == "offline mode is on: unset HF_HUB_OFFLINE to push"
    assert constants.HF_HUB_OFFLINE == offline_before  # restored after the call
