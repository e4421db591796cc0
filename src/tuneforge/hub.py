"""Talking to a Hugging Face Hub: log in, fetch a checkpoint folder, push a folder, write a model card.

This is the only tuneforge module that imports ``huggingface_hub``, and it does so inside functions, so
importing tuneforge never needs it; other modules import this one lazily.

Settings are huggingface_hub's own (``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_TOKEN`` / ``HF_TOKEN_PATH``, ``HF_HUB_DISABLE_XET``, ...), but read when a tuneforge hub call is made, not
only when huggingface_hub was imported (it computes ``huggingface_hub.constants`` once, at import): each call
runs huggingface_hub's constants module again against the environment as it is now and applies what changed
for the duration of the call (see :func:`_hub_settings`). Failures are classified by huggingface_hub's own
error classes into one-line :class:`HubError` messages; the model card is a ``huggingface_hub.ModelCard``.

Pushing a training run (what ``Trainer`` uses): :func:`model_files` picks the model out of an output folder
(top-level config, weights, tokenizer, training_args.json and README.md; never logs, training state or
``checkpoint-*``), :func:`push_files` uploads such a selection in one commit, and :func:`push_checkpoint`
uploads a checkpoint as the model at the repo root plus the whole checkpoint under ``last-checkpoint/``.

Tokens are never printed, logged, written to a file by this module (except by :func:`login`, which
stores it where ``huggingface_hub`` keeps it) or put in an exception message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ALLOW_PATTERNS",
    "HubError",
    "login",
    "resolve_folder",
    "push_folder",
    "push_files",
    "push_checkpoint",
    "model_files",
    "dataset_name",
    "model_task",
    "write_model_card",
    "redact",
]

logger = logging.getLogger(__name__)

#: Files fetched by :func:`resolve_folder` unless ``allow_patterns`` says otherwise.
DEFAULT_ALLOW_PATTERNS = (
    "config.json",
    "adapter_config.json",  # a LoRA adapter's (its weights: adapter_model.safetensors)
    "*.safetensors",
    "model.safetensors.index.json",
    "model.safetensors.index.*.json",  # a variant's (from_pretrained(variant=))
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)

REDACTED = "<redacted>"

_SETTINGS_LOCK = threading.RLock()
# Things that look like credentials, scrubbed from any message this module builds.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"),
    re.compile(r"(?i)(token=)[^&\s'\"]+"),
)


class HubError(OSError):
    """A hub operation failed. The message is one line and never contains a token.

    Attributes: ``endpoint`` (the hub URL that was used), ``repo_id``, ``reason`` (short cause) and
    ``original`` (the underlying exception, if any).
    """

    def __init__(self, message: str, *, endpoint: str | None = None, repo_id: str | None = None,
                 reason: str | None = None, original: BaseException | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.repo_id = repo_id
        self.reason = reason
        self.original = original


@contextlib.contextmanager
def _hub_settings():
    """``huggingface_hub.constants`` as huggingface_hub's own code computes it from the environment *now*, for
    the duration of the block (then restored); yields that module.

    huggingface_hub reads the environment once, at import, so a script (or a test) that sets ``HF_ENDPOINT``,
    ``HF_HOME`` or ``HF_HUB_OFFLINE`` afterwards would otherwise be ignored. Its constants module is run again
    into a private copy, and every setting (endpoint, cache and token paths, timeouts, switches) that differs
    is applied; a switch the environment leaves off (or unset) does not undo one the program set in
    ``huggingface_hub.constants`` (say ``constants.HF_HUB_DISABLE_XET = True``). The module-level ``HfApi`` that
    huggingface_hub's ``login``/``whoami`` use is pointed at the endpoint too. Other threads calling
    huggingface_hub meanwhile see the same settings; tuneforge's own hub calls run one at a time."""
    from huggingface_hub import constants, hf_api

    spec = importlib.util.find_spec(constants.__name__)
    now = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(now)
    patches = [(constants, name, value) for name, value in vars(now).items()
               if name.isupper() and isinstance(value, (str, int, float)) and value is not False
               and getattr(constants, name, None) != value]
    module_api = getattr(hf_api, "api", None)
    if module_api is not None and getattr(module_api, "endpoint", now.ENDPOINT) != now.ENDPOINT:
        patches.append((module_api, "endpoint", now.ENDPOINT))
    with _SETTINGS_LOCK:
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches if hasattr(obj, name)]
        try:
            for obj, name, value in patches:
                setattr(obj, name, value)
            yield constants
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tuneforge_version() -> str:
    package = sys.modules.get((__package__ or "tuneforge").split(".")[0])
    return getattr(package, "__version__", None) or _version("tuneforge") or "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------------------------
