"""The traffic a config is measured under (issue 20), described once: a `workload:` section of the
search-space file, or the `--workload` flag (which replaces the section whole).

Three kinds:

- ``fixed`` (the default, today's shape, so existing studies stay comparable): every request has
  max_length - new_tokens prompt tokens and new_tokens output tokens, at each config's own
  max_length. No request is ever over the limit.
- ``distribution``: ``prompt_tokens`` (required) and ``output_tokens`` (default: new_tokens), each
  one of these length shapes (the shape is told by its keys, or named with ``shape:``):

  ====================================  ==========  ==============================================
  ``512``                               constant    every request 512 tokens
  ``{min: 64, max: 2048}``              uniform     every whole number in [min, max] equally likely
  ``{mean, stdev, min, max}``           lognormal   a lognormal with that mean and stdev, clipped
  ``{p50, p90, p95, p99, max, min}``    percentiles piecewise-linear inverse CDF through the points
  ====================================  ==========  ==============================================

  Lognormal, not normal: request lengths are positive and right-skewed (a long tail of long
  prompts), which a normal of a large stdev is not (it puts mass below zero). Its mu and sigma
  match the given mean and stdev before clipping; a draw outside [min, max] is *clipped* to the
  bound (not redrawn), so the tail's share of traffic stays in the workload, at max, where
  `over_limit` counts it. (Clipping moves the realised mean a little toward the middle.)
  Percentiles: p50 and max are required; p90, p95, p99 are optional and min defaults to 1. The
  inverse CDF runs straight between the points (0, min), (0.5, p50), (0.9, p90), (0.95, p95),
  (0.99, p99), (1, max) that are given; values must not decrease (equal values are a point mass).
  Prompt and output lengths are drawn independently of each other.
- ``file``: the requests of a JSON-lines file in the validation-set format (autotune/data/schema.py),
  relative to the space file's folder. Prompt lengths are measured with the model's tokenizer
  (a ``count_tokens(example) -> int`` the caller passes, which counts images as their visual
  tokens); the output length of a labelled example is its longest accepted answer's token count,
  of an unlabelled one a draw from ``output_tokens`` beside the file (seed 0, once) or new_tokens,
  of a reranking example 0 (a reranker generates nothing).

Every length is a whole number of tokens in [1, 1,048,576] (max_length's bound in autotune/knobs.py).
Requests longer than a config's max_length are never dropped: `WorkloadSampler.over_limit` counts
them (the share of traffic that config would reject or truncate).

YAML (a ``workload:`` section of the space file; ``kind`` may be left out: a ``file`` key makes it
``file``, a ``prompt_tokens`` or ``output_tokens`` key ``distribution``, no key ``fixed``)::

    workload:
      kind: distribution
      prompt_tokens: {mean: 900, stdev: 600, min: 16, max: 8192}
      output_tokens: {p50: 120, p90: 400, p99: 900, max: 2048, min: 1}

    workload:
      file: traffic.jsonl                   # relative to this space file's folder
      output_tokens: {min: 16, max: 512}    # for its unlabelled examples

The ``--workload`` flag, a compact form of the same keys (``prompt`` for ``prompt_tokens``,
``output`` for ``output_tokens``; relative paths from the current folder; a path cannot hold a
comma)::

    SPEC  := "fixed" | ITEM ("," ITEM)*
    ITEM  := "kind=" KIND | "file=" PATH | "prompt=" LEN | "output=" LEN
    LEN   := INT                          constant
           | INT "-" INT                  uniform between, inclusive
           | KEY ":" NUM ("/" KEY ":" NUM)*   the YAML mapping's keys, e.g. mean:900/stdev:600/min:16/max:8192
    KEY   := mean | stdev | min | max | p50 | p90 | p95 | p99

    --workload prompt=64-2048,output=16-512
    --workload prompt=p50:512/p90:1500/p99:3000/max:4096,output=128
    --workload file=traffic.jsonl,output=16-512

Every bad input is one WorkloadError line naming the field and the fix.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Literal, NamedTuple, Union

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from autotune.data.schema import Example, load_validation_set
from autotune.errors import DataError, SpaceError, pydantic_message, unknown_name_message
from autotune.knobs import knob
from autotune.spec import _Strict

MAX_TOKENS = knob("max_length").high  # 1,048,576: no length of a workload may exceed the longest max_length
KINDS = ("fixed", "distribution", "file")
OVER_LIMIT_DRAWS = 100_000  # a distribution's over-limit share comes from this many seeded draws (std. error <= 0.16 %)
OVER_LIMIT_SEED = 0
SUMMARY_POINTS = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_PERCENTILE_KEYS = ("p50", "p90", "p95", "p99")
_NORMAL = NormalDist()


class WorkloadError(SpaceError):
    """A workload section or --workload flag that cannot be used (one line: the field and the fix)."""


Tokens = Annotated[int, Field(strict=True, ge=1, le=MAX_TOKENS)]
TokensFloat = Annotated[float, Field(strict=True, ge=0, le=MAX_TOKENS)]


# ------------------------------------------------------------------------------ length shapes


class Constant(_Strict):
    shape: Literal["constant"] = "constant"
    value: Tokens

    @property
    def upper(self) -> int:
        return self.value

    def quantile(self, u: float) -> int:
        return self.value

    def describe(self) -> str:
        return f"{self.value}"


class _Bounded(_Strict):
    min: Tokens
    max: Tokens

    @model_validator(mode="after")
    def _min_below_max(self):
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; make min <= max")
        return self

    @property
    def upper(self) -> int:
        return self.max

    def _clip(self, x: float) -> int:
        return max(self.min, min(self.max, round(x)))


class Uniform(_Bounded):
    shape: Literal["uniform"] = "uniform"

    def quantile(self, u: float) -> int:
        return min(self.max, self.min + int(u * (self.max - self.min + 1)))

    def describe(self) -> str:
        return f"uniform {self.min}-{self.max}"


class LogNormal(_Bounded):
    shape: Literal["lognormal"] = "lognormal"
    mean: TokensFloat
    stdev: TokensFloat

    @model_validator(mode="after")
    def _mean_inside(self):
        if not self.min <= self.mean <= self.max:
            raise ValueError(f"mean {self.mean:g} is outside [min, max] = [{self.min}, {self.max}]; "
                             "give a mean between min and max")
        return self

    def quantile(self, u: float) -> int:
        if self.stdev == 0:
            return self._clip(self.mean)
        if u <= 0 or u >= 1:
            return self.min if u <= 0 else self.max
        mu, sigma = self._mu_sigma
        return self._clip(math.exp(mu + sigma * _NORMAL.inv_cdf(u)))

    @functools.cached_property
    def _mu_sigma(self) -> tuple[float, float]:
        """The underlying normal's mean and stdev, from the lognormal's mean and stdev (moments matched)."""
        sigma2 = math.log1p((self.stdev / self.mean) ** 2)
        return math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2)

    def describe(self) -> str:
        return f"lognormal mean {self.mean:g} stdev {self.stdev:g} clipped to {self.min}-{self.max}"


class Percentiles(_Bounded):
    shape: Literal["percentiles"] = "percentiles"
    min: Tokens = 1
    p50: Tokens
    p90: Tokens | None = None
    p95: Tokens | None = None
    p99: Tokens | None = None

    @functools.cached_property
    def knots(self) -> list[tuple[float, str, int]]:
        points = [(0.0, "min", self.min), *((SUMMARY_POINTS[k], k, getattr(self, k)) for k in _PERCENTILE_KEYS), (1.0, "max", self.max)]
        return [(q, name, v) for q, name, v in points if v is not None]

    @model_validator(mode="after")
    def _not_decreasing(self):
        knots = self.knots
        for (_, lo_name, lo), (_, hi_name, hi) in zip(knots, knots[1:]):
            if hi < lo:
                raise ValueError(f"percentiles must not decrease: {hi_name} {hi} is below {lo_name} {lo}; "
                                 f"give {hi_name} >= {lo_name}")
        return self

    def quantile(self, u: float) -> int:
        knots = self.knots
        for (q0, _, v0), (q1, _, v1) in zip(knots, knots[1:]):
            if u <= q1:
                return self._clip(v0 + (v1 - v0) * (u - q0) / (q1 - q0))
        return self.max

    def describe(self) -> str:
        return "percentiles " + " ".join(f"{name} {v}" for _, name, v in self.knots)


SHAPES = {"constant": Constant, "uniform": Uniform, "lognormal": LogNormal, "percentiles": Percentiles}
_SHAPE_HINT = ("give a number of tokens, {min, max} (uniform), {mean, stdev, min, max} (lognormal) "
               "or {p50, p90, p99, max} (percentiles)")


def _infer_shape(raw):
    """512 -> constant; a mapping without `shape` is told by its keys."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a length; {_SHAPE_HINT}")
    if isinstance(raw, int):
        return {"shape": "constant", "value": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{raw!r} is not a length; {_SHAPE_HINT}")
    if "shape" in raw:
        if raw["shape"] not in SHAPES:
            raise ValueError(unknown_name_message("length shape", str(raw["shape"]), SHAPES))
        return raw
    keys = set(raw)
    percentiles, moments = keys & set(_PERCENTILE_KEYS), keys & {"mean", "stdev"}
    if percentiles and moments:
        raise ValueError(f"mixes {', '.join(sorted(moments))} (lognormal) with {', '.join(sorted(percentiles))} "
                         "(percentiles); give one of the two")
    if percentiles:
        return {"shape": "percentiles", **raw}
    if moments:
        return {"shape": "lognormal", **raw}
    if "value" in keys:
        return {"shape": "constant", **raw}
    if not keys:
        raise ValueError(f"is empty; {_SHAPE_HINT}")
    return {"shape": "uniform", **raw}


Lengths = Annotated[Union[Constant, Uniform, LogNormal, Percentiles], Field(discriminator="shape"), BeforeValidator(_infer_shape)]


# ------------------------------------------------------------------------------ the workload


class Workload(_Strict):
    """One workload section. Validate it with `parse_workload` (paths relative to a folder, one-line
    errors); the file kind's examples are read (and checked) when it is validated."""

    kind: str = "fixed"
    prompt_tokens: Lengths | None = None
    output_tokens: Lengths | None = None
    file: Path | None = None
    _examples: list[Example] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _infer_kind(cls, raw):
        if isinstance(raw, dict) and "kind" not in raw:
            kind = "file" if "file" in raw else "distribution" if {"prompt_tokens", "output_tokens"} & set(raw) else "fixed"
            raw = {"kind": kind, **raw}
        return raw

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(unknown_name_message("workload kind", kind, KINDS))
        return kind

    @field_validator("file", mode="before")
    @classmethod
    def _resolve(cls, value, info: ValidationInfo):
        if value is None:
            return value
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"{value!r} is not a path; give the JSON-lines file's path")
        path = Path(value).expanduser()
        base = Path((info.context or {}).get("base_dir", ".")).resolve()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise ValueError(f"{path} does not exist (relative paths are read from {base}); give an existing .jsonl file")
        if not path.is_file():
            raise ValueError(f"{path} is not a file; give a JSON-lines (.jsonl) file")
        if info.data.get("kind") == "file" and info.context is not None:  # read (and checked) once, here
            try:
                info.context["examples"] = load_validation_set(path, bool(info.context.get("allow_outside")))
            except DataError as e:
                raise ValueError(str(e)) from None
        return path

    @model_validator(mode="after")
    def _keys_fit_the_kind(self, info: ValidationInfo):
        if self.kind == "fixed":
            extra = next((k for k in ("prompt_tokens", "output_tokens", "file") if getattr(self, k) is not None), None)
            if extra:
                raise ValueError(f"kind fixed takes no {extra} (every request is max_length - new_tokens prompt tokens and "
                                 "new_tokens output tokens); drop it, or use kind distribution or file")
        elif self.kind == "distribution":
            if self.prompt_tokens is None:
                raise ValueError("kind distribution needs prompt_tokens, e.g. {min: 64, max: 2048}")
            if self.file is not None:
                raise ValueError("kind distribution takes no file; drop it, or use kind file")
        else:
            if self.file is None:
                raise ValueError("kind file needs file: the path of a JSON-lines file of prompts")
            if self.prompt_tokens is not None:
                raise ValueError("kind file takes no prompt_tokens (they are measured from the file's prompts); drop it")
            self._examples = (info.context or {}).get("examples")  # None: read when a sampler needs them
        return self

    @property
    def is_default(self) -> bool:
        """Today's fixed shape: a study with it measures what studies did before workloads existed."""
        return self.kind == "fixed"

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.kind == "fixed":
            return "fixed: every request max_length - new_tokens prompt tokens, new_tokens output tokens"
        output = self.output_tokens.describe() if self.output_tokens else "new_tokens"
        if self.kind == "file":
            n = len(self._examples) if self._examples is not None else "?"
            return f"file {self.file} ({n} requests; output tokens of unlabelled examples: {output})"
        return f"distribution: prompt tokens {self.prompt_tokens.describe()}; output tokens {output}"


