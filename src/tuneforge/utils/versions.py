"""require_version: the reference's check that an installed package meets a pip-style requirement.

The requirement is parsed with the reference's own rules rather than packaging's, so a script's requirement is
accepted or refused the same way under either library (the reference refuses "~=" and spaces around operators)."""
from __future__ import annotations

import importlib.metadata
import operator
import re
import sys

from packaging import version

from ..errors import InputError

ops = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">=": operator.ge,
       ">": operator.gt}

# Requirements on the reference itself: tuneforge stands in for it, so they are met (and it need not be installed).
STANDS_IN_FOR = {"transformers"}


def _bad_format(requirement: str) -> InputError:
    return InputError(f"requirement needs to be in the pip package format, e.g., package_a==1.23, or "
                      f"package_b>=1.23, but got {requirement}")


def _parse(requirement: str) -> tuple[str, dict[str, str]]:
    """"pkg>=1.0,<2" -> ("pkg", {">=": "1.0", "<": "2"}); a bare name has no bounds."""
    if re.match(r"^[\w_\-\d]+$", requirement):
        return requirement, {}
    match = re.findall(r"^([^!=<>\s]+)([\s!=<>]{1,2}.+)", requirement)
    if not match:
        raise _bad_format(requirement)
    pkg, want_full = match[0]
    wanted = {}
    for want in want_full.split(","):
        match = re.findall(r"^([\s!=<>]{1,2})(.+)", want)
        if not match:
            raise _bad_format(requirement)
        op, want_ver = match[0]
        if op not in ops:
            raise InputError(f"{requirement}: need one of {list(ops)}, but got {op}")
        wanted[op] = want_ver
    return pkg, wanted


def _compare(op: str, got: str | None, want: str, requirement: str, pkg: str, hint: str) -> None:
    if got is None:  # a broken install's metadata
        raise ValueError(f"Unable to compare versions for {requirement}: need={want} found={got}. This is unusual. "
                         f"Consider reinstalling {pkg}.")
    if not ops[op](version.parse(got), version.parse(want)):
        raise ImportError(f"{requirement} is required for a normal functioning of this module, but found "
                          f"{pkg}=={got}.{hint}")


def require_version(requirement: str, hint: str | None = None) -> None:
    """Raise ImportError if the package named in `requirement` (e.g. "datasets>=1.8.0", "numpy", "tqdm>=4,<5") has
    a version outside the range, PackageNotFoundError if it is not installed, InputError (a ValueError) if the
    requirement is malformed; `hint` is appended to the message. "python>=3.9" checks the interpreter."""
    hint = f"\n{hint}" if hint is not None else ""
    pkg, wanted = _parse(requirement)
    if pkg.lower() in STANDS_IN_FOR:
        return
    if pkg == "python":
        got = ".".join(str(x) for x in sys.version_info[:3])
    else:
        try:
            got = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            raise importlib.metadata.PackageNotFoundError(
                f"The '{requirement}' distribution was not found and is required by this application. {hint}"
            ) from None
    for op, want in wanted.items():
        _compare(op, got, want, requirement, pkg, hint)


def require_version_core(requirement: str) -> None:
    require_version(requirement, "Try: `pip install transformers -U` or `pip install -e '.[dev]'` if you're "
                                 "working with git main")
