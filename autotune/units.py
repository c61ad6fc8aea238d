"""Quantities users type: memory sizes (--memory-budget 24GiB) and quality floors (--min-quality
0.98 | abs:0.6), read into numbers with one-line errors that say what to write instead."""

from __future__ import annotations

import math
import re
from typing import Literal


def parse_memory(text: str | float | int) -> float:
    """'24GiB' -> 24.0; '24GB' -> 22.35 (decimal); '512MiB' -> 0.5; a bare number is GiB."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|MiB|MB|TiB|TB|G|M)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 24GiB, 24GB or 512MiB")
    value, unit = float(m.group(1)), (m.group(2) or "GiB").lower()
    factor = {"gib": 1.0, "g": 1.0, "mib": 1 / 1024, "m": 1 / 1024, "tib": 1024.0, "gb": 1e9 / 2**30, "mb": 1e6 / 2**30, "tb": 1e12 / 2**30}[unit]
    return value * factor


def parse_min_quality(text: str) -> tuple[Literal["relative", "absolute"], float]:
    """'0.98' -> relative to the reference; 'abs:0.6' -> absolute score. Both are fractions in
    (0, 1]: a floor above 1 no candidate can meet (a study would run for nothing), and 98 is
    almost surely 98%, so the error says 0.98."""
    mode: Literal["relative", "absolute"] = "absolute" if text.startswith("abs:") else "relative"
    try:
        value = float(text.removeprefix("abs:"))
    except ValueError:
        raise ValueError(f"cannot read {text!r}; write e.g. 0.98 (98% of the reference) or abs:0.6") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is out of range; a relative floor is a fraction like 0.98, an absolute one in (0, 1]")
    if value > 1:
        prefix = "abs:" if mode == "absolute" else ""
        what = "an absolute score in (0, 1]" if mode == "absolute" else "a fraction of the reference's score"
        fix = f"did you mean {prefix}{round(value / 100, 6):g}?" if value <= 100 else "it must be ≤ 1"
        raise ValueError(f"--min-quality {text} is out of range: {what}; {fix}" if mode == "absolute"
                         else f"--min-quality {text} is {what}; {fix}")
    return mode, value


def parse_gpu_list(value):
    """'0,1,2,3' (or a list) -> distinct GPU indices; None stays None."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"cannot read {value!r}; list GPU indices like 0,1,2,3") from None
    if value is not None and (not value or len(set(value)) != len(value) or min(value) < 0):
        raise ValueError(f"{value} is not a list of distinct GPU indices like 0,1,2,3")
    return value
