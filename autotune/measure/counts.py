"""Counters read twice around a span: a dataclass of numbers whose difference is what happened in
the span and whose sum adds spans up (the allocator's slow paths, Python's collections, CUDA-graph
recordings: measure/slow_paths.py)."""

from __future__ import annotations

from dataclasses import astuple
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time
    from typing_extensions import Self


T = TypeVar("T")


def difference(now: T | None, before: T | None) -> T | None:
    """now - before, or None where either was not counted (a counter this torch or device lacks)."""
    return now - before if now is not None and before is not None else None  # type: ignore[operator]


class Counts:
    """Mixin for a frozen dataclass whose fields are all numbers: + and - field by field."""

    def __add__(self, other: Self) -> Self:
        return type(self)(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __sub__(self, before: Self) -> Self:
        return type(self)(*(a - b for a, b in zip(astuple(self), astuple(before))))
