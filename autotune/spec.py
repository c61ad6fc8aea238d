"""The typed models every stage passes along: one source of truth per concept.

SearchSpace (the YAML file) -> Candidate (one point) -> Measurement / TrialOutcome (what a worker
measured) -> TrialRecord (what the study stores) -> DeploymentConfig (best.yaml).
TuneSpec holds what the user asked for; the CLI's help texts come from its field descriptions.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotune import knobs as knobs_table
from autotune.fingerprint import Fingerprint  # noqa: F401 (re-exported)
from autotune.knobs import BASE_KNOBS, KNOB_TABLE, LOAD_KEY_KNOBS, PLACEMENT_KNOBS, VISION_KNOBS, knob  # noqa: F401 (re-exported)
from autotune.measure.compile_stats import CompileStats
from autotune.models import ModelRef
from autotune.serving import ServingCapacity
from autotune.units import parse_gpu_list, parse_memory, parse_min_quality  # noqa: F401 (re-exported)

DType = Literal["fp32", "fp16", "bf16"]  # the names of autotune/dtypes.py's registry (a test keeps them equal)
Objective = Literal["throughput", "latency", "goodput"]  # the names of autotune/objectives.py's registry
OBJECTIVE_HELP = ("throughput: max generated tokens/s; latency: min request latency; goodput: max requests/s within every "
                  "--slo limit; several, comma-separated (e.g. throughput,latency): a multi-objective study whose Pareto "
                  "front is kept, best.yaml holding the best under the SLOs or, without --slo, the front's knee")
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ search space


class SearchSpace(_Strict):
    """A YAML file in search_spaces/. Every list is the set of choices for one knob.

    The knobs' facts (allowed values, bounds, defaults, how the baseline and the reference pick
    them) are rows of autotune/knobs.py; the fields here are their typed form (tests/test_knobs.py
    keeps the two equal)."""

    dtype: list[DType] = Field(min_length=1, description=knob("dtype").help)
    quantization: list[str] = Field(default=["none"], min_length=1, description=knob("quantization").help)
    attn_implementation: list[str] = Field(default=["sdpa"], min_length=1, description=knob("attn_implementation").help)
    compile: list[bool] = Field(default=[False], min_length=1, description=knob("compile").help)
    batch_size: list[int] = Field(min_length=1, description=knob("batch_size").help)
    max_length: list[int] = Field(min_length=1, description=knob("max_length").help)
    new_tokens: int = Field(default=knob("new_tokens").space_default, ge=2, description=knob("new_tokens").help)
    # 10^12 repeats ran until the trial timeout; a spread needs 3, and past 100 the median is settled.
    repeats: int = Field(default=3, ge=3, le=100, description="timed repeats per candidate (median and spread reported)")
    # Vision knobs (image-text-to-text and image rerankers only). They change the inputs, not the
    # loaded model, except the vision tower's attention kernel.
    max_pixels: list[int] | None = Field(default=None, description=knob("max_pixels").help)
    images_per_prompt: list[int] | None = Field(default=None, description=knob("images_per_prompt").help)
    video_frames: list[int] | None = Field(default=None, description=knob("video_frames").help)
    video_size: str = Field(default=knob("video_size").space_default, pattern=r"^\d+x\d+$", description=knob("video_size").help)
    vision_attn_implementation: list[str] | None = Field(default=None, description=knob("vision_attn_implementation").help)
    image_size: str = Field(default=knob("image_size").space_default, pattern=r"^\d+x\d+$", description=knob("image_size").help)
    num_gpus: list[int] | None = Field(default=None, description=knob("num_gpus").help)
    cache_implementation: list[str] | None = Field(default=None, description=knob("cache_implementation").help)
    compile_mode: list[str] | None = Field(default=None, description=knob("compile_mode").help)
    prefill_chunk_size: list[int] | None = Field(default=None, description=knob("prefill_chunk_size").help)
    cpu_offload_gib: list[int] | None = Field(default=None, description=knob("cpu_offload_gib").help)
    stop_check: list[str] | None = Field(default=None, description=knob("stop_check").help)
    workload: dict | None = Field(default=None, description="a non-default workload, normalised (autotune/workload.py)")

    @field_validator(*(k.name for k in KNOB_TABLE))
    @classmethod
    def _allowed_by_the_table(cls, values, info):
        """Names from the knob's registry, numbers within its bounds (knobs.py)."""
        row = knob(info.field_name)
        if values is None:
            return values
        if isinstance(values, list):
            if not values:
                raise ValueError("list at least one value, or leave the key out")
            for value in values:
                row.check(value)
            if len(set(values)) != len(values):
                raise ValueError(f"values must be unique, got {values}")
        else:
            row.check(values)
        return values

    @model_validator(mode="after")
    def _room_for_prompt(self) -> SearchSpace:
        if min(self.max_length) <= self.new_tokens:
            raise ValueError(f"max_length {min(self.max_length)} leaves no prompt token for new_tokens={self.new_tokens}; "
                             "raise max_length or lower new_tokens")
        return self

    @model_validator(mode="after")
    def _pixels_for_visual_inputs(self) -> SearchSpace:
        if (self.images_per_prompt is not None or self.video_frames is not None) and self.max_pixels is None:
            raise ValueError("images_per_prompt/video_frames need max_pixels (the processor's per-image pixel bound), e.g. [200704, 1003520]")
        return self

    @model_validator(mode="after")
    def _compile_mode_with_compile(self) -> SearchSpace:
        """compile_mode acts only on compiled candidates; an uncompiled one is measured once, as the
        default mode (other modes are unsupported for it), so that mode must be listed."""
        if self.compile_mode is None:
            return self
        from autotune.kv_cache import DEFAULT_COMPILE_MODE

        if True not in self.compile:
            raise ValueError("compile_mode applies only to compiled candidates; add true to compile or leave compile_mode out")
        if False in self.compile and DEFAULT_COMPILE_MODE not in self.compile_mode:
            raise ValueError(f"with compile false among the choices, list {DEFAULT_COMPILE_MODE} in compile_mode too "
                             "(the mode an uncompiled candidate is measured as)")
        return self

    @property
    def knobs(self) -> tuple[str, ...]:
        """The knobs this space samples (Optuna parameters, in table order): the base knobs, plus
        the vision and placement knobs it sets."""
        return tuple(k.name for k in KNOB_TABLE if k.sampled and (not k.optional or getattr(self, k.name) is not None))

    @property
    def vision_knobs_set(self) -> list[str]:
        return [k for k in VISION_KNOBS if getattr(self, k) is not None]

    @property
    def size(self) -> int:
        n = 1
        for name in self.knobs:
            n *= len(getattr(self, name))
        return n


