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
    tensor_parallel_size: int = 1
    headroom: float = DEFAULT_HEADROOM  # fraction over the measured peak, 0.10 = 10%
    gpu_memory_gib: float | None = None  # the serving GPU's memory; default: the tuning GPU's
    model: str | None = None  # served checkpoint (hub id or path); default: from best.yaml

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
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
                lines.append(f"{names[entry.key]}={cli_value(entry.value)}")
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
    lines = [
        f"from: best.yaml of study {config.study_name!r}, trial {config.trial_number}, written {config.created_at}",
        f"tuned on: {fp.device_name} ({config.device}, {fp.device_memory_gib:g} GiB), torch {fp.torch}, transformers {fp.transformers}",
        f"settings: {s.label()}, {s.new_tokens} new tokens per request",
    ]
    throughput = f"{m.throughput.median:.1f} {m.throughput_unit} (spread {m.throughput.spread_pct:.1f}%)"
    memory = f"peak {m.peak_memory_gib:.2f} GiB" + (f", whole device {m.nvml_peak_used_gib:.2f} GiB" if m.nvml_peak_used_gib else "")
    lines.append(f"measured (transformers, one {'GPU' if is_gpu_tuned(config) else 'CPU process'}): {throughput}, "
                 f"TTFT {m.ttft_s.median:.3f} s, {memory}")
    if config.memory_budget_gib is not None:
        lines.append(f"memory budget asked for: {config.memory_budget_gib:g} GiB")
    return lines


TENSOR_PARALLEL_NOTE = (
    "best.yaml holds a one-GPU measurement: with tensor parallelism each GPU holds a share of the weights, so more KV "
    "cache (more concurrent sequences) fits than was measured, and throughput and latency differ from the measured "
    "figures (re-measure on the target)"
)


def start(d: Draft, config: DeploymentConfig, options: ExportOptions) -> str:
    """What every exporter does first: refuse what the target cannot serve at all, write the header
    (where the figures come from, which checkpoint is served, a CPU tuning) and return the model."""
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
    """The GPU-memory fraction to give a server: the measured peak plus the headroom, capped at the
    memory budget the study was asked to stay under, over the serving GPU's total memory."""
    if not is_gpu_tuned(config):
        return MemoryPlan(None, f"{flag} not set: tuned on CPU, so no GPU memory was measured (the server's default applies)")
    m, fp = config.measured, config.fingerprint
    # The whole-device figure (NVML) includes the CUDA context, which a server's fraction also
    # covers; torch's reserved memory is the fallback where NVML was not sampled.
    if m.nvml_peak_used_gib is not None:
        peak_gib, what = m.nvml_peak_used_gib, "measured whole-device peak (NVML)"
    else:
        peak_gib, what = (m.peak_reserved_gib or m.peak_memory_gib), "measured peak (torch reserved)"
    gpu_gib = options.gpu_memory_gib or fp.device_memory_gib
    gpu_what = f"{gpu_gib:g} GiB ({'given with --gpu-memory-gib' if options.gpu_memory_gib else fp.device_name})"
    want_gib = peak_gib * (1 + options.headroom)
    steps = f"{peak_gib:.2f} GiB {what} x {1 + options.headroom:g} headroom = {want_gib:.2f} GiB"
    budget = config.memory_budget_gib
    capped = budget is not None and want_gib > budget
    if capped:
        want_gib = max(budget, peak_gib)
        steps += f", capped at the {budget:g} GiB budget -> {want_gib:.2f} GiB"
    # Round down when the budget is the limit (stay under it), up otherwise (cover the peak).
    fraction = math.floor(want_gib / gpu_gib * 100) / 100 if capped else math.ceil(want_gib / gpu_gib * 100) / 100
    if fraction * gpu_gib < peak_gib:
        fraction = math.ceil(peak_gib / gpu_gib * 100) / 100
    if fraction > 0.98:
        raise ExportError(
            f"the {what} plus {options.headroom:.0%} headroom is {want_gib:.2f} GiB, more than the serving GPU's {gpu_gib:g} GiB "
            "leaves room for; pass --gpu-memory-gib for a larger GPU, a lower --headroom, or re-tune with --memory-budget"
        )
    return MemoryPlan(fraction, f"{flag} = ({steps}) / {gpu_what} = {fraction:.2f}")
