"""The reference's `transformers.utils` names that scripts import: `logging`, `check_min_version`."""
from __future__ import annotations

from . import logging


def check_min_version(min_version: str) -> None:
    """Scripts call this with the Transformers version they were written for. tuneforge follows the reference's
    current API, so any version is accepted; one that is not a version at all raises packaging's InvalidVersion
    (a ValueError naming it), as the reference's does."""
    from packaging.version import Version
    Version(str(min_version))


__all__ = ["check_min_version", "logging"]