# The knobs Optuna samples, in a fixed order (their names are Optuna parameter names): views of
# the table in autotune/knobs.py, kept here for the modules that import them from spec.
KNOBS = BASE_KNOBS


# ------------------------------------------------------------------------------ candidate


class Candidate(_Strict):
    """One deployment setting. The load-key part needs a model reload; the rest does not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: DType
    quantization: str = knob("quantization").default
    attn_implementation: str = knob("attn_implementation").default
    compile: bool = knob("compile").default
    batch_size: int = Field(ge=1)
    max_length: int = Field(ge=2)
    new_tokens: int = Field(ge=2)
    # Vision (None for text-only candidates): images per request of image_size, each resized by
    # the processor to at most max_pixels pixels.
    max_pixels: int | None = None
    images_per_prompt: int | None = None
    video_frames: int | None = None
    vision_attn_implementation: str | None = None
    image_size: str | None = None
    video_size: str | None = None
    num_gpus: int = Field(default=knob("num_gpus").default, ge=1, description="GPUs the model is spread over (device_map); 1 = one device")
    # Generate-time knobs; None: as before them (see autotune/kv_cache.py).
    cache_implementation: str | None = None
    compile_mode: str | None = None
    prefill_chunk_size: int | None = Field(default=None, ge=0)

    cpu_offload_gib: int = Field(default=knob("cpu_offload_gib").default, ge=0, description="GiB of weights offloaded to host memory")
    stop_check: str | None = None

    @field_validator("cache_implementation", "compile_mode", "stop_check")
    @classmethod
    def _known_generate_setting(cls, value, info):
        if value is not None:
            knob(info.field_name).check(value)
        return value

    @property
    def prompt_tokens(self) -> int:
        return self.max_length - self.new_tokens

    @property
    def load_key(self) -> tuple:
        """The knobs whose change reloads the model (LOAD_KEY_KNOBS, in table order)."""
        return knobs_table.load_key(self)

    @property
    def request_shape(self) -> tuple:
        """Everything that shapes the requests it measures (what a static cache and compiled
        graphs are specialised on); the load-key is the rest."""
        return knobs_table.request_shape(self)

    @property
    def has_images(self) -> bool:
        """Whether the candidate's requests carry any visual input (images or video frames)."""
        return bool(self.images_per_prompt) or bool(self.video_frames)

    def label(self) -> str:
        return knobs_table.label(self)


