"""One table of knobs: a row per setting a candidate carries.

Each row says once what the rest of autotune used to restate per file: the knob's group, its
type, its allowed values (a registry for names, bounds for numbers), its default, how the untuned
baseline and the quality reference pick it, whether memory grows with it (the dominating-
infeasible shortcut), whether it is part of the load-key (and of the quality key), its column
and label in the report, and the compatibility-rule keys every exporter must have for it.

Derived from the table: SearchSpace.knobs (the Optuna parameters, in table order),
Candidate.load_key / request_shape / label, space.suggest / baseline_params / space_digest /
reference_candidates, the study's monotone shape knobs and cache names, the report's knob
columns, and the exporters' coverage test (tests/test_knobs.py).

The typed fields stay explicit on SearchSpace and Candidate (pydantic models); tests/test_knobs.py
fails when a field has no row or a row no field.

Row order is the Optuna parameter order (changing it changes what a seeded sampler proposes) and,
filtered, the order of the load-key and request-shape tuples (stored in studies): append new rows
where they keep both, and never reorder the existing ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from autotune.spec import Candidate

Group = Literal["load", "request", "vision", "placement"]
# How the baseline / the quality reference pick a knob's value from the space's choices:
#   prefer: `preferred` if the space offers it, else the first choice;  min / max;
#   space: the space's one value (a setting that is not sampled);  default: left at the
#   candidate's default (not taken from the space);  most_faithful: every choice in precision
#   order, each a fallback reference;  first_supported: the preferred choice first, then the
#   others, the first that runs here;  none: not picked (not an Optuna parameter).
#   ascending: every choice from the smallest up, each a fallback reference (cpu_offload_gib).
Pick = Literal["prefer", "min", "max", "space", "default", "most_faithful", "first_supported", "ascending", "none"]

MAX_SIDE = 16384  # pixels per side of an image or video frame


@dataclass(frozen=True)
class Column:
    """A knob's column in the trial table."""

    title: str
    order: int  # position among its group's knob columns
    cell: Callable[[Any], str] = str
    left: bool = False


@dataclass(frozen=True)
class LabelPart:
    """A knob's part of Candidate.label(): `render(candidate)` ('' to leave it out), at `order`."""

    order: int
    render: Callable[[Candidate], str]


@dataclass(frozen=True)
class Knob:
    name: str  # field of SearchSpace and Candidate; the Optuna parameter name
    group: Group
    type: type  # of one value: str, int or bool
    help: str
    # True: the space lists choices (an Optuna parameter). False: the space holds one value that
    # every candidate carries (e.g. new_tokens), or carries while `carried_with` is set.
    sampled: bool = True
    carried_with: str | None = None
    default: Any = None  # the candidate's value when the space leaves the knob out (None: required, or unset)
    space_default: Any = None  # a one-value setting's value when the space file leaves it out
    choices: Callable[[], tuple] | None = None  # enumerated knobs: the allowed values (a registry)
    low: int | None = None  # numeric knobs: inclusive bounds of every value
    high: int | None = None
    unit: str = ""  # says what `high` counts, in the error that refuses a larger value
    baseline: Pick = "none"
    reference: Pick = "default"
    preferred: Any = None  # for the `prefer` and `first_supported` picks
    rank: Callable[[Any], int] | None = None  # for `most_faithful`: 0 = most faithful
    grows_memory: bool = False  # larger values never need less memory (with all else equal)
    load_key: bool = False  # changing it reloads the model
    # Added after studies were stored: left out of space_digest while unset and of load-key names
    # at its default, so those studies resume with their cached quality and boundaries.
    added_later: bool = False
    # The space may leave it out (None) although its group is load or request: a generate-time
    # knob whose absence means today's behaviour (see `optional`).
    may_leave_out: bool = False
    # A load-key knob whose values generate the same tokens: left out of the quality key, so
    # quality is measured once for all of its values (quality_key_name).
    same_answers: bool = False
    column: Column | None = None
    label: LabelPart | None = None
    # The compatibility-rule keys each exporter must have for this knob (None: one per choice,
    # `name=value`, for an enumerated knob; the bare name for any other).
    rule_keys: tuple[str, ...] | None = None

    @property
    def optional(self) -> bool:
        """The space may leave it out (None): vision and placement knobs, and rows that say so."""
        return self.group in ("vision", "placement") or self.may_leave_out

    def values(self) -> tuple:
        return self.choices() if self.choices is not None else ()

    def export_rule_keys(self) -> tuple[str, ...]:
        if self.rule_keys is not None:
            return self.rule_keys
        if self.choices is not None:
            return tuple(f"{self.name}={rule_value(v)}" for v in self.values())
        return (self.name,)

    def check(self, value: Any) -> None:
        """Raise ValueError (one line: the value, the bound, the fix) for a value this knob refuses."""
        if self.choices is not None and self.type is str and value not in self.values():
            from autotune.errors import unknown_name_message

            raise ValueError(unknown_name_message(self.name, value, self.values()))
        if self.type is int:
            if self.low is not None and value < self.low:
                raise ValueError("every value must be a positive integer" if self.low == 1 else
                                 "every value must be 0 or a positive integer" if self.low == 0 else
                                 f"{value} is below the lower bound {self.low}; use at least {self.low}")
            if self.high is not None and value > self.high:
                raise ValueError(above_bound(value, self.high, self.unit))
        if self.name in ("image_size", "video_size"):
            check_size(value)


