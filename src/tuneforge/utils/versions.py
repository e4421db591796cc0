"""require_version: the reference's check that an installed package meets a pip requirement."""
from __future__ import annotations

import importlib.metadata

from packaging.requirements import InvalidRequirement, Requirement

from ..errors import InputError

# Requirements on the reference itself: tuneforge stands in for it, so they are met.
STANDS_IN_FOR = {"transformers"}


def require_version(requirement: str, hint: str | None = None) -> None:
    """Raise ImportError if the package named in `requirement` (pip syntax, e.g. "datasets>=1.8.0") is missing
    or its version is outside the range; `hint` is appended to the message. "python>=3.9" checks the interpreter."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        raise InputError(f"requirement needs to be in the pip package format, e.g., package_a==1.23, or "
                         f"package_b>=1.23, but got {requirement}") from None
    hint = f"\n{hint}" if hint else ""
    if req.name.lower() in STANDS_IN_FOR:
        return
    if req.name.lower() == "python":
        import platform
        got = platform.python_version()
    else:
        try:
            got = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise importlib.metadata.PackageNotFoundError(
                f"The '{requirement}' distribution was not found and is required by this application. {hint}"
            ) from None
    if req.specifier and not req.specifier.contains(got, prereleases=True):
        raise ImportError(f"{requirement} is required for a normal functioning of this module, but found "
                          f"{req.name}=={got}.{hint}")


def require_version_core(requirement: str) -> None:
    require_version(requirement, "Try: pip install transformers -U or pip install -e '.[dev]' if you're working "
                                 "with git main")