# ------------------------------------------------------------------------------ measurement


class Stat(_Strict):
    """Median of repeated timings with the spread that says how far to trust it."""

    median: float
    min: float
    max: float
    spread_pct: float = Field(description="(max - min) / median, in percent")
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        med = statistics.median(samples)
        # Equal samples have no spread, even at 0 (a goodput of 0 req/s); a spread around a zero
        # median is unbounded.
        spread = 0.0 if max(samples) == min(samples) else (max(samples) - min(samples)) / med * 100 if med else float("inf")
        return cls(median=med, min=min(samples), max=max(samples), spread_pct=spread, samples=samples)


class Measurement(_Strict):
    """What one candidate measured at its claimed worst case (batch_size sequences of max_length), or on batches of a workload."""

    # Generation figures are None for a reranker (one scoring pass, nothing generated).
    output_tokens_per_s: Stat | None = Field(description="generated tokens / end-to-end generate time, whole batch")
    prefill_tokens_per_s: Stat
    decode_tokens_per_s: Stat | None = Field(description="tokens after the first / (full time - prefill time)")
    requests_per_s: Stat = Field(description="requests (reranker: query-document pairs) per second, model time")
    ttft_s: Stat = Field(description="time to first token: prefill of the whole batch plus one token (reranker: the scoring pass)")
    tpot_s: Stat | None = Field(description="time per output token after the first")
    request_latency_s: Stat
    visual_tokens_per_request: int | None = Field(default=None, description="image tokens the processor made per request")
    preprocess_s: Stat | None = Field(default=None, description="CPU time to preprocess one batch's images (not in the model figures)")
    requests_per_s_with_preprocessing: Stat | None = Field(default=None, description="requests/s counting preprocessing done serially before the model")
    peak_memory_gib: float = Field(description="the figure the budget is judged on: torch reserved on GPU, process RSS on CPU")
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    nvml_peak_used_gib: float | None = Field(default=None, description="whole-device memory used, sampled by NVML")
    peak_rss_gib: float | None = None
    offloaded_gib: float | None = Field(default=None, description="cpu_offload_gib > 0: weights the loaded model kept in host memory")
    offload_gpu_max_memory_gib: float | None = Field(default=None, description="cpu_offload_gib > 0: device_map's max_memory for the GPU")
    warmup_s: float
    measure_s: float
    # A non-default workload (autotune/measure/traffic.py); None under the fixed worst-case shape.
    workload: dict | None = Field(default=None, description="the workload section measured under (None: the fixed shape)")
    workload_over_limit_share: float | None = Field(default=None, description="share of the workload's requests over max_length")
    workload_truncated: int | None = Field(default=None, description="timed requests over max_length, truncated to fit")
    padding_share: float | None = Field(default=None, description="padded tokens / all tokens the timed batches processed")
    goodput_rps: Stat | None = Field(default=None, description="requests/s within every --slo limit (set by the study, slo.goodput)")
    request_output_tokens: list[int] | None = Field(default=None, description="a workload's timed output lengths (capacity draws them)")
    request_prompt_tokens: list[int] | None = Field(default=None, description="the same requests' prompt lengths (capacity draws them "
                                                    "with their output lengths)")
    request_padded_prompt_tokens: list[int] | None = Field(default=None, description="per timed request, the prompt length its "
                                                           "batch was padded to (its longest), in ttft_s's order: the "
                                                           "capacity's prompt slope (prompt_scaling.py) is fitted to it")
    compile_stats: CompileStats | None = Field(default=None, description="compiled candidates: what torch.compile did")

    @property
    def throughput(self) -> Stat:
        """What the throughput objective maximises: generated tokens/s, or pairs/s for a reranker."""
        return self.output_tokens_per_s or self.requests_per_s

    @property
    def throughput_unit(self) -> str:
        return "tok/s" if self.output_tokens_per_s is not None else "pairs/s"