def _scrub(text: str, *secrets: Any) -> str:
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(err: BaseException, *, revision: str | None = None, has_token: bool = False) -> str:
    """A short, single-line cause for ``err``, from huggingface_hub's error classes (which it picks from the
    server's ``X-Error-Code``) on ``err`` and what caused it."""
    from huggingface_hub import errors

    chain, seen = [], set()
    while err is not None and id(err) not in seen:  # huggingface_hub raises some errors "from" the real cause
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, errors.HFValidationError):
            return "not a valid hub repo id, which looks like namespace/name"
        if isinstance(e, errors.GatedRepoError):  # before RepositoryNotFoundError: it is one
            return "gated repository: accept its conditions on the hub, then give a token (HF_TOKEN or token=)"
        if isinstance(e, errors.DisabledRepoError):
            return "the repository is disabled on the hub"
        if isinstance(e, errors.RepositoryNotFoundError):
            if has_token:
                return "repository not found, or private and the token cannot read it"
            return "repository not found, or private and no token was given"
        if isinstance(e, errors.RevisionNotFoundError):
            return f"revision {revision!r} not found" if revision else "revision not found"
        if isinstance(e, errors.RemoteEntryNotFoundError):
            return "a file was not found in the repository"
        if isinstance(e, errors.OfflineModeIsEnabled):
            return "offline mode is on (HF_HUB_OFFLINE)"
        # Transport failures are the HTTP client's own classes (requests, httpx, httpx2 across huggingface_hub's
        # versions), so they are told apart by name.
        name = type(e).__name__
        if "Timeout" in name or isinstance(e, TimeoutError):
            return "timed out"
        if "ConnectError" in name or "ConnectionError" in name or isinstance(e, ConnectionError):
            return f"could not connect: {_first_line(e, 100)}"
        if isinstance(e, errors.HfHubHTTPError):
            status = getattr(e.response, "status_code", None)
            if status == 401:
                return "authentication failed (HTTP 401): the token is missing or invalid"
            if status == 403:
                return "permission denied (HTTP 403): the token cannot write there"
            return f"HTTP {status}" + (f": {_first_line(e.server_message, 100)}" if e.server_message else "")
    if any(isinstance(e, errors.LocalEntryNotFoundError) for e in chain):
        return "not reachable and not in the local cache"
    return _first_line(f"{type(chain[0]).__name__}: {chain[0]}", 160)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def login(token: str | None = None) -> None:
    """Log in to the hub at ``HF_ENDPOINT`` (default https://huggingface.co).

    With no ``token``, ``HF_TOKEN`` is used; with neither, huggingface_hub's interactive login runs.
    The token is checked against the hub (whoami) and saved where huggingface_hub keeps it
    (``HF_TOKEN_PATH``, default ``$HF_HOME/token``). It is never printed or logged.
    """
    import huggingface_hub

    token = token or os.environ.get("HF_TOKEN") or None  # huggingface_hub.login() would ignore HF_TOKEN and prompt
    with _hub_settings() as constants:
        endpoint = constants.ENDPOINT
        if token is None and not (sys.stdin and sys.stdin.isatty()):
            raise HubError(f"could not log in to the hub at {endpoint} (no token: pass token= or set HF_TOKEN)",
                           endpoint=endpoint, reason="no token")
        try:
            if token is None:
                huggingface_hub.login()
            else:
                huggingface_hub.login(token=token, add_to_git_credential=False)
        except Exception as err:
            reason = _scrub(_reason(err, has_token=True), token)
            if reason.startswith("authentication failed"):
                reason = "the token was refused (HTTP 401)"
            raise HubError(
                f"could not log in to the hub at {endpoint} ({reason})", endpoint=endpoint, reason=reason, original=err
            ) from None
    logger.info("Logged in to the hub at %s", endpoint)