def rule_value(value: Any) -> str:
    """A value as it appears in rule keys: booleans lower-case (compile=true)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def above_bound(value: Any, high: Any, unit: str = "") -> str:
    what = f" {unit}" if unit else ""
    return f"{value} is above the upper bound {high:,}{what}; use at most {high:,}"


def check_size(text: str) -> None:
    """'1280x720': WIDTHxHEIGHT, each side 1..MAX_SIDE."""
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT; write e.g. 1280x720")
    for side in (int(m.group(1)), int(m.group(2))):
        if not 1 <= side <= MAX_SIDE:
            raise ValueError(f"{text!r}: each side must be 1 to {MAX_SIDE:,} pixels; use e.g. 1280x720")


def _dtypes() -> tuple:
    from autotune.dtypes import DTYPES

    return tuple(DTYPES)


def _dtype_rank(name: str) -> int:
    from autotune.dtypes import DTYPES

    return DTYPES[name].precision_rank


def _quantizations() -> tuple:
    from autotune.quant import QUANTIZATION_METHODS

    return tuple(QUANTIZATION_METHODS)


def _quantization_rank(name: str) -> int:
    from autotune.quant import QUANTIZATION_METHODS

    return QUANTIZATION_METHODS[name].precision_rank


def _attention() -> tuple:
    from autotune.attention import ATTENTION_KINDS

    return tuple(ATTENTION_KINDS)


def _vision_attention() -> tuple:
    from autotune.attention import ATTENTION_KINDS

    return tuple(k.name for k in ATTENTION_KINDS.values() if k.vision)


def _cache_implementations() -> tuple:
    from autotune.kv_cache import CACHE_IMPLEMENTATIONS

    return tuple(CACHE_IMPLEMENTATIONS)


def _compile_modes() -> tuple:
    from autotune.kv_cache import COMPILE_MODES

    return COMPILE_MODES


def _stop_checks() -> tuple:
    from autotune.kv_cache import STOP_CHECKS

    return STOP_CHECKS


def _images_label(c: Candidate) -> str:
    return f" img={c.images_per_prompt}x{c.max_pixels}px" if c.images_per_prompt else ""


# Batch sizes and lengths far beyond any GPU are refused when the space is read: such a value only
# ever ran until the trial timeout (or allocated for minutes before failing).
KNOB_TABLE: tuple[Knob, ...] = (
    Knob("dtype", "load", str, "weight/compute dtypes to try", choices=_dtypes,
         baseline="prefer", reference="most_faithful", rank=_dtype_rank, load_key=True,
         column=Column("dtype", 0, left=True), label=LabelPart(0, lambda c: c.dtype)),
    Knob("quantization", "load", str, "names from the quantization registry", default="none", choices=_quantizations,
         baseline="prefer", preferred="none", reference="most_faithful", rank=_quantization_rank, load_key=True,
         column=Column("quant", 1, left=True),
         label=LabelPart(1, lambda c: "" if c.quantization == "none" else f" {c.quantization}")),
    Knob("attn_implementation", "load", str, "attention kernels to try", default="sdpa", choices=_attention,
         # One attention kernel per precision for the reference: its numbers do not depend on it,
         # and a load that does not fit with sdpa will not fit with eager either.
         baseline="prefer", preferred="sdpa", reference="first_supported", load_key=True,
         column=Column("attn", 2, left=True), label=LabelPart(2, lambda c: f" {c.attn_implementation}")),
    Knob("compile", "load", bool, "static KV cache + torch.compile on/off", default=False, choices=lambda: (True, False),
         baseline="prefer", preferred=False, reference="default", load_key=True,
         column=Column("compile", 3, cell=lambda v: "yes" if v else "no"),
         label=LabelPart(4, lambda c: " compile" if c.compile else "")),
    Knob("batch_size", "request", int, "concurrent sequences per generate call", low=1, high=65536, unit="sequences",
         baseline="min", reference="min", grows_memory=True,
         column=Column("batch", 4), label=LabelPart(6, lambda c: f" b={c.batch_size}")),
    Knob("max_length", "request", int, "prompt + new tokens per sequence (the claimed worst case)", low=1, high=1_048_576,
         unit="tokens", baseline="min", reference="min", grows_memory=True,
         column=Column("max len", 5), label=LabelPart(7, lambda c: f" len={c.max_length}")),
    Knob("new_tokens", "request", int, "tokens generated per request in the measurement", sampled=False, space_default=64,
         low=2, high=65536, unit="tokens", baseline="none", reference="space"),
    # Vision knobs (image-text-to-text and image rerankers only). They change the inputs, not the
    # loaded model, except the vision tower's attention kernel.
    Knob("max_pixels", "vision", int, "processor pixel bound per image (size.longest_edge): decides visual tokens",
         low=1, high=1_000_000_000, unit="pixels",
         # The processor's own bound is large (Qwen2-VL: 12.8 Mpx), so the untuned baseline takes
         # the largest choice; the reference too: the most faithful inputs.
         baseline="max", reference="max", grows_memory=True,
         column=Column("max px", 1, cell=lambda v: f"{v:,}" if v else "–")),
    Knob("images_per_prompt", "vision", int, "images each request carries (the claimed worst case; 0 = none)",
         low=0, high=64, unit="images", baseline="min", reference="default", grows_memory=True,
         column=Column("img", 0, cell=lambda v: str(v or 0)), label=LabelPart(8, _images_label)),
    Knob("video_frames", "vision", int, "frames sampled from the one video each request carries (0 = no video)",
         low=0, high=1024, unit="frames", baseline="min", reference="max", grows_memory=True,
         column=Column("frames", 2, cell=lambda v: str(v or 0)),
         label=LabelPart(9, lambda c: f" video={c.video_frames}f" if c.video_frames else "")),
    Knob("image_size", "vision", str, "WIDTHxHEIGHT of the images requests send (measured with synthetic images of this size)",
         sampled=False, carried_with="images_per_prompt", space_default="1280x720", reference="default"),
    Knob("video_size", "vision", str, "WIDTHxHEIGHT of the videos' frames",
         sampled=False, carried_with="video_frames", space_default="640x360", reference="default"),
    Knob("vision_attn_implementation", "vision", str, "attention kernel of the vision tower", choices=_vision_attention,
         baseline="prefer", preferred="sdpa", reference="prefer", load_key=True,
         label=LabelPart(3, lambda c: f" vit={c.vision_attn_implementation}" if c.vision_attn_implementation else "")),
    # Multi-GPU: the model spread over N GPUs (transformers' device_map across them, each capped at
    # the memory budget); exporters turn N into tensor-parallel-size / tp-size / num-shard.
    Knob("num_gpus", "placement", int, "GPUs one candidate spreads the model over (device_map); needs --gpus",
         default=1, low=1, high=64, unit="GPUs", baseline="min", reference="default", load_key=True, added_later=True,
         column=Column("GPUs", 0), label=LabelPart(5, lambda c: f" gpus={c.num_gpus}" if c.num_gpus != 1 else ""),
         # One GPU is the plain case every exporter writes; its rules are for more (and for a
         # tensor-parallel size other than num_gpus, see export/base.py).
         rule_keys=("num_gpus>1",)),
    # Generate-time knobs (issue 19). Left out of a space (None), a candidate generates as before
    # them: a dynamic KV cache, or a static one with compile; no prefill chunking; transformers'
    # default compile mode. The KV cache and the compile mode are in the load-key: a quantized cache
    # changes the answers (quality is measured per load-key), an offloaded one the memory, and a
    # compile mode the compiled graphs (a worker that changes them recompiles anyway).
    Knob("cache_implementation", "load", str, "KV cache of generate(): dynamic, static (what compile needs), offloaded "
         "(to host memory), offloaded_static, quantized-fp8/-hqq/-quanto (4-bit hqq/quanto, per-tensor fp8)",
         choices=_cache_implementations, baseline="prefer", preferred="dynamic", reference="default", load_key=True,
         added_later=True, may_leave_out=True, column=Column("KV cache", 1, cell=lambda v: v or "–", left=True),
         label=LabelPart(10, lambda c: f" kv={c.cache_implementation}" if c.cache_implementation else "")),
    Knob("compile_mode", "load", str, "torch.compile mode of compiled candidates (compile: true): reduce-overhead "
         "(transformers' default, CUDA graphs), default (no CUDA graphs), max-autotune-no-cudagraphs",
         choices=_compile_modes, baseline="prefer", preferred="reduce-overhead", reference="default", load_key=True,
         added_later=True, may_leave_out=True, column=Column("mode", 2, cell=lambda v: v or "–", left=True),
         label=LabelPart(11, lambda c: f" mode={c.compile_mode}" if c.compile_mode and c.compile else "")),
    # Chunked prefill bounds the prefill's activations; its answers are the unchunked ones (the
    # same forward passes over a cache), so it is a request knob, not in the load-key. Memory falls
    # as the chunk shrinks, but 0 (no chunking) is the largest: the row does not claim
    # grows_memory, so the infeasible shortcut compares only candidates of the same chunk size.
    Knob("prefill_chunk_size", "request", int, "tokens per prefill chunk of each sequence (generate(prefill_chunk_size=N)); "
         "0 = no chunking", low=0, high=1_048_576, unit="tokens", baseline="prefer", preferred=0, reference="default",
         added_later=True, may_leave_out=True, column=Column("chunk", 3, cell=lambda v: str(v) if v else "–"),
         label=LabelPart(12, lambda c: f" chunk={c.prefill_chunk_size}" if c.prefill_chunk_size else ""),
         rule_keys=("prefill_chunk_size=0", "prefill_chunk_size>0")),
    # CPU offload (one GPU, CUDA only): at least this many GiB of the weights live in host memory
    # (accelerate's device_map with max_memory, loading.py) and are copied to the GPU layer by layer
    # at every forward. Offloading does not change the numbers, so the quality reference tries the
    # choices in ascending order (the least offloaded that fits).
    Knob("cpu_offload_gib", "placement", int, "GiB of weights kept in host memory and streamed to the GPU at every "
         "forward (accelerate device_map + max_memory); 0 = all on the GPU; one CUDA GPU only",
         default=0, low=0, high=4096, unit="GiB", baseline="min", reference="ascending", load_key=True, added_later=True,
         column=Column("offload", 1, cell=lambda v: f"{v} GiB" if v else "–"),
         label=LabelPart(5, lambda c: f" offload={c.cpu_offload_gib}GiB" if c.cpu_offload_gib else ""),
         rule_keys=("cpu_offload_gib>0",)),
    # When generate() reads its stop flag (autotune/kv_cache.py): the tokens are the same, but the
    # deferred check lets the host queue the next decode step while the GPU runs this one. In the
    # load-key: the load wraps the model's generate().
    Knob("stop_check", "load", str, "when generate() reads its stop flag: sync (after every step, waiting for the GPU: "
         "transformers' default on CUDA) or deferred (one step late: transformers' DeferredStopCheck; CUDA only)",
         choices=_stop_checks, baseline="prefer", preferred="sync", reference="default", load_key=True,
         same_answers=True, added_later=True, may_leave_out=True, column=Column("stop", 4, cell=lambda v: v or "–", left=True),
         label=LabelPart(13, lambda c: f" stop={c.stop_check}" if c.stop_check else "")),
)

KNOB = {k.name: k for k in KNOB_TABLE}


def knob(name: str) -> Knob:
    return KNOB[name]


def names(rows) -> tuple[str, ...]:
    return tuple(k.name for k in rows)


# Views of the table (tuples of names, in table order).
SAMPLED = names(k for k in KNOB_TABLE if k.sampled)
BASE_KNOBS = names(k for k in KNOB_TABLE if k.sampled and not k.optional)  # every space samples these
VISION_KNOBS = names(k for k in KNOB_TABLE if k.sampled and k.group == "vision")
PLACEMENT_KNOBS = names(k for k in KNOB_TABLE if k.sampled and k.group == "placement")
LOAD_KEY_KNOBS = names(k for k in KNOB_TABLE if k.load_key)
REQUEST_SHAPE_KNOBS = names(k for k in KNOB_TABLE if not k.load_key and k.group in ("request", "vision"))
# Request-shape knobs memory grows with: a candidate at least as large in every one of them as an
# infeasible trial with the same load cannot fit either. Visual inputs count apart from max_length:
# at the same length, more pixels or frames cost more vision-encoder activations.
MONOTONE_SHAPE_KNOBS = names(k for k in KNOB_TABLE if k.grows_memory)
# The rest of the request shape must be equal for that comparison (new tokens, image sizes).
FIXED_SHAPE_KNOBS = tuple(k for k in REQUEST_SHAPE_KNOBS if k not in MONOTONE_SHAPE_KNOBS)


def load_key(c: Candidate) -> tuple:
    return tuple(getattr(c, k) for k in LOAD_KEY_KNOBS)


def request_shape(c: Candidate) -> tuple:
    return tuple(getattr(c, k) for k in REQUEST_SHAPE_KNOBS)


def label(c: Candidate) -> str:
    parts = sorted((k.label for k in KNOB_TABLE if k.label is not None), key=lambda p: p.order)
    return "".join(p.render(c) for p in parts)


def load_key_name(c: Candidate, *, quality: bool = False) -> str:
    """The load-key as a name (study attributes: cached quality, batch boundaries). A knob added
    later is left out at its default, so resumed studies keep their names. `quality`: the part of
    it answers depend on, without the same_answers knobs."""
    return "|".join(str(getattr(c, k.name)) for k in KNOB_TABLE
                    if k.load_key and not (k.added_later and getattr(c, k.name) == k.default)
                    and not (quality and k.same_answers))


def boundary_shape(c: Candidate) -> tuple:
    """The request shape without the batch size: a batch-size boundary holds for all batch sizes of it.
    A knob added later is left out at its default, so resumed studies keep their boundary names."""
    return tuple(getattr(c, k.name) for k in KNOB_TABLE if k.name in REQUEST_SHAPE_KNOBS and k.name != "batch_size"
                 and not (k.added_later and getattr(c, k.name) == k.default))


def same_load_and_request(a: Candidate, b: Candidate) -> bool:
    """Same model load and request sizes: their memory differs only by the monotone shape knobs."""
    return a.load_key == b.load_key and all(getattr(a, k) == getattr(b, k) for k in FIXED_SHAPE_KNOBS)


def no_larger(a: Candidate, b: Candidate) -> bool:
    """Every shape knob of `a` that memory grows with is at most `b`'s."""
    return all((getattr(a, k) or 0) <= (getattr(b, k) or 0) for k in MONOTONE_SHAPE_KNOBS)