class QualityReport(_Strict):
    """Quality of one load-key on the validation set (batch size does not change it)."""

    metric: str
    score: float = Field(description="mean per-example score in [0, 1]")
    ci_low: float = Field(description="95% bootstrap interval of the mean")
    ci_high: float
    n: int
    per_example: list[float]
    kl_mean: float | None = Field(default=None, description="teacher-forced KL(reference || this), top-k + rest buckets")
    kl_p95: float | None = None
    top1_agreement: float | None = Field(default=None, description="share of positions whose argmax token equals the reference's")
    answer_agreement: float | None = Field(default=None, description="share of generated answers equal (normalised) to the reference's")
    delta_vs_reference: float | None = None
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    within_noise: bool | None = Field(default=None, description="the difference to the reference is inside its bootstrap interval")
    elapsed_s: float = 0.0


OutcomeStatus = Literal["ok", "oom", "unsupported", "error", "crashed", "timeout"]


class Probe(_Strict):
    """One feasibility probe: the worst case run once at this batch size."""

    batch_size: int
    fits: bool
    peak_memory_gib: float | None = None
    reason: str = ""


class BatchBoundary(_Strict):
    """The largest batch size that fits at one max length and load, found by probing inside the
    loaded worker (bisection over the space's batch sizes, or every one of them)."""

    batch_sizes: list[int]
    largest_feasible: int | None = Field(description="None: not even the smallest batch size fits")
    probes: list[Probe]
    exhaustive: bool = False
    elapsed_s: float = 0.0

    def smallest_failure_up_to(self, batch_size: int) -> Probe | None:
        """The smallest probed batch size, at most `batch_size`, that does not fit: what answers a
        candidate above the boundary (memory grows with the batch)."""
        return min((p for p in self.probes if not p.fits and p.batch_size <= batch_size), key=lambda p: p.batch_size, default=None)


class TrialOutcome(_Strict):
    """A worker's answer for one candidate: a measurement or a typed failure."""

    status: OutcomeStatus
    reason: str = ""
    measurement: Measurement | None = None
    load_s: float = 0.0
    prepare_s: float = Field(default=0.0, description="building the cached checkpoint (embedded conversion, random weights); once per machine")
    reloaded: bool = False
    worker_log: str | None = None
    phase: Literal["load", "quality", "measure", ""] = ""
    quality: QualityReport | None = None
    inferred_from: int | None = Field(
        default=None, description="answered without running: this trial was infeasible with the same load and a shape no larger"
    )
    predicted: bool = Field(default=False, description="answered without running: the memory model's lower bound exceeds the budget")
    predicted_peak_gib: float | None = Field(default=None, description="the memory model's prediction, made before the trial ran")
    boundary: BatchBoundary | None = Field(default=None, description="the batch-size bisection this trial ran or was answered by")
    probe_s: float = Field(default=0.0, description="seconds this trial spent probing batch sizes in the worker (the bisection it ran)")
    first_attempt: str = Field(default="", description="an out-of-memory answer that evidence of fitting contradicted, or a "
                                                       "failure in a worker that had run before, so the trial ran "
                                                       "again in a fresh worker; this is the first attempt's reason")


