"""What every exporter shares: the compatibility-rule type, the export options, the result, the
memory arithmetic and the draft an exporter fills in (settings with their comments).

An exporter states its compatibility rules in ONE dict at the top of its module, keyed by
`setting=value` (or a bare setting name): exact, approximate (with the comment written next to the
exported setting) or unexportable (with the nearest exportable alternative, which
`--allow-approximate` writes instead, with the reason as a comment).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from autotune.errors import ExportError
from autotune.spec import DeploymentConfig

RuleKind = Literal["exact", "approximate", "unexportable"]


@dataclass(frozen=True)
class Rule:
    """How one setting of best.yaml maps onto a target.

    exact: same meaning, no comment needed. approximate: written, with `note` as a comment in the
    file. unexportable: an error naming the setting, `note` (why) and `alternative` (the nearest
    exportable setting), unless --allow-approximate, which writes the alternative with a comment.
    An unexportable rule without an alternative has no approximate form at all.
    """

    kind: RuleKind
    note: str = ""
    alternative: str | None = None


def exact(note: str = "") -> Rule:
    return Rule("exact", note)


def approximate(note: str) -> Rule:
    return Rule("approximate", note)


def unexportable(why: str, alternative: str | None) -> Rule:
    return Rule("unexportable", why, alternative)


def offloaded_gib(config: DeploymentConfig) -> float:
    """The GiB of weights the measured load kept in host memory (cpu_offload_gib > 0): the loaded
    model's figure where best.yaml has it, else the knob (at least that much was offloaded)."""
    measured = config.measured.offloaded_gib
    return round(measured, 2) if measured is not None else float(config.settings.cpu_offload_gib)


OFFLOAD_NOTE = ("autotune measured transformers + accelerate offload (whole layers in host memory, copied to the GPU "
                "at every forward); {server} offloads with its own mechanism, so speed and memory differ: re-measure. "
                "cpu-offload-gb is the GiB the measured load kept on the host")


DEFAULT_HEADROOM = 0.10  # 10% over the measured peak: allocator fragmentation, a server's own buffers

# Hub ids of the bundled shape-only configs (autotune/model_configs): a random-weight study is
# capacity planning for the real checkpoint of that name, and the server loads the real one.
KNOWN_CHECKPOINTS = {
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen2.5-vl-3b-instruct": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b-instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-8b-instruct": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen2-vl-72b-instruct": "Qwen/Qwen2-VL-72B-Instruct",
}
# The embedded default is SmolLM2-135M-Instruct's GGUF (Q4_1 blocks dequantized to float); a
# server loads the original checkpoint of the same shape.
EMBEDDED_CHECKPOINT = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ExportOptions:
    allow_approximate: bool = False
    tensor_parallel_size: int | None = None  # GPUs to serve on; None: the GPUs best.yaml was measured on (num_gpus)
    headroom: float = DEFAULT_HEADROOM  # fraction over the measured peak, 0.10 = 10%
    gpu_memory_gib: float | None = None  # the serving GPU's memory; default: the tuning GPU's
    model: str | None = None  # served checkpoint (hub id or path); default: from best.yaml

    def __post_init__(self) -> None:
        if self.tensor_parallel_size is not None and self.tensor_parallel_size < 1:
            raise ExportError(f"--tensor-parallel-size must be 1 or more, got {self.tensor_parallel_size}")
        if not 0 <= self.headroom <= 1:
            raise ExportError(f"--headroom is a fraction of the measured peak in [0, 1] (0.1 = 10%), got {self.headroom}")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ExportError(f"--gpu-memory-gib must be positive, got {self.gpu_memory_gib}")


@dataclass
class ExportResult:
    """The exported file (`text`, default name `filename`), the equivalent command line, further
    files to write next to it (name suffix -> text) and the approximations made (also comments)."""

    target: str
    filename: str
    text: str
    command: str
    extra_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The file endings the target reads its config from (vLLM and SGLang: YAML only); () = any.
    suffixes: tuple[str, ...] = ()

    def script(self, config_name: str | None = None) -> str:
        """A shell script that starts the server with the command line (`<name>.sh`)."""
        lines = ["#!/usr/bin/env bash", f"# autotune export to {self.target}: the command line equivalent to {config_name or self.filename}"]
        for note in self.notes:
            first, *rest = wrap(note, 90)
            lines += [f"# approximate: {first}"] + [f"#   {line}" for line in rest]
        return "\n".join(lines) + "\nexec " + self.command + "\n"

    def printable(self) -> str:
        """What `autotune export` prints without --out: the file, then the command line as comments."""
        if not self.command:
            return self.text
        return self.text + "\n# The equivalent command line:\n" + "".join(f"# {line}\n" for line in self.command.splitlines())


