"""The reference's `transformers.utils.logging` over tuneforge's logger ("tuneforge"), so scripts that set
verbosity, handlers and progress bars the reference's way set tuneforge's.

As in the reference, the library's logger gets its own stderr handler (lines prefixed "[tuneforge] ") and stops
propagating to the root logger (except under CI=1) the first time one of these functions is used, so scripts that
also call logging.basicConfig print each line once. The level starts at TUNEFORGE_VERBOSITY, else
TRANSFORMERS_VERBOSITY (what scripts written for the reference set), else warning; "detail" is debug with the
logger name and line in every line."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from logging import CRITICAL, DEBUG, ERROR, FATAL, INFO, NOTSET, WARN, WARNING  # noqa: F401
from typing import Any

_LIBRARY = "tuneforge"
_lock = threading.Lock()
_default_handler: logging.Handler | None = None
log_levels = {"detail": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}


def _env(name: str) -> str | None:
    """TUNEFORGE_<name>, else the reference's TRANSFORMERS_<name>; empty counts as unset, as there."""
    return os.environ.get(f"TUNEFORGE_{name}") or os.environ.get(f"TRANSFORMERS_{name}") or None


def _is_true(value: str | None) -> bool:
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


def _default_level() -> int:
    name = _env("VERBOSITY")
    if name is None:
        return logging.WARNING
    if name not in log_levels:
        # The reference warns and carries on: a typo in an environment variable should not stop a run.
        logging.getLogger().warning(f"Unknown option TUNEFORGE_VERBOSITY/TRANSFORMERS_VERBOSITY={name}, has to be "
                                    f"one of: {', '.join(log_levels)}")
        return logging.WARNING
    return log_levels[name]


def _root() -> logging.Logger:
    return logging.getLogger(_LIBRARY)


def _configure() -> None:
    global _default_handler
    with _lock:
        if _default_handler is not None:
            return
        if sys.stderr is None:  # pythonw / frozen apps have no stderr
            sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
        _default_handler = logging.StreamHandler(sys.stderr)
        _default_handler.flush = sys.stderr.flush
        detail = _env("VERBOSITY") == "detail"
        _default_handler.setFormatter(logging.Formatter(
            "%(levelname)s [%(name)s:%(lineno)s] %(asctime)s %(message)s" if detail else f"[{_LIBRARY}] %(message)s"))
        root = _root()
        root.addHandler(_default_handler)
        root.setLevel(_default_level())
        root.propagate = _is_true(os.environ.get("CI"))  # as the reference: CI log capture sees the lines


def _reset() -> None:
    """Back to the state before any function here was used (tests)."""
    global _default_handler
    with _lock:
        if _default_handler is None:
            return
        root = _root()
        root.removeHandler(_default_handler)
        root.setLevel(logging.NOTSET)
        root.propagate = True
        _default_handler = None


def get_log_levels_dict() -> dict[str, int]:
    return log_levels


def captureWarnings(capture: bool) -> None:  # noqa: N802 (the reference's name)
    """warnings.warn(...) goes to the "py.warnings" logger, printed by the library's handler at its level."""
    logger = get_logger("py.warnings")
    if not logger.handlers:
        logger.addHandler(_default_handler)
    logger.setLevel(_root().level)
    logging.captureWarnings(capture)


def get_logger(name: str | None = None) -> logging.Logger:
    """A logger; with no name, the library's."""
    _configure()
    return logging.getLogger(name or _LIBRARY)


def get_verbosity() -> int:
    _configure()
    return _root().getEffectiveLevel()


def set_verbosity(verbosity: int) -> None:
    _configure()
    _root().setLevel(verbosity)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    _configure()
    _root().removeHandler(_default_handler)


def enable_default_handler() -> None:
    _configure()
    _root().addHandler(_default_handler)


def add_handler(handler: logging.Handler) -> None:
    _configure()
    assert handler is not None, "add_handler(None): give a logging.Handler"
    _root().addHandler(handler)