# ------------------------------------------------------------------------------ study records


TrialState = Literal["measured", "infeasible", "slo_violated", "low_quality", "unsupported", "failed", "duplicate"]


class TrialRecord(_Strict):
    """One line of trials.jsonl: the candidate, what happened, and where the time went."""

    number: int
    state: TrialState
    candidate: Candidate
    outcome: TrialOutcome
    objective_value: float | None = None
    constraints: dict[str, float] = {}
    feasible: bool = False
    is_baseline: bool = False
    duplicate_of: int | None = None
    spawn_s: float = 0.0
    total_s: float = 0.0
    finished_at: str = ""
    slo_violations: list[str] = Field(default=[], description="the --slo limits this measurement broke, e.g. 'ttft_p95 612 ms > 500 ms'")
    objective_values: dict[str, float] = Field(default={}, description="a multi-objective study: each objective's measured "
                                               "value (objective_value is the first's)")
    on_pareto_front: bool | None = Field(default=None, description="multi-objective: on the front when trials.jsonl was written")


# ------------------------------------------------------------------------------ user request


# Upper bounds of the budget's numbers: past them a value is a typo, not a plan (a study of more
# than 30 days, a trial allowed a week; numpy seeds are 32-bit; the confirmation re-measures each
# of its top K in every round, and 100 repeats settle any median).
MAX_STUDY_S = 30 * 24 * 3600
MAX_TRIAL_S = 7 * 24 * 3600