def resolve_folder(
    name_or_path,
    *,
    revision: str | None = None,
    token: str | None = None,
    allow_patterns: Iterable[str] | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding the checkpoint ``name_or_path``.

    An existing local directory always wins and is returned as is. Anything else is taken as a hub repo
    id: a snapshot of only the needed files (``allow_patterns``, default :data:`DEFAULT_ALLOW_PATTERNS`) is
    downloaded into the huggingface_hub cache and its folder returned. With ``HF_HUB_OFFLINE=1``, or when
    the hub cannot be reached, the cached snapshot is used. When neither works, raises :class:`HubError`
    (an ``OSError``) with one line saying why. ``cache_dir``, ``force_download`` and ``local_files_only`` are
    huggingface_hub's (from_pretrained passes them through).
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path
    name = os.fspath(name_or_path)
    patterns = _patterns(allow_patterns) or list(DEFAULT_ALLOW_PATTERNS)
    with _hub_settings() as constants:
        endpoint = constants.ENDPOINT
        cache = os.path.expanduser(os.fspath(cache_dir)) if cache_dir is not None else constants.HF_HUB_CACHE
        offline = constants.HF_HUB_OFFLINE or local_files_only

        def fail(reason: str, original: BaseException | None = None):
            if (offline and "not in the local cache" in reason) or reason.startswith("offline mode"):
                reason = "offline mode is on (HF_HUB_OFFLINE) and the local cache has no copy"
            message = (
                f"{name!r} is not a local folder and could not be fetched from the hub at {endpoint} ({reason}); "
                f"check the path or repo id, set HF_TOKEN for a private repo, "
                f"or fetch it once online so that it is cached in {cache}"
            )
            return HubError(_scrub(message, token, hub_token), endpoint=endpoint, repo_id=name,
                            reason=_scrub(reason, token, hub_token), original=original)

        hub_token = None
        try:
            from huggingface_hub import get_token, snapshot_download

            hub_token = token or get_token()
            folder = snapshot_download(
                repo_id=name, revision=revision, token=hub_token, allow_patterns=patterns, cache_dir=cache,
                endpoint=endpoint, local_files_only=offline, force_download=force_download,
                library_name="tuneforge", library_version=_tuneforge_version(),
            )
        except Exception as err:
            raise fail(_reason(err, revision=revision, has_token=bool(hub_token)), err) from None
        folder = Path(folder)
        if not folder.is_dir():
            raise fail(f"the repository has no file matching {', '.join(patterns)}")
    logger.debug("Resolved %r to %s", name, folder)
    return folder


def _push(source: str, repo_id: str, token, private, revision, commit, problem: str | None = None):
    """Create ``repo_id`` if missing (a bare name goes to the token's own namespace), make the branch
    ``revision`` if needed, then run ``commit(api, full_repo_id)``. Errors (and ``problem``, one found
    beforehand) become one-line :class:`HubError`."""
    with _hub_settings() as constants:
        endpoint = constants.ENDPOINT
        hub_token = None

        def fail(reason: str, original: BaseException | None = None):
            reason = _scrub(reason, token, hub_token)
            message = f"could not push {source!r} to {repo_id!r} on the hub at {endpoint} ({reason})"
            return HubError(_scrub(message, token, hub_token), endpoint=endpoint, repo_id=repo_id, reason=reason,
                            original=original)

        if problem:
            raise fail(problem)
        if constants.HF_HUB_OFFLINE:
            raise fail("offline mode is on: unset HF_HUB_OFFLINE to push")
        try:
            from huggingface_hub import HfApi, get_token

            hub_token = token or get_token()
            api = HfApi(endpoint=endpoint, token=hub_token, library_name="tuneforge",
                        library_version=_tuneforge_version())
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            full_id = getattr(url, "repo_id", None) or repo_id
            if revision and revision != "main":
                api.create_branch(full_id, branch=revision, exist_ok=True, repo_type="model")
            info = commit(api, full_id)
        except Exception as err:
            raise fail(_reason(err, revision=revision, has_token=bool(hub_token)), err) from None
    logger.info("Pushed %s to %s on %s", source, full_id, endpoint)
    return info


def push_folder(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with tuneforge",
    revision: str | None = None,
    allow_patterns: Iterable[str] | str | None = None,
    ignore_patterns: Iterable[str] | str | None = None,
    delete_patterns: Iterable[str] | str | None = None,
) -> str:
    """Upload the files of ``folder`` to the hub repo ``repo_id`` (created if missing) in one commit.

    ``repo_id`` is ``namespace/name``, or a bare ``name`` for the token owner's namespace. ``revision`` names
    a branch, created from ``main`` if missing. ``allow_patterns`` / ``ignore_patterns`` / ``delete_patterns``
    are huggingface_hub's (fnmatch on paths relative to ``folder``, where ``*`` also matches ``/``). Returns
    the commit URL (a ``str``; with huggingface_hub it is a ``CommitInfo`` whose ``.oid`` is the commit id and
    ``.repo_url.repo_id`` the full repo id). Failures raise :class:`HubError` with one line naming the endpoint
    and the repo id.
    """
    folder = Path(os.fspath(folder)).expanduser()

    def commit(api, full_id):
        return api.upload_folder(repo_id=full_id, folder_path=str(folder), commit_message=commit_message,
                                 revision=revision, repo_type="model", allow_patterns=_patterns(allow_patterns),
                                 ignore_patterns=_patterns(ignore_patterns),
                                 delete_patterns=_patterns(delete_patterns))

    return _push(str(folder), repo_id, token, private, revision, commit,
                 problem=None if folder.is_dir() else "not a folder")


def push_files(
    files: Mapping[str, Any],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with tuneforge",
    revision: str | None = None,
    delete_patterns: Iterable[str] | str | None = None,
    source: str | None = None,
) -> str:
    """Upload ``files`` (path in the repo -> local file) to ``repo_id`` (created if missing) in one commit.

    Files already in the repo that match ``delete_patterns`` (fnmatch on their repo path) and are not being
    uploaded are deleted in the same commit. ``source`` names what is pushed in error messages. Returns the
    commit URL like :func:`push_folder`; failures raise :class:`HubError`.
    """
    files = {str(k).replace(os.sep, "/"): Path(os.fspath(v)) for k, v in files.items()}
    source = source or ", ".join(sorted(files)) or "nothing"
    missing = sorted(k for k, v in files.items() if not v.is_file())
    problem = f"not a file: {', '.join(missing)}" if missing else None if files else "no files to push"
    deletes = _patterns(delete_patterns) or []

    def commit(api, full_id):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in sorted(files.items())]
        if deletes:
            remote = api.list_repo_files(full_id, revision=revision, repo_type="model")
            operations += [CommitOperationDelete(path_in_repo=name) for name in remote
                           if name not in files and any(fnmatch.fnmatch(name, p) for p in deletes)]
        return api.create_commit(repo_id=full_id, operations=operations, commit_message=commit_message,
                                 revision=revision, repo_type="model")

    return _push(source, repo_id, token, private, revision, commit, problem=problem)