def pick(k: Knob, how: Pick, choices: list, preferred: Any = None) -> Any:
    """One value of `choices` as `how` says (min, max or prefer)."""
    if how == "min":
        return min(choices)
    if how == "max":
        return max(choices)
    if how == "prefer":
        want = k.preferred if preferred is None else preferred
        return want if want in choices else choices[0]
    raise ValueError(f"{k.name}: {how!r} picks no single value")


def ordered(k: Knob, how: Pick, choices: list) -> list:
    """The choices in the order a fallback search tries them (most_faithful, first_supported)."""
    if how == "most_faithful":
        return sorted(choices, key=k.rank)
    if how == "first_supported":
        return sorted(choices, key=lambda v: v != k.preferred)
    if how == "ascending":
        return sorted(choices)
    raise ValueError(f"{k.name}: {how!r} is not an ordering")


def column_groups() -> dict[str, tuple[Knob, ...]]:
    """The report's knob columns: 'text' before the state column, 'vision' with the vision
    figures (where some candidate sends images), 'placement' at the end (where some candidate
    is not at the default)."""
    def of(groups: tuple[str, ...]) -> tuple[Knob, ...]:
        return tuple(sorted((k for k in KNOB_TABLE if k.column and k.group in groups), key=lambda k: k.column.order))

    text = tuple(k for k in of(("load", "request")) if not k.may_leave_out)
    # Knobs a space may leave out show with the placement columns, where some candidate sets them.
    placement = tuple(sorted((k for k in KNOB_TABLE if k.column and (k.group == "placement" or k.may_leave_out)),
                             key=lambda k: k.column.order))
    return {"text": text, "vision": of(("vision",)), "placement": placement}


def cells(c: Candidate, rows: tuple[Knob, ...]) -> list[str]:
    return [k.column.cell(getattr(c, k.name)) for k in rows]