def write_export(result: ExportResult, out: Path) -> list[Path]:
    """Write the exported file to `out` (a directory: the target's default name inside it), the
    command line next to it as `<name>.sh` and any further files as `<name><suffix>`."""
    path = out / result.filename if out.is_dir() else out
    if result.suffixes and path.suffix.lower() not in result.suffixes:
        raise ExportError(
            f"--out {out}: {result.target} reads its config only from a {' or '.join(result.suffixes)} file; "
            f"name it e.g. {path.with_suffix(result.suffixes[0]).name}"
        )
    files = {path: result.text}
    if result.command:
        files[path.with_suffix(".sh")] = result.script(path.name)
    for suffix, text in result.extra_files.items():
        files[path.with_name(path.stem + suffix)] = text
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            file.write_text(text)
            if file.suffix == ".sh":
                file.chmod(0o755)
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write {e.filename or path} ({e.strerror}); pass a writable path") from e
    return list(files)


# ------------------------------------------------------------------------------ the draft


@dataclass
class Entry:
    key: str
    value: Any
    comments: list[str]


class Draft:
    """The settings an exporter writes, in order, each with its comments, plus the errors for
    unexportable settings (raised together at the end, so one run names every problem)."""

    def __init__(self, target: str, rules: dict[str, Rule], options: ExportOptions) -> None:
        self.target = target
        self.rules = rules
        self.options = options
        self.entries: list[Entry] = []
        self.notes: list[str] = []
        self.header: list[str] = []
        self.errors: list[str] = []

    def rule(self, key: str) -> Rule:
        """The target's rule for `key`; a missing one is a bug in the exporter's table."""
        try:
            return self.rules[key]
        except KeyError:
            raise KeyError(f"{self.target} exporter has no compatibility rule for {key!r}") from None

    def check(self, key: str, setting: str) -> Rule:
        """Look the rule up; record an error for an unexportable one (unless approximations are
        allowed) and a note for an approximate one. Returns the rule. `setting` names it for users."""
        rule = self.rule(key)
        if rule.kind == "unexportable":
            if rule.alternative is None:
                self.errors.append(f"{setting} cannot be exported to {self.target}: {rule.note}")
            elif not self.options.allow_approximate:
                self.errors.append(
                    f"{setting} cannot be exported to {self.target}: {rule.note}; nearest exportable: {rule.alternative} "
                    "(pass --allow-approximate to export that instead)"
                )
            else:
                self.notes.append(f"{setting}: {rule.note}; exported as the nearest: {rule.alternative}")
        elif rule.kind == "approximate":
            self.notes.append(rule.note)
        return rule

    def set(self, key: str, value: Any, *comments: str) -> None:
        self.entries.append(Entry(key, value, [c for c in comments if c]))

    def note(self, *comments: str) -> None:
        """Comments about a setting the export leaves unset (rendered alone, no key)."""
        if any(comments):
            self.entries.append(Entry("", None, [c for c in comments if c]))

    def comment(self, key: str, setting: str) -> str:
        """The comment a rule asks for next to its setting ('' for an exact one)."""
        rule = self.check(key, setting)
        if rule.kind == "approximate":
            return f"approximate: {rule.note}"
        if rule.kind == "unexportable":
            return f"approximate ({setting} has no equivalent): {rule.note}; written as the nearest: {rule.alternative}"
        return rule.note

    def raise_errors(self) -> None:
        if self.errors:
            raise ExportError("; ".join(self.errors))

    # -------------------------------------------------------------------------- rendering

    def yaml_text(self, title: str) -> str:
        """YAML with long flag names as keys and the comments above each key."""
        lines = [f"# {c}" for line in [title, *self.header] for c in wrap(line)]
        for entry in self.entries:
            lines.append("")
            lines += [f"# {c}" for comment in entry.comments for c in wrap(comment)]
            if entry.key:
                lines.append(yaml.safe_dump({entry.key: entry.value}, default_flow_style=False, sort_keys=False, width=1000).rstrip())
        return "\n".join(lines) + "\n"

    def env_text(self, title: str, names: dict[str, str]) -> str:
        """KEY=VALUE lines (docker --env-file, systemd EnvironmentFile), comments on their own lines."""
        lines = [f"# {c}" for line in [title, *self.header] for c in wrap(line)]
        for entry in self.entries:
            lines.append("")
            lines += [f"# {c}" for comment in entry.comments for c in wrap(comment)]
            if entry.key:
                lines.append(f"{names[entry.key]}={env_value(names[entry.key], cli_value(entry.value))}")
        return "\n".join(lines) + "\n"

    def command(self, program: list[str], positional: str | None = None, skip: tuple[str, ...] = ()) -> str:
        """The command line, one flag per line. Booleans are bare flags; mappings are JSON."""
        parts = [" ".join(shlex.quote(p) for p in program)]
        if positional is not None:
            parts[0] += " " + shlex.quote(positional)
        for entry in self.entries:
            if not entry.key or entry.key in skip:
                continue
            if entry.value is True:
                parts.append(f"--{entry.key}")
            elif entry.value is False or entry.value is None:
                continue
            else:
                parts.append(f"--{entry.key} {shlex.quote(cli_value(entry.value))}")
        return " \\\n    ".join(parts)


