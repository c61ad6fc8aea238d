"""One exception hierarchy for everything a user can get wrong.

The CLI turns any ``AutotuneError`` into one line on stderr and a non-zero exit code; nothing
else is caught there, so a bug still shows its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutotuneError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""

    exit_code: int = 2


class ModelNotFoundError(AutotuneError):
    pass


class SpaceError(AutotuneError):
    pass


class DeviceError(AutotuneError):
    pass


class StudyMismatchError(AutotuneError):
    pass


class OutputDirError(AutotuneError):
    pass


class StorageError(AutotuneError):
    pass


class DeploymentFileError(AutotuneError):
    pass


class MissingDependencyError(AutotuneError):
    pass


class DataError(AutotuneError):
    """A validation set (or an image or video it names) that cannot be read or does not fit."""


class ExportError(AutotuneError):
    """A best.yaml setting a serving target cannot take, or a bad export option."""


def unknown_name_message(kind: str, name: str, allowed: Iterable[str]) -> str:
    """'unknown quantization 'nf5' (did you mean 'bnb-nf4'?); allowed: ...' — registries share this."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; allowed: {', '.join(allowed)}"


def pydantic_message(err: dict) -> str:
    """One pydantic error as the one line users read: a bound says the bound and the fix."""
    bounds = err.get("ctx") or {}
    value = err.get("input")
    if err.get("type") == "less_than_equal" and "le" in bounds:
        return f"{value} is above the upper bound {bounds['le']:,}; use at most {bounds['le']:,}"
    if err.get("type") == "greater_than_equal" and "ge" in bounds:
        return f"{value} is below the lower bound {bounds['ge']:,}; use at least {bounds['ge']:,}"
    if err.get("type") == "greater_than" and "gt" in bounds:
        return f"{value} must be above {bounds['gt']:,}"
    return str(err["msg"]).removeprefix("Value error, ")