class TuneSpec(_Strict):
    """What the user asked `autotune tune` for. Precedence: CLI flag > space file > defaults."""

    model: str | None = Field(default=None, description="checkpoint dir, hub id (local cache), config.json or bundled config name; default: embedded SmolLM2-135M-Instruct")
    random_weights: bool = Field(default=False, description="build a shape-only model with random weights from the config (capacity planning)")
    kind: str | None = Field(default=None, description="model kind: causal-lm, image-text-to-text or reranker; default: detected from the config")
    space: Path | None = Field(default=None, description="search-space YAML; default: search_spaces/<device>.yaml")
    trials: int = Field(default=12, ge=1, le=100_000, description="measured trials the study should hold (resuming counts the ones it has)")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_STUDY_S, description="stop starting new trials after this many seconds, or earlier when "
                                      "the next one would likely not finish by then (judged by this run's trials) with the "
                                      "time the confirmation is expected to need kept free; the confirmation is never skipped")
    trial_timeout_s: float = Field(default=900.0, gt=0, le=MAX_TRIAL_S, description="kill a worker stuck in one trial after this many seconds")
    memory_budget_gib: float | None = Field(default=None, gt=0, description="usable device memory, e.g. 24GiB; also a constraint")
    objective: Objective = Field(default="throughput", description=OBJECTIVE_HELP)
    objectives: list[Objective] = Field(default=[], description="a multi-objective study's objectives, `objective` first (empty: one)")

    @model_validator(mode="before")
    @classmethod
    def _split_objectives(cls, data):
        from autotune.objectives import split_objective_field

        return split_objective_field(data)

    @model_validator(mode="after")
    def _objectives_have_their_inputs(self):
        from autotune.objectives import check_inputs

        check_inputs(self.all_objectives, bool(self.slo))
        return self

    @property
    def knee_choice(self) -> bool:
        """Multi-objective without --slo: best.yaml holds the front's knee (no confirmation re-ranks it)."""
        return len(self.objectives) > 1 and not self.slo

    @property
    def all_objectives(self) -> list[str]:
        """The study's objectives, the primary first (one for a single-objective study)."""
        return list(self.objectives) or [self.objective]
    device: str | None = Field(default=None, description="cuda:N or cpu; default: cuda:0 if present, else cpu")
    study: str | None = Field(default=None, description="study name; default: <model>-<device>")
    storage: str | None = Field(default=None, description="Optuna storage URL; default: SQLite in the output dir")
    out: Path = Field(default=Path("outputs/default"), description="output directory")
    gpus: list[int] | None = Field(default=None, description="one worker per GPU on this host sharing the study, e.g. 0,1,2,3 "
                                   "(needs --storage postgresql://… or journal:///PATH: SQLite cannot be shared)")
    heartbeat_s: int = Field(default=10, ge=1, le=3600, description="shared storage: seconds between a worker's heartbeats; a trial "
                             "without one for 3x this long is failed and retried by another worker")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="sampler seed")
    memory_model: bool = Field(default=True, description="answer candidates whose weights and KV cache alone exceed the "
                               "--memory-budget as infeasible (predicted) without loading them")
    bisect: bool = Field(default=True, description="find the largest batch that fits per load and length by bisection in the "
                         "loaded worker (with a memory budget or on a GPU; 3+ batch sizes), and answer larger ones from it")
    sampler: str = Field(default="tpe", description="search strategy: tpe (default), gp, nsga2, random or grid (every candidate once)")
    confirm_top: int = Field(default=3, ge=0, le=50, description="re-measure the best K candidates interleaved after the search and pick the "
                             "winner by median; a difference inside the spreads is a tie, broken by lower memory (0 = off)")
    confirm_repeats: int = Field(default=6, ge=3, le=100, description="timed repeats per candidate in the confirmation, taken 2 per round, "
                                 "round-robin over the candidates")
    data: Path | None = Field(default=None, description="validation set (JSON lines) for quality; default with --min-quality: the bundled text set")
    min_quality: str | None = Field(default=None, description="quality floor: 0.98 = 98% of the reference config's score; abs:0.6 = absolute")
    quality_metric: str | None = Field(default=None, description="contains, exact_match, token_f1 or top1_agreement (label-free); default: contains if labelled")
    quality_examples: int | None = Field(default=None, ge=1, le=1_000_000, description="use only the first N examples of the validation set")
    allow_data_outside: bool = Field(default=False, description="let image/video paths of the validation set be absolute or "
                                     "lead out of its folder (by default they must stay inside it)")
    slo: str | None = Field(default=None, description="latency limits, e.g. ttft_p95=500ms,tpot_p95=50ms,e2e_p95=8s (any subset; "
                            "p50/p90/p95/p99): a candidate over one is slo_violated, never the best")
    workload: str | None = Field(default=None, description="the traffic measured, replacing the space's workload: section, e.g. "
                                 "prompt=64-2048,output=16-512 or file=PATH (default: the fixed worst-case shape)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        from autotune.samplers import check_sampler_name

        return check_sampler_name(name)

    @field_validator("gpus", mode="before")
    @classmethod
    def _parse_gpus(cls, value):
        return parse_gpu_list(value)

    @field_validator("confirm_top")
    @classmethod
    def _something_to_compare(cls, k: int) -> int:
        if k == 1:
            raise ValueError("1 compares nothing; use 0 (off) or 2 and more")
        return k

    @field_validator("min_quality")
    @classmethod
    def _floor_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_min_quality(value)
        return value

    @field_validator("slo")
    @classmethod
    def _slo_syntax(cls, value: str | None) -> str | None:
        from autotune.slo import parse_slo  # a leaf; imported here, where --slo is read

        return value if value is None or parse_slo(value) else value

    @property
    def slo_limits(self) -> list:
        """The parsed --slo (autotune.slo.SloLimit), [] without one."""
        from autotune.slo import parse_slo

        return parse_slo(self.slo) if self.slo else []

    @field_validator("memory_budget_gib", mode="before")
    @classmethod
    def _parse_budget(cls, value):
        return None if value is None else parse_memory(value)

    @property
    def quality_enabled(self) -> bool:
        return self.data is not None or self.min_quality is not None or self.quality_metric is not None


# ------------------------------------------------------------------------------ confirmation


class ConfirmedCandidate(_Strict):
    """One of the search's top candidates, re-measured in the confirmation's interleaved rounds."""

    trial_number: int
    candidate: Candidate
    search_value: float = Field(description="the objective the search measured, which put it in the top k")
    confirmed: Stat | None = Field(default=None, description="the objective's samples pooled over the confirmation rounds "
                                   "(the search's own samples are left out: they are what it was picked on)")
    peak_memory_gib: float | None = Field(default=None, description="the highest peak of its confirmation rounds")
    rounds: int = Field(default=0, description="rounds that measured it")
    dropped: str = Field(default="", description="why it cannot win: failed, out of memory or over the budget in a round")


class Confirmation(_Strict):
    """The noise-aware choice among the search's top candidates: best.yaml's settings are its winner."""

    objective: Objective
    top_k: int
    repeats: int = Field(description="timed repeats per candidate asked for, taken a few per round")
    rounds: int = Field(description="rounds run (each re-measures every candidate once, in alternating order)")
    rounds_planned: int
    candidates: list[ConfirmedCandidate] = Field(description="in the search's rank order")
    winner: int | None = Field(description="trial number of the winner; None if no candidate could be re-measured")
    search_winner: int = Field(description="trial number the search alone would have picked")
    tie: bool = Field(description="the leader's median is within the noise of another candidate's")
    tied: list[int] = Field(default=[], description="trial numbers inside the noise of the leader, the leader included")
    reason: str
    reloads: int = Field(default=0, description="model loads the interleaving cost")
    elapsed_s: float = 0.0
    measuring_s: float = Field(default=0.0, description="of elapsed_s: warm-up and timed repeats")
    loading_s: float = Field(default=0.0, description="of elapsed_s: the model loads the interleaving cost")
    stopped: str = Field(default="", description="why fewer rounds ran than planned (--timeout)")
    created_at: str = ""

    @property
    def top_trials(self) -> list[int]:
        return [c.trial_number for c in self.candidates]


# ------------------------------------------------------------------------------ output file


class BaselineSummary(_Strict):
    trial_number: int
    candidate: Candidate
    objective_value: float


class DeploymentConfig(_Strict):
    """best.yaml: everything needed to load the model as tuned, and the evidence for it."""

    schema_version: int = SCHEMA_VERSION
    model: ModelRef
    device: str
    settings: Candidate
    generate_kwargs: dict
    measured: Measurement
    objective: Objective
    objective_value: float
    speedup_vs_baseline: float | None = Field(default=None, description="objective relative to the baseline trial (>1 is better): the untuned default load, or the space's plainest candidate where the space lacks it")
    baseline: BaselineSummary | None = None
    memory_budget_gib: float | None = None
    slo: str | None = Field(default=None, description="the study's --slo")
    objectives: list[Objective] = Field(default=[], description="a multi-objective study's objectives (empty: one)")
    objective_values: dict[str, float] = Field(default={}, description="a multi-objective study: these settings' values")
    chosen_by: str = Field(default="", description="a multi-objective study: how these settings were chosen from the front")
    capacity: ServingCapacity | None = Field(default=None, description="requests/s this config holds within the SLO (simulated)")
    quality: QualityReport | None = None
    min_quality: str | None = None
    confirmation: Confirmation | None = Field(default=None, description="the re-measurement that chose these settings among the top candidates")
    # Written since issue 20; a file from before has neither (None, ""), and loads as it did.
    confirmed: bool | None = Field(default=None, description="true: these settings won a confirmation that ran every planned "
                                   "round over the search's current top k; false: they did not, and confirmation_note says "
                                   "why; null: written before autotune said")
    confirmation_note: str = Field(default="", description="why the settings are not confirmed (confirmation off, nothing to "
                                   "compare, not reached yet, cut short by its time, no winner); empty when confirmed")
    fingerprint: Fingerprint
    study_name: str
    storage: str
    trial_number: int
    created_at: str

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is newer than this autotune understands ({SCHEMA_VERSION}); upgrade autotune")
        return version