# A value an env file carries the same way to every reader: docker's --env-file takes the rest of
# the line literally (no quotes, no expansion), while `set -a; . FILE` and systemd's
# EnvironmentFile unquote and (the shell) expand it. Only words a shell reads literally mean the
# same to both; anything else (quotes, $, `, ;, spaces, backslashes) is refused.
ENV_SAFE_VALUE = re.compile(r"[\w@%+=:,./-]*")


def env_value(name: str, value: str) -> str:
    refuse_control_characters(value, f"the env file's {name}", "pass a value without it")
    if not ENV_SAFE_VALUE.fullmatch(value):
        bad = next(c for c in value if not ENV_SAFE_VALUE.fullmatch(c))
        where = "--model or model.source" if name == "MODEL_ID" else name
        raise ExportError(
            f"the env file's {name}={value!r} ({where}) holds {bad!r}, which docker --env-file reads literally but a shell "
            f"or systemd unquotes or expands; pass --model with a hub id or path of letters, digits and @%+=:,./-_ only"
        )
    return value


def cli_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def wrap(text: str, width: int = 98) -> list[str]:
    """Split a long comment into lines of at most `width` characters (words kept whole)."""
    import textwrap

    return textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False) or [""]


# ------------------------------------------------------------------------------ shared facts


def is_gpu_tuned(config: DeploymentConfig) -> bool:
    return config.device.startswith("cuda")


def is_vision(config: DeploymentConfig) -> bool:
    return config.model.model_kind == "image-text-to-text" or config.settings.max_pixels is not None


def served_model(config: DeploymentConfig, options: ExportOptions) -> tuple[str, str]:
    """(what the server loads, a comment on where it came from). Raises when nothing servable is known."""
    ref = config.model
    if options.model:
        return options.model, f"--model {options.model} given at export (best.yaml was tuned on {ref.name})"
    if ref.kind == "pretrained":
        return ref.source, ""
    if ref.kind == "embedded":
        return EMBEDDED_CHECKPOINT, (
            f"tuned on autotune's embedded {ref.name} (its GGUF weights, dequantized); the server loads the original "
            "checkpoint of the same shape"
        )
    hub_id = KNOWN_CHECKPOINTS.get(ref.name)
    if hub_id is None:
        raise ExportError(
            f"model {ref.name!r} was tuned with random weights from a config, and autotune knows no checkpoint for it; "
            "pass --model HUB_ID_OR_PATH (the real checkpoint of that shape)"
        )
    return hub_id, (
        f"tuned with random weights of {ref.name}'s shape (speed and memory do not depend on the weights; "
        "quality was not measured); the server loads the real checkpoint"
    )