def remove_handler(handler: logging.Handler) -> None:
    _configure()
    # An AssertionError, as in the reference, for a handler that was never added.
    assert handler is not None and handler in _root().handlers, \
        f"remove_handler({handler!r}): not a handler of the {_LIBRARY!r} logger"
    _root().removeHandler(handler)


def disable_propagation() -> None:
    _configure()
    _root().propagate = False


def enable_propagation() -> None:
    """Lines also reach the root logger's handlers; disable_default_handler() then avoids printing them twice."""
    _configure()
    _root().propagate = True


def enable_explicit_format() -> None:
    """[LEVEL|file:line] time >> message, on every handler the library's logger has now."""
    for handler in _root().handlers:
        handler.setFormatter(logging.Formatter("[%(levelname)s|%(filename)s:%(lineno)s] %(asctime)s >> %(message)s"))


def reset_format() -> None:
    """Bare messages on every handler the library's logger has now (the "[tuneforge] " prefix goes too)."""
    for handler in _root().handlers:
        handler.setFormatter(None)


def warning_advice(self, *args, **kwargs) -> None:
    """logger.warning, silenced by TUNEFORGE_NO_ADVISORY_WARNINGS (or TRANSFORMERS_NO_ADVISORY_WARNINGS)."""
    if _env("NO_ADVISORY_WARNINGS"):
        return
    self.warning(*args, **kwargs)


@functools.lru_cache(None)
def warning_once(self, *args, **kwargs) -> None:
    """logger.warning, once per (logger, arguments): the cache is keyed on the call's arguments, as there."""
    self.warning(*args, **kwargs)


@functools.lru_cache(None)
def info_once(self, *args, **kwargs) -> None:
    """logger.info, once per (logger, arguments)."""
    self.info(*args, **kwargs)


# Scripts call these on any logger (logger.warning_once(...)), so, as the reference does, every Logger gets them.
logging.Logger.warning_advice = warning_advice
logging.Logger.warning_once = warning_once
logging.Logger.info_once = info_once


# Progress bars start off where HF_HUB_DISABLE_PROGRESS_BARS says so, as the reference's do.
_tqdm_active = not _is_true(os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"))
_tqdm_hook: Callable[[Callable[..., Any], tuple, dict], Any] | None = None


class EmptyTqdm:
    """What tqdm(...) gives while progress bars are off: iterates like the bar would, every method does nothing."""

    def __init__(self, *args, **kwargs):
        self._iterator = args[0] if args else None

    def __iter__(self):
        return iter(self._iterator)

    def __getattr__(self, _):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, type_, value, traceback):
        return


class _tqdm_cls:  # noqa: N801 (the reference's name)
    def __call__(self, *args, **kwargs):
        from tqdm.auto import tqdm as factory
        factory = factory if _tqdm_active else EmptyTqdm
        if _tqdm_hook is not None:
            return _tqdm_hook(factory, args, kwargs)
        return factory(*args, **kwargs)

    def set_lock(self, *args, **kwargs):
        self._lock = None
        if _tqdm_active:
            from tqdm.auto import tqdm as factory
            return factory.set_lock(*args, **kwargs)

    def get_lock(self):
        if _tqdm_active:
            from tqdm.auto import tqdm as factory
            return factory.get_lock()


tqdm = _tqdm_cls()


def set_tqdm_hook(hook: Callable[[Callable[..., Any], tuple, dict], Any] | None):
    """hook(factory, args, kwargs) builds every bar `tqdm(...)` makes (factory: tqdm.auto.tqdm, or EmptyTqdm while
    bars are off); None removes it. Returns the previous hook."""
    global _tqdm_hook
    previous, _tqdm_hook = _tqdm_hook, hook
    return previous


def is_progress_bar_enabled() -> bool:
    return bool(_tqdm_active)


def enable_progress_bar() -> None:
    global _tqdm_active
    _tqdm_active = True


def disable_progress_bar() -> None:
    """The Trainer's tqdm bars, and those of `tqdm(...)` here, stay off until enable_progress_bar()."""
    global _tqdm_active
    _tqdm_active = False