def _format(err: dict, where: str, flag: bool) -> str:
    """One pydantic error as 'where.field: problem; fix' (the flag: 'where field: ...'); the
    discriminator tags, and a constant's `value`, are left out of the path."""
    names = _FLAG_NAMES if flag else {}
    loc = [str(p) for i, p in enumerate(err["loc"]) if p not in SHAPES and not (p == "value" and err["loc"][i - 1] == "constant")]
    field = ".".join(names.get(p, p) for p in loc)
    prefix = f"{where}{' ' if flag else '.'}{field}" if field else where
    kind = err["type"]
    if kind == "missing":
        shape = next((p for p in err["loc"] if p in SHAPES), None)
        if shape:
            need = [k for k, f in SHAPES[shape].model_fields.items() if f.is_required()]
            return f"{prefix} is missing; a {shape} length needs {', '.join(need)}"
        return f"{prefix} is missing"
    if kind == "extra_forbidden":
        shape = next((p for p in err["loc"] if p in SHAPES), None)
        model = SHAPES[shape] if shape else Workload
        allowed = [names.get(k, k) for k in model.model_fields if k != "shape"]
        what = f"a {shape} length" if shape else "a workload"
        return f"{prefix}: unknown key for {what}; allowed: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        return f"{prefix}: {unknown_name_message('length shape', str(err['ctx']['tag']), SHAPES)}"
    if kind in ("int_type", "int_from_float", "float_type"):
        return f"{prefix}: {err['input']!r} is not a whole number of tokens; give an integer in 1..{MAX_TOKENS:,}"
    if kind == "model_type" or kind == "dict_type":
        return f"{prefix}: expected a mapping, got {type(err['input']).__name__}; {_SHAPE_HINT}"
    message = pydantic_message(err)
    if kind == "less_than_equal":
        message += " (the longest max_length autotune measures)"
    for name, shown in (_FLAG_PHRASES if flag else {}).items():
        message = message.replace(name, shown)
    return f"{prefix}: {message}"