def measured_summary(config: DeploymentConfig) -> list[str]:
    """Header lines: where the figures come from and what they were."""
    s, m, fp = config.settings, config.measured, config.fingerprint
    gpus = f"{s.num_gpus} x " if s.num_gpus > 1 else ""
    lines = [
        f"from: best.yaml of study {config.study_name!r}, trial {config.trial_number}, written {config.created_at}",
        f"tuned on: {gpus}{fp.device_name} ({config.device}, {fp.device_memory_gib:g} GiB{' each' if gpus else ''}), "
        f"torch {fp.torch}, transformers {fp.transformers}",
        f"settings: {s.label()}, {s.new_tokens} new tokens per request",
    ]
    throughput = f"{m.throughput.median:.1f} {m.throughput_unit} (spread {m.throughput.spread_pct:.1f}%)"
    whole = f", whole device {m.nvml_peak_used_gib:.2f} GiB" if m.nvml_peak_used_gib else ""
    if s.num_gpus > 1:
        where = f"{s.num_gpus} GPUs, the layers split over them with device_map"
        memory = f"peak per GPU {m.peak_memory_gib:.2f} GiB (the fullest GPU){whole}"
    else:
        where = f"one {'GPU' if is_gpu_tuned(config) else 'CPU process'}"
        memory = f"peak {m.peak_memory_gib:.2f} GiB{whole}"
    lines.append(f"measured (transformers, {where}): {throughput}, TTFT {m.ttft_s.median:.3f} s, {memory}")
    if config.memory_budget_gib is not None:
        lines.append(f"memory budget asked for: {config.memory_budget_gib:g} GiB")
    return lines


TENSOR_PARALLEL_NOTE = (
    "best.yaml holds a one-GPU measurement: with tensor parallelism each GPU holds a share of the weights, so more KV "
    "cache (more concurrent sequences) fits than was measured, and throughput and latency differ from the measured "
    "figures (re-measure on the target)"
)


# num_gpus > 1: autotune measured the model spread over N GPUs with transformers' device_map, whole
# layers per GPU (pipeline-style, one GPU busy at a time), each GPU capped at the memory budget;
# measured.peak_memory_gib is the fullest GPU's. The servers split every layer over their GPUs
# instead (tensor parallel), so even on as many GPUs the placement is not the measured one.
LAYER_SPLIT_NOTE = (
    "best.yaml was measured with transformers' device_map splitting the layers over the GPUs (whole layers per GPU, "
    "one GPU busy at a time); {server} splits every layer over them (tensor parallel): on as many GPUs each holds about "
    "the share of the weights and of the KV cache the layer split did (more of the KV cache where the model has fewer "
    "KV heads than GPUs), so the per-GPU memory is figured from the measured per-GPU peak of the layer split; "
    "throughput and latency differ from the measured figures (re-measure on the target)"
)
# More GPUs than measured: the same approximation as a one-GPU measurement served tensor parallel
# (TENSOR_PARALLEL_NOTE, which keeps its words for num_gpus 1): the measured per-GPU figure
# over-reserves, which is safe, so it is written with a note and needs no flag.
MORE_GPUS_NOTE = (
    "served on more GPUs than best.yaml was measured on (num_gpus): the memory fraction is the measured per-GPU peak, "
    "so each GPU reserves more than its share needs and more KV cache fits than was measured; throughput and latency "
    "differ from the measured figures (re-measure on the target)"
)
# Fewer GPUs than measured: each GPU must hold more than any measured GPU did, and the budget the
# study judged feasibility on was per GPU, so the measurement no longer says the model fits. Like
# the other settings no measurement covers, that is unexportable: an error naming the fix, and
# --allow-approximate writes the nearest form, a per-GPU estimate from the measured GPUs' total.
FEWER_GPUS_NOTE = (
    "fewer GPUs than best.yaml was measured on must each hold more than the measured per-GPU peak, which no "
    "measurement covers; leave --tensor-parallel-size out to serve on the GPUs it was measured on"
)
FEWER_GPUS_ALTERNATIVE = (
    "the asked size, each GPU's memory estimated as the measured per-GPU peak x num_gpus / tensor-parallel-size"
)


def served_gpus(config: DeploymentConfig, options: ExportOptions) -> int:
    """The GPUs the export serves on: --tensor-parallel-size, by default the GPUs best.yaml was measured on."""
    return options.tensor_parallel_size or config.settings.num_gpus


def tensor_parallel(d: Draft, config: DeploymentConfig) -> tuple[int, list[str]]:
    """The tensor-parallel size to write and the comments its rules ask for (an error recorded in
    the draft for fewer GPUs than measured without --allow-approximate)."""
    measured, size = config.settings.num_gpus, served_gpus(config, d.options)
    if measured == 1:  # a one-GPU measurement: as before num_gpus existed
        return size, [d.comment("tensor_parallel_size>1", "tensor parallel")] if size > 1 else []
    comments = [d.comment("num_gpus>1", f"num_gpus {measured}")]
    if size > measured:
        comments.append(d.comment("tensor_parallel_size>num_gpus", f"tensor-parallel-size {size} with num_gpus {measured}"))
    elif size < measured:
        comments.append(d.comment("tensor_parallel_size<num_gpus", f"tensor-parallel-size {size} with num_gpus {measured}"))
    return size, comments