def _patterns(patterns) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


#: Files of a training output or checkpoint folder that are not part of the model: hidden and temporary
#: files, logs, and the state needed only to resume training.
NOT_MODEL_FILES = (".*", "_*", "*.tmp", "*.log", "*.jsonl", "events.out.tfevents.*", "trainer_state.json",
                   "optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt", "checkpoint_manifest.json")
#: Where :func:`push_checkpoint` puts the whole latest checkpoint in the repo (as the reference's
#: ``hub_strategy="checkpoint"`` does), so training can be resumed from the hub.
LAST_CHECKPOINT = "last-checkpoint"


def model_files(folder) -> dict[str, Path]:
    """The model folder inside a training output folder: its top-level files (config, weights, tokenizer,
    training_args.json, README.md, ...) without logs, training state, checkpoint-* or other subfolders."""
    folder = Path(os.fspath(folder)).expanduser()
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and not any(fnmatch.fnmatch(p.name, pattern) for pattern in NOT_MODEL_FILES)}


def push_checkpoint(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str | None = None, revision: str | None = None) -> str:
    """Push a training checkpoint in one commit: its model files (:func:`model_files`) to the repo root, and
    the whole checkpoint (optimizer, scheduler, RNG and trainer state too) under ``last-checkpoint/``,
    replacing the previous one there."""
    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        return push_folder(folder, repo_id, token=token)  # fails, saying it is not a folder
    files: dict[str, Path] = dict(model_files(folder))
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            files[f"{LAST_CHECKPOINT}/{path.relative_to(folder).as_posix()}"] = path
    return push_files(files, repo_id, token=token, private=private, revision=revision, source=str(folder),
                      commit_message=commit_message or f"Upload {folder.name}",
                      delete_patterns=[f"{LAST_CHECKPOINT}/*"])


def dataset_name(dataset) -> str | None:
    """The name of a ``datasets.Dataset`` (``info.dataset_name`` or ``info.builder_name``, with its config
    when not the default), a string as is, else ``None``: what a model card can say about the training data."""
    if isinstance(dataset, str):
        return dataset or None
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    if not isinstance(name, str) or not name or name in ("generator", "json", "csv", "parquet", "text", "arrow"):
        return None
    config = getattr(info, "config_name", None)
    return f"{name}/{config}" if isinstance(config, str) and config not in ("", "default") else name