def _validate(raw, base_dir: Path | str, where: str, flag: bool, allow_outside: bool) -> Workload:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WorkloadError(f"{where} must be a mapping (kind, prompt_tokens, output_tokens, file), got "
                            f"{type(raw).__name__}; see autotune/workload.py")
    try:
        return Workload.model_validate(raw, context={"base_dir": Path(base_dir), "allow_outside": allow_outside})
    except ValidationError as e:
        raise WorkloadError(_format(e.errors()[0], where, flag).replace("\n", " ")) from None


def parse_workload(raw: dict | None, base_dir: Path | str, where: str = "workload", allow_outside: bool = False) -> Workload:
    """The `workload:` section of a space file (None or {}: the fixed default). A relative file
    path resolves against `base_dir` (the space file's folder); `where` starts every error, e.g.
    f"search space {path}: workload"; `allow_outside`: the file's image paths may leave its folder."""
    return _validate(raw, base_dir, where, False, allow_outside)


# ------------------------------------------------------------------------------ the --workload flag

_FLAG_KEYS = {"kind": "kind", "file": "file", "prompt": "prompt_tokens", "output": "output_tokens"}
_FLAG_NAMES = {"prompt_tokens": "prompt", "output_tokens": "output"}
_FLAG_PHRASES = {"prompt_tokens, e.g. {min: 64, max: 2048}": "prompt=MIN-MAX, e.g. prompt=64-2048", **_FLAG_NAMES}
_LENGTH_KEYS = ("mean", "stdev", "min", "max", *_PERCENTILE_KEYS)
_LEN_HINT = "write N, MIN-MAX, or key:value/key:value with keys " + ", ".join(_LENGTH_KEYS)


