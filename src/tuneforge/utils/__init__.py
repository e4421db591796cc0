"""The reference's `transformers.utils` names that scripts import: `logging`, `check_min_version`."""
from __future__ import annotations

from ..errors import InputError
from . import logging


def check_min_version(min_version: str) -> None:
    """Scripts call this with the Transformers version they were written for. tuneforge follows the reference's
    current API, so any version is accepted; the string must still be a version."""
    from packaging.version import InvalidVersion, Version
    try:
        Version(str(min_version))
    except InvalidVersion:
        raise InputError(f"check_min_version({min_version!r}): not a version number") from None


__all__ = ["check_min_version", "logging"]
