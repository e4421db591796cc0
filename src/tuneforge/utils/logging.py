"""The reference's `transformers.utils.logging` functions over tuneforge's logger ("tuneforge"), so scripts that
set verbosity and handlers the reference's way set tuneforge's.

As in the reference, the library's logger gets its own stderr handler and stops propagating to the root logger the
first time one of these functions is used (scripts that also call logging.basicConfig print each line once); the
level starts at TUNEFORGE_VERBOSITY (or TRANSFORMERS_VERBOSITY), else warning."""
from __future__ import annotations

import logging
import os
import sys
import threading
from logging import CRITICAL, DEBUG, ERROR, FATAL, INFO, NOTSET, WARN, WARNING  # noqa: F401

from ..errors import InputError

_LIBRARY = "tuneforge"
_lock = threading.Lock()
_default_handler: logging.Handler | None = None
_progress_bar = True
log_levels = {"detail": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}


def _default_level() -> int:
    name = os.environ.get("TUNEFORGE_VERBOSITY") or os.environ.get("TRANSFORMERS_VERBOSITY")
    if name is None:
        return logging.WARNING
    if name not in log_levels:
        raise InputError(f"TUNEFORGE_VERBOSITY={name!r} is not one of {', '.join(log_levels)}")
    return log_levels[name]


def _root() -> logging.Logger:
    return logging.getLogger(_LIBRARY)


def _configure() -> None:
    global _default_handler
    with _lock:
        if _default_handler is not None:
            return
        _default_handler = logging.StreamHandler(sys.stderr)
        _default_handler.flush = sys.stderr.flush
        root = _root()
        root.addHandler(_default_handler)
        root.setLevel(_default_level())
        root.propagate = False


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
    _root().addHandler(handler)


def remove_handler(handler: logging.Handler) -> None:
    _configure()
    _root().removeHandler(handler)


def disable_propagation() -> None:
    _configure()
    _root().propagate = False


def enable_propagation() -> None:
    _configure()
    _root().propagate = True


def enable_explicit_format() -> None:
    """[LEVEL|file:line] time >> message, on every handler of the library's logger."""
    _configure()
    formatter = logging.Formatter("[%(levelname)s|%(filename)s:%(lineno)s] %(asctime)s >> %(message)s")
    for handler in _root().handlers:
        handler.setFormatter(formatter)


def reset_format() -> None:
    _configure()
    for handler in _root().handlers:
        handler.setFormatter(None)


def is_progress_bar_enabled() -> bool:
    return _progress_bar


def enable_progress_bar() -> None:
    global _progress_bar
    _progress_bar = True


def disable_progress_bar() -> None:
    """The Trainer's tqdm bars stay off until enable_progress_bar()."""
    global _progress_bar
    _progress_bar = False