def redact(obj) -> dict:
    """A copy of ``obj`` (a mapping, a dataclass or an object with ``to_dict``) where every key containing
    "token" (any case, at any depth) whose value is set is replaced by ``"<redacted>"``."""
    return _redact(_as_dict(obj))


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    raise TypeError(f"cannot redact an object of type {type(obj).__name__}")


def _is_token_key(key) -> bool:
    return isinstance(key, str) and "token" in key.lower()


def _drop_token_keys(value):
    if isinstance(value, Mapping):
        return {k: _drop_token_keys(v) for k, v in value.items() if not _is_token_key(k)}
    if isinstance(value, (list, tuple)):
        return type(value)(_drop_token_keys(v) for v in value)
    return value


def _redact(value):
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if v not in (None, "", False) else v) if _is_token_key(k) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v) for v in value)
    return value


_SPEED_KEYS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
# What the reference's Trainer card takes from the last evaluation for card data: metric names the hub knows.
_METRIC_TAGS = ("accuracy", "bleu", "f1", "matthews_correlation", "pearsonr", "precision", "recall", "rouge",
                "sacrebleu", "spearmanr", "wer")
# The hub's task ids (and the reference card's names for them), by the end of a model class's name.
_TASKS = {"ForSequenceClassification": ("text-classification", "Text Classification"),
          "ForTokenClassification": ("token-classification", "Token Classification"),
          "ForQuestionAnswering": ("question-answering", "Question Answering"),
          "ForMultipleChoice": ("multiple-choice", "Multiple Choice"),
          "ForMaskedLM": ("fill-mask", "Masked Language Modeling"),
          "ForCausalLM": ("text-generation", "Causal Language Modeling")}
_TASK_NAMES = dict(_TASKS.values())