# Characters no exported file may carry: the C0 controls (newline, carriage return, NUL, escape,
# tab...), DEL, the C1 controls (U+0085 is a line break to YAML) and the Unicode line and paragraph
# separators (line breaks to YAML and to str.splitlines). Any of them in a value or a comment could
# start a new line, key, variable or statement of the exported file, or rewrite a terminal.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The parts of a DeploymentConfig an exporter writes (as values or in comments).
EXPORTED_FIELDS = ("model", "device", "settings", "generate_kwargs", "objective", "min_quality", "fingerprint", "study_name",
                   "storage", "created_at")


def refuse_control_characters(value: str, field: str, fix: str) -> None:
    """An ExportError naming `field` when `value` holds a control character (see CONTROL_CHARACTERS)."""
    found = CONTROL_CHARACTERS.search(value)
    if found:
        raise ExportError(
            f"{field} holds a control character (U+{ord(found.group()):04X} at position {found.start()}), which would "
            f"start a new line or key in the exported files; {fix}"
        )


def check_strings(config: DeploymentConfig, options: ExportOptions) -> None:
    """Refuse a control character in any string an exporter writes: every field of best.yaml that
    reaches the files, and --model. Everything else is quoted where it is written (YAML through
    yaml.safe_dump, shell words through shlex.quote, Python through a literal that reads back)."""
    if options.model is not None:
        refuse_control_characters(options.model, "--model", "pass the checkpoint's hub id or path without it")

    def walk(value: object, where: str) -> None:
        if isinstance(value, str):
            refuse_control_characters(value, f"best.yaml field {where}", "remove it from the file (autotune never writes one)")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key, f"{where} (a key)")
                walk(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    data = config.model_dump(mode="python", include=set(EXPORTED_FIELDS))
    for name in EXPORTED_FIELDS:
        walk(data.get(name), name)


def check_request_sizes(d: Draft, settings) -> None:
    """The image and video sizes are properties of the measured requests, not server settings:
    each exporter's rules say how it writes them (and a rule that turns approximate is noted)."""
    for name in ("image_size", "video_size"):
        if getattr(settings, name) is not None:
            d.check(name, f"{name} {getattr(settings, name)}")


def capacity_entry(d: Draft, config: DeploymentConfig, key: str | None = None) -> None:
    """best.yaml's simulated capacity: as `key` (the server's limit on requests in it, set to the
    simulated concurrency at the capacity, never below the batch) where the target has one, else a
    note. Nothing without a capacity (best.yaml of an older autotune, or written mid-study)."""
    cap = config.capacity
    if cap is None:
        return
    comment = d.comment("capacity", "capacity")
    if key is None:
        d.note(cap.summary(), comment)
    else:
        d.set(key, max(config.settings.batch_size, math.ceil(cap.concurrency)), cap.summary(), comment)


def uncovered_rules(rules: dict[str, Rule]) -> list[str]:
    """The rule keys the knob table asks of every exporter (autotune/knobs.py: one per value of an
    enumerated knob, the bare name otherwise) that `rules` lacks: each a knob or value the
    exporter would not know how to write."""
    from autotune import knobs

    return [key for row in knobs.KNOB_TABLE for key in row.export_rule_keys() if key not in rules]


def start(d: Draft, config: DeploymentConfig, options: ExportOptions) -> str:
    """What every exporter does first: refuse a control character in anything it would write and
    what the target cannot serve at all, write the header (where the figures come from, which
    checkpoint is served, a CPU tuning) and return the model."""
    check_strings(config, options)
    kind_rule = d.check(f"model_kind={config.model.model_kind}", f"model kind {config.model.model_kind}")
    d.raise_errors()
    model, model_note = served_model(config, options)
    d.header = measured_summary(config)
    if kind_rule.kind == "approximate":
        d.header.append(f"approximate: {kind_rule.note}")
    if model_note:
        d.notes.append(model_note)
        d.header.append(f"approximate: {model_note}")
    if not is_gpu_tuned(config) and d.check("device=cpu", "device cpu").kind == "approximate":
        d.header.append(f"approximate: {d.rule('device=cpu').note}")
    d.header.append("Settings the target takes differently from how autotune measured them are marked 'approximate:'.")
    return model


@dataclass(frozen=True)
class MemoryPlan:
    fraction: float | None  # of the serving GPU's total memory; None: leave the server's default
    arithmetic: str  # the comment that shows how the fraction was derived


def memory_plan(config: DeploymentConfig, options: ExportOptions, flag: str) -> MemoryPlan:
    """The GPU-memory fraction to give a server (per GPU): the measured peak plus the headroom,
    capped at the memory budget the study was asked to stay under, over the serving GPU's total
    memory. A multi-GPU measurement (num_gpus > 1) gives per-GPU figures; served on fewer GPUs
    (only with --allow-approximate) the peak is scaled up to an estimate."""
    if not is_gpu_tuned(config):
        return MemoryPlan(None, f"{flag} not set: tuned on CPU, so no GPU memory was measured (the server's default applies)")
    m, fp = config.measured, config.fingerprint
    measured_gpus, gpus = config.settings.num_gpus, served_gpus(config, options)
    fewer = gpus < measured_gpus
    if fewer and not options.allow_approximate:
        # The export fails on the tensor-parallel rule (raised with its other errors): no estimate
        # is made, so no memory error about it can come first.
        return MemoryPlan(None, "")
    # The whole-device figure (NVML) includes the CUDA context, which a server's fraction also
    # covers; torch's reserved memory is the fallback where NVML was not sampled.
    if measured_gpus > 1:
        # Per GPU: torch's reserved peak is the fullest GPU's; NVML sampled one GPU, which need not
        # be the fullest, so the larger of the two is taken.
        peak_gib = max(m.nvml_peak_used_gib or 0.0, m.peak_reserved_gib or m.peak_memory_gib)
        what = (f"measured per-GPU peak (the larger of NVML's whole-device peak and the fullest GPU's torch reserved peak; "
                f"of the {measured_gpus}-GPU layer split with device_map, not of a tensor-parallel shard)")
    elif m.nvml_peak_used_gib is not None:
        peak_gib, what = m.nvml_peak_used_gib, "measured whole-device peak (NVML)"
    else:
        peak_gib, what = (m.peak_reserved_gib or m.peak_memory_gib), "measured peak (torch reserved)"
    gpu_gib = options.gpu_memory_gib or fp.device_memory_gib
    per_gpu = " per GPU" if measured_gpus > 1 else ""
    gpu_what = f"{gpu_gib:g} GiB{per_gpu} ({'given with --gpu-memory-gib' if options.gpu_memory_gib else fp.device_name})"
    steps = f"{peak_gib:.2f} GiB {what}"
    if fewer:
        # The measured GPUs' total (each at most the fullest one's peak) spread evenly over fewer.
        peak_gib = peak_gib * measured_gpus / gpus
        steps += f" x {measured_gpus}/{gpus} GPUs = {peak_gib:.2f} GiB (an estimate, not measured)"
    want_gib = peak_gib * (1 + options.headroom)
    steps += f" x {1 + options.headroom:g} headroom = {want_gib:.2f} GiB"
    budget = config.memory_budget_gib
    # The budget was per GPU of the measured split; fewer GPUs cannot stay under it.
    capped = budget is not None and want_gib > budget and not fewer
    if capped:
        want_gib = max(budget, peak_gib)
        steps += f", capped at the {budget:g} GiB{per_gpu} budget -> {want_gib:.2f} GiB"
    # Round down when the budget is the limit (stay under it), up otherwise (cover the peak).
    fraction = math.floor(want_gib / gpu_gib * 100) / 100 if capped else math.ceil(want_gib / gpu_gib * 100) / 100
    if fraction * gpu_gib < peak_gib:
        fraction = math.ceil(peak_gib / gpu_gib * 100) / 100
    if fraction > 0.98:
        scaled = f" x {measured_gpus}/{gpus} GPUs" if fewer else ""
        raise ExportError(
            f"the {what}{scaled} plus {options.headroom:.0%} headroom is {want_gib:.2f} GiB{per_gpu}, more than the serving "
            f"GPU's {gpu_gib:g} GiB leaves room for; pass --gpu-memory-gib for a larger GPU, a lower --headroom, or re-tune with --memory-budget"
        )
    return MemoryPlan(fraction, f"{flag}{' (of each GPU)' if per_gpu else ''} = ({steps}) / {gpu_what} = {fraction:.2f}")