def _number(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise WorkloadError(f"{where}: {text!r} is not a number; {_LEN_HINT}") from None
        if not math.isfinite(value):
            raise WorkloadError(f"{where}: {text!r} is not a number; {_LEN_HINT}")
        return value


def _flag_length(text: str, where: str):
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if m := re.fullmatch(r"(\d+)-(\d+)", text):
        return {"min": int(m[1]), "max": int(m[2])}
    if ":" not in text:
        raise WorkloadError(f"{where}: {text!r} is not a length; {_LEN_HINT}")
    out = {}
    for part in text.split("/"):
        key, sep, value = part.partition(":")
        key = key.strip()
        if not sep or not key:
            raise WorkloadError(f"{where}: {part!r} is not key:value; {_LEN_HINT}")
        if key not in _LENGTH_KEYS:
            raise WorkloadError(f"{where}: {unknown_name_message('length key', key, _LENGTH_KEYS)}")
        if key in out:
            raise WorkloadError(f"{where}: {key} is given twice; give it once")
        out[key] = _number(value.strip(), f"{where}.{key}")
    return out


def workload_flag_to_dict(text: str) -> dict:
    """The --workload string as the mapping a `workload:` section would hold (grammar: module docstring)."""
    where = "--workload"
    text = text.strip()
    if not text:
        raise WorkloadError(f"{where} is empty; give fixed, file=PATH, or prompt=MIN-MAX[,output=MIN-MAX]")
    if text == "fixed":
        return {"kind": "fixed"}
    raw = {}
    for item in text.split(","):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep:
            raise WorkloadError(f"{where}: {item.strip()!r} is not key=value; write e.g. prompt=64-2048,output=16-512 or file=PATH")
        if key not in _FLAG_KEYS:
            raise WorkloadError(f"{where}: {unknown_name_message('key', key, _FLAG_KEYS)}")
        if _FLAG_KEYS[key] in raw:
            raise WorkloadError(f"{where}: {key} is given twice; give it once")
        if not value:
            raise WorkloadError(f"{where} {key}: no value after '='; e.g. {key}=" + ("PATH" if key == "file" else "distribution" if key == "kind" else "64-2048"))
        raw[_FLAG_KEYS[key]] = _flag_length(value, f"{where} {key}") if key in ("prompt", "output") else value
    return raw


def parse_workload_flag(text: str, base_dir: Path | str | None = None, allow_outside: bool = False) -> Workload:
    """The --workload flag (grammar: module docstring); a relative file= path resolves against
    `base_dir` (default: the current folder)."""
    return _validate(workload_flag_to_dict(text), base_dir or Path.cwd(), "--workload", True, allow_outside)


# ------------------------------------------------------------------------------ requests


class Request(NamedTuple):
    prompt_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


def _nearest_rank(sorted_values: list[int], q: float) -> int:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


class WorkloadSampler:
    """The requests of a workload.

    `new_tokens`: the space's new_tokens (the fixed kind's output length, and any output length not
    given otherwise). `count_tokens(example) -> int`: the file kind's prompt length in the model's
    tokens, images counted as their visual tokens (required for files; the caller owns the
    tokenizer, so this module needs no torch). `count_answer_tokens(text) -> int`: an answer's
    tokens (default: count_tokens of an Example whose prompt is the answer, which counts any chat
    template the counter adds too)."""

    def __init__(self, workload: Workload, *, new_tokens: int,
                 count_tokens: Callable[[Example], int] | None = None,
                 count_answer_tokens: Callable[[str], int] | None = None):
        self.workload = workload
        self.new_tokens = new_tokens
        self._requests: list[Request] | None = None  # the file's requests, in file order
        self._totals: list[int] | None = None  # sorted prompt + output of the file, or of the over-limit draw
        if workload.kind == "file":
            if count_tokens is None:
                raise ValueError("a file workload needs count_tokens(example) -> int (the model's tokenizer)")
            examples = workload._examples if workload._examples is not None else load_validation_set(workload.file)
            count_answer = count_answer_tokens or (lambda text: count_tokens(Example(prompt=text)))
            rng = random.Random(OVER_LIMIT_SEED)
            self._requests = [Request(self._count(count_tokens(ex), ex), self._output(ex, count_answer, rng)) for ex in examples]

    @staticmethod
    def _count(n: int, example: Example) -> int:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"count_tokens returned {n!r} for the example of line {example.line}; expected a count >= 0")
        return n

    def _output(self, example: Example, count_answer: Callable[[str], int], rng: random.Random) -> int:
        if example.documents is not None:
            return 0  # a reranker scores; it generates nothing
        if example.accepted_answers:
            return max(1, max(self._count(count_answer(a), example) for a in example.accepted_answers))
        spec = self.workload.output_tokens
        return spec.quantile(rng.random()) if spec is not None else self.new_tokens

    @property
    def population(self) -> int:
        """How many requests `over_limit` counts over: the file's, or the distribution's draw (0: fixed)."""
        if self.workload.kind == "fixed":
            return 0
        return len(self._requests) if self._requests is not None else OVER_LIMIT_DRAWS

    def _fixed(self, max_length: int | None) -> Request:
        if max_length is None or max_length <= self.new_tokens:
            raise ValueError(f"the fixed workload's prompts are max_length - new_tokens long; pass the config's "
                             f"max_length (above new_tokens {self.new_tokens}), got {max_length}")
        return Request(max_length - self.new_tokens, self.new_tokens)

    def draw(self, n: int, seed: int, max_length: int | None = None) -> list[Request]:
        """n requests, the same for the same seed. Fixed: n copies of the config's shape (max_length
        required). Distribution: independent draws of the prompt and the output length. File: the
        file's requests in a seeded order, reshuffled each pass (n = the file's size gives each once).
        Requests over max_length are kept (see over_limit)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self.workload.kind == "fixed":
            return [self._fixed(max_length)] * n
        rng = random.Random(seed)
        if self._requests is not None:
            out: list[Request] = []
            while len(out) < n:
                order = list(range(len(self._requests)))
                for i in range(len(order) - 1, 0, -1):  # Fisher-Yates on random() alone: the same on every Python
                    j = int(rng.random() * (i + 1))
                    order[i], order[j] = order[j], order[i]
                out.extend(self._requests[i] for i in order[: n - len(out)])
            return out
        prompt, output = self.workload.prompt_tokens, self.workload.output_tokens
        out = []
        for _ in range(n):
            u_prompt, u_output = rng.random(), rng.random()
            out.append(Request(prompt.quantile(u_prompt), output.quantile(u_output) if output else self.new_tokens))
        return out

    def lengths_summary(self, max_length: int | None = None) -> dict[str, dict[str, int]]:
        """{"prompt_tokens": {p50, p90, p95, p99, max}, "output_tokens": {...}}. File: nearest-rank
        percentiles of its requests. Distribution: the shapes' exact quantiles, max their upper
        bound (a lognormal's clip). Fixed: the config's shape (max_length required)."""
        if self.workload.kind == "fixed":
            request = self._fixed(max_length)
            return {name: {**{k: v for k in SUMMARY_POINTS}, "max": v} for name, v in zip(Request._fields, request)}
        if self._requests is not None:
            summary = {}
            for name, values in zip(Request._fields, zip(*self._requests)):
                values = sorted(values)
                summary[name] = {**{k: _nearest_rank(values, q) for k, q in SUMMARY_POINTS.items()}, "max": values[-1]}
            return summary
        specs = {"prompt_tokens": self.workload.prompt_tokens, "output_tokens": self.workload.output_tokens or Constant(value=self.new_tokens)}
        return {name: {**{k: spec.quantile(q) for k, q in SUMMARY_POINTS.items()}, "max": spec.upper} for name, spec in specs.items()}

    def over_limit(self, max_length: int) -> tuple[int, float]:
        """(count, share) of requests whose prompt + output tokens exceed max_length: the traffic a
        config of that max_length would reject or truncate. File: exact over its requests.
        Distribution: over OVER_LIMIT_DRAWS draws of seed OVER_LIMIT_SEED (count out of
        `population`). Fixed: (0, 0.0), every request is cut to the config's max_length."""
        if self.workload.kind == "fixed":
            return 0, 0.0
        if self._totals is None:
            requests = self._requests if self._requests is not None else self.draw(OVER_LIMIT_DRAWS, OVER_LIMIT_SEED)
            self._totals = sorted(r.total for r in requests)
        count = len(self._totals) - bisect.bisect_right(self._totals, max_length)
        return count, count / len(self._totals)