def model_task(model) -> str | None:
    """The hub task id of ``model`` from its class name (a LoRA wrapper's base model's), as the reference's
    Trainer infers the card's task: ``BertForSequenceClassification`` -> ``"text-classification"``."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    name = type(base).__name__
    return next((task for suffix, (task, _) in _TASKS.items() if name.endswith(suffix)), None)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4f}" if abs(value) >= 1e-4 or value == 0 else f"{value:.3e}"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _hyperparameter_lines(hyperparameters) -> list[str]:
    if hyperparameters is None:
        return ["No training hyperparameters were recorded."]
    params = _as_dict(hyperparameters)
    lines = []
    for key, value in params.items():
        if _is_token_key(key):
            continue
        value = _drop_token_keys(value)
        if hasattr(value, "value") and type(value).__module__ != "builtins":  # enums
            value = value.value
        # Exact values (as the reference's card: "learning_rate: 2e-05"), not rounded like the metrics.
        shown = f"{value:g}" if isinstance(value, float) and math.isfinite(value) else _fmt(value)
        lines.append(f"- {key}: {shown}")
    return lines or ["No training hyperparameters were recorded."]


def _eval_table(log_history) -> list[str]:
    rows = [dict(e) for e in (log_history or ()) if isinstance(e, Mapping) and any(str(k).startswith("eval_") for k in e)]
    if not rows:
        return ["No evaluation results were logged."]
    columns = [c for c in ("epoch", "step") if any(c in r for r in rows)]
    metrics: list[str] = []
    for row in rows:
        for key in row:
            if (isinstance(key, str) and key.startswith("eval_") and key not in _SPEED_KEYS
                    and not _is_token_key(key) and key not in metrics):
                metrics.append(key)
    metrics.sort(key=lambda m: m != "eval_loss")  # the loss first, then the metrics in the order logged
    header = [c.capitalize() for c in columns] + [m[len("eval_"):].replace("_", " ").capitalize() for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        cells = [("-" if c not in row else str(round(row[c], 2)) if c == "epoch" and isinstance(row[c], float)
                  else _fmt(row[c])) for c in columns + metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _last_metrics(log_history) -> dict[str, tuple[str, Any]]:
    """Metric tag -> (logged key, value) for the known metrics of the last evaluation in ``log_history``."""
    evaluations = [e for e in (log_history or ()) if isinstance(e, Mapping) and "eval_loss" in e]
    found = {}
    for key, value in (evaluations[-1] if evaluations else {}).items():
        tag = str(key).removeprefix("eval_").lower()
        tag = "rouge" if tag == "rouge1" else tag
        if tag in _METRIC_TAGS and isinstance(value, (int, float)) and not isinstance(value, bool):
            found.setdefault(tag, (str(key), value))
    return found


def write_model_card(
    folder,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    dataset=None,
    log_history=(),
    hyperparameters=None,
    id2label=None,
    adapter: bool = False,
    language=None,
    license: str | None = None,
    tags=None,
    tasks=None,
    dataset_args=None,
) -> Path:
    """Write ``folder/README.md``, a ``huggingface_hub.ModelCard``: card data (library_name, base_model when it
    is a hub id, tags, datasets, language, license, metrics and a model-index with the last evaluation's known
    metrics per task and dataset, as the reference's Trainer card) and sections for the description, label names,
    evaluation results (one table row per evaluation in ``log_history``), training hyperparameters and framework
    versions. ``tasks`` are hub task ids (default text-classification when there are label names),
    ``dataset_args`` the datasets' configurations. Keys containing "token" are never written."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(os.fspath(folder)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    as_list = lambda v: [str(v)] if isinstance(v, str) else [str(x) for x in v or ()]  # noqa: E731
    datasets, configs = as_list(dataset), as_list(dataset_args)
    configs += [None] * (len(datasets) - len(configs))
    base_is_repo = bool(base_model) and not Path(str(base_model)).exists()
    try:
        base_is_repo and validate_repo_id(str(base_model))
    except HFValidationError:
        base_is_repo = False
    tasks = as_list(tasks) or (["text-classification"] if id2label else [])

    card_tags = ["tuneforge", "fine-tuned"] + (["peft", "lora"] if adapter else [])
    card_tags += [t for t in tasks + as_list(tags) if t not in card_tags]
    title = (repo_id or folder.resolve().name).split("/")[-1]
    metrics = _last_metrics(log_history)
    results = [EvalResult(task_type=task, task_name=_TASK_NAMES.get(task), dataset_type=name, dataset_name=name,
                          dataset_config=config, metric_type=tag, metric_name=key, metric_value=value)
               for task in tasks for name, config in zip(datasets, configs) for tag, (key, value) in metrics.items()]
    data = ModelCardData(library_name="tuneforge", base_model=str(base_model) if base_is_repo else None,
                         language=language, license=license, tags=card_tags, datasets=datasets or None,
                         metrics=list(metrics) or None, model_name=title, eval_results=results or None)
    front = data.to_yaml(original_order=["library_name", "base_model", "language", "license", "tags", "datasets",
                                         "metrics"])

    if base_model:
        with _hub_settings() as constants:
            endpoint = constants.ENDPOINT
        source = f"[{base_model}]({endpoint}/{base_model})" if base_is_repo else f"`{Path(str(base_model)).name}`"
        description = f"This model is a fine-tuned version of {source}"
    else:
        description = "This model was fine-tuned"
    named = [f"{d} ({c})" if c else d for d, c in zip(datasets, configs)]
    description += f" on the {', '.join(named)} dataset" if datasets else ""
    description += " with tuneforge."
    if adapter:  # the folder holds a LoRA adapter (adapter_config.json + adapter_model.safetensors), not the model
        description += (" It is a LoRA adapter in PEFT's format: load the base model, then "
                        "`PeftModel.from_pretrained(base, repo)` (tuneforge or peft), or merge it with `tuneforge merge`.")

    lines = ["---", front, "---", "", f"# {title}", ""]
    lines += ["## Model description", "", description, ""]
    if repo_id:
        lines += [f"Repository: `{repo_id}`", ""]
    lines += ["## Label names", ""]
    if id2label:
        items = sorted(dict(id2label).items(), key=lambda kv: (int(kv[0]) if str(kv[0]).lstrip("-").isdigit() else 0, str(kv[0])))
        lines += ["| id | label |", "|---|---|"] + [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in items]
    else:
        lines.append("No label names were given.")
    lines += ["", "## Evaluation results", ""] + _eval_table(log_history)
    lines += ["", "## Training hyperparameters", ""] + _hyperparameter_lines(hyperparameters)
    lines += ["", "## Framework versions", ""]
    for label, dist in (("tuneforge", None), ("torch", "torch"), ("tokenizers", "tokenizers"), ("datasets", "datasets")):
        version = _tuneforge_version() if dist is None else (_version(dist) or "not installed")
        lines.append(f"- {label}: {version}")
    lines.append(f"- python: {platform.python_version()}")
    path = folder / "README.md"
    ModelCard("\n".join(lines) + "\n").save(path)  # parsed by huggingface_hub: the card data must be valid
    return path
