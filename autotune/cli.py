"""The `autotune` command. Help texts come from TuneSpec's field descriptions (one source of truth);
every AutotuneError becomes one line on stderr and exit code 2, Ctrl-C exits 130 after saving."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from autotune.errors import AutotuneError, pydantic_message
from autotune.export.base import DEFAULT_HEADROOM
from autotune.spec import TuneSpec
from autotune.verify import DEFAULT_TOLERANCE_PCT

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find the best deployment config for a model on this machine, by measurement.")
# Piped output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _help(field: str) -> str:
    return TuneSpec.model_fields[field].description or ""


@app.command()
def tune(
    model: Optional[str] = typer.Option(None, "--model", help=_help("model")),
    random_weights: bool = typer.Option(False, "--random-weights", help=_help("random_weights")),
    kind: Optional[str] = typer.Option(None, "--kind", help=_help("kind")),
    space: Optional[Path] = typer.Option(None, "--space", help=_help("space")),
    trials: int = typer.Option(TuneSpec.model_fields["trials"].default, "--trials", help=_help("trials")),
    timeout: Optional[float] = typer.Option(None, "--timeout", help=_help("timeout_s")),
    trial_timeout: float = typer.Option(TuneSpec.model_fields["trial_timeout_s"].default, "--trial-timeout", help=_help("trial_timeout_s")),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help=_help("memory_budget_gib")),
    objective: str = typer.Option("throughput", "--objective", help=_help("objective")),
    device: Optional[str] = typer.Option(None, "--device", help=_help("device")),
    study: Optional[str] = typer.Option(None, "--study", help=_help("study")),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="AUTOTUNE_STORAGE",
                                          help=_help("storage") + " (also read from $AUTOTUNE_STORAGE, which keeps "
                                          "the password out of `ps`)"),
    out: Path = typer.Option(TuneSpec.model_fields["out"].default, "--out", help=_help("out")),
    gpus: Optional[str] = typer.Option(None, "--gpus", help=_help("gpus")),
    heartbeat: int = typer.Option(TuneSpec.model_fields["heartbeat_s"].default, "--heartbeat", help=_help("heartbeat_s")),
    seed: int = typer.Option(0, "--seed", help=_help("seed")),
    bisect: bool = typer.Option(True, "--bisect/--no-bisect", help=_help("bisect")),
    memory_model: bool = typer.Option(True, "--memory-model/--no-memory-model", help=_help("memory_model")),
    sampler: str = typer.Option(TuneSpec.model_fields["sampler"].default, "--sampler", help=_help("sampler")),
    confirm_top: int = typer.Option(TuneSpec.model_fields["confirm_top"].default, "--confirm-top", help=_help("confirm_top")),
    confirm_repeats: int = typer.Option(TuneSpec.model_fields["confirm_repeats"].default, "--confirm-repeats",
                                        help=_help("confirm_repeats")),
    data: Optional[Path] = typer.Option(None, "--data", help=_help("data")),
    min_quality: Optional[str] = typer.Option(None, "--min-quality", help=_help("min_quality")),
    quality_metric: Optional[str] = typer.Option(None, "--quality-metric", help=_help("quality_metric")),
    quality_examples: Optional[int] = typer.Option(None, "--quality-examples", help=_help("quality_examples")),
    allow_data_outside: bool = typer.Option(False, "--allow-data-outside", help=_help("allow_data_outside")),
    slo: Optional[str] = typer.Option(None, "--slo", help=_help("slo")),
    workload: Optional[str] = typer.Option(None, "--workload", help=_help("workload")),
) -> None:
    """Run (or resume) a tuning study and write best.yaml."""
    from autotune.report import RichProgress, print_results
    from autotune.study import open_study, run_study, write_outputs

    try:
        spec = TuneSpec(
            model=model, random_weights=random_weights, kind=kind, space=space, trials=trials, timeout_s=timeout,
            trial_timeout_s=trial_timeout, memory_budget_gib=memory_budget, objective=objective, device=device,
            study=study, storage=storage, out=out, gpus=gpus, heartbeat_s=heartbeat, seed=seed, bisect=bisect, memory_model=memory_model, sampler=sampler, confirm_top=confirm_top,
            confirm_repeats=confirm_repeats, data=data, min_quality=min_quality,
            quality_metric=quality_metric, quality_examples=quality_examples, allow_data_outside=allow_data_outside,
            slo=slo, workload=workload,
        )
    except ValidationError as e:
        raise _flag_error(e) from e
    procs: list = []
    if spec.storage is not None:
        from autotune.storage import check_url

        check_url(spec.storage)  # scheme and driver, before the model is resolved or any file created
    if spec.gpus:
        from autotune.scaleout import check_gpus, make_placement, require_shared_storage

        require_shared_storage(spec.storage, "--gpus")
        check_gpus(spec.gpus)
        spec = spec.model_copy(update={"device": spec.device or f"cuda:{spec.gpus[0]}"})
    ctx = open_study(spec)
    if spec.gpus:
        ctx.placement = make_placement(ctx.device.index, spec.gpus)
        ctx.worker_tag = f"cuda{ctx.device.index}"
    console.print(
        f"[bold]autotune[/] {ctx.model.name} ({ctx.model.kind}) on {ctx.device.name} [{ctx.device.device}]; "
        f"study {ctx.study_name!r} in {ctx.storage_url}; space of {ctx.space.size} candidates"
    )
    try:
        if spec.gpus:
            from autotune.scaleout import spawn_workers

            others = [g for g in spec.gpus if g != ctx.device.index]
            procs = spawn_workers(spec.storage, ctx.study_name, others, spec.gpus, spec.out, spec.trial_timeout_s)
            console.print(f"{len(others) + 1} workers share the study: this one on {ctx.device.device}, "
                          f"{', '.join(f'cuda:{g}' for g in others) or 'no other'} (logs in {spec.out / 'workers'})")
        with RichProgress(console, spec.objective) as progress:
            run_study(ctx, progress)
    except KeyboardInterrupt:
        if procs:
            from autotune.scaleout import stop_workers

            stop_workers(procs)
        write_outputs(ctx)
        err_console.print(f"interrupted: completed trials are saved in {spec.out}; re-run the same command to resume")
        raise typer.Exit(130) from None
    except AutotuneError:  # a study that cannot succeed, a full disk: the workers here stop too
        if procs:
            from autotune.scaleout import stop_workers

            stop_workers(procs)
        raise
    if procs:
        from autotune.scaleout import wait_workers

        wait_workers(procs, spec.trial_timeout_s, lambda text: console.print(text, markup=False))
    recs, config = write_outputs(ctx)
    if ctx.stopped_reason:
        console.print(f"stopped: {ctx.stopped_reason}")
    if not ctx.new_trials:
        console.print(f"nothing new to measure: the study already holds {spec.trials} trials (raise --trials to measure more)")
    print_results(console, recs, config, spec.objective, spec.out)
    if config is None:
        raise typer.Exit(1)


def _flag_error(e: ValidationError) -> AutotuneError:
    err = e.errors()[0]
    flag = "--" + str(err["loc"][0]).replace("_gib", "").replace("_s", "").replace("_", "-") if err["loc"] else "option"
    message = pydantic_message(err)
    return AutotuneError(message if message.startswith(flag + " ") else f"{flag}: {message}")


@app.command()
def worker(
    storage: str = typer.Option(..., "--storage", envvar="AUTOTUNE_STORAGE", help="the study's storage: postgresql://USER:PASSWORD@HOST/DB "
                                "or journal:///PATH (also read from $AUTOTUNE_STORAGE, which keeps the password out of `ps`)"),
    study: str = typer.Option(..., "--study", help="name of a study that `autotune tune --storage … --study NAME` created"),
    device: Optional[str] = typer.Option(None, "--device", help=_help("device")),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs of this host the workers here share (multi-GPU candidates "
                                       "take the next ones after --device), e.g. 0,1"),
    out: Optional[Path] = typer.Option(None, "--out", help="where this worker writes its logs, trials.jsonl and best.yaml; "
                                       "default: outputs/<study>"),
    trial_timeout: Optional[float] = typer.Option(None, "--trial-timeout", help="default: the study's"),
) -> None:
    """Join a study on shared storage and measure its trials until it holds --trials of them.
    Any number of workers, on any number of hosts (same GPU model), share one study."""
    from autotune.report import RichProgress, print_results
    from autotune.scaleout import make_placement, require_shared_storage
    from autotune.spec import TuneSpec
    from autotune.storage import check_url, owner
    from autotune.study import join_study, prepare_out_dir, run_study, write_outputs

    check_url(storage)  # before the output directory is created
    require_shared_storage(storage, "autotune worker")
    try:
        pool = TuneSpec.model_validate({"gpus": gpus}).gpus if gpus else None
    except ValidationError as e:
        raise _flag_error(e) from e
    if pool:
        from autotune.scaleout import check_gpus

        check_gpus(pool)
        device = device or f"cuda:{pool[0]}"
    out = out or Path("outputs") / study
    prepare_out_dir(out)
    ctx = join_study(storage, study, device, out, trial_timeout, pool)
    ctx.role = "worker"
    me = owner()
    ctx.worker_tag = f"{me['host']}-{ctx.device.device.replace(':', '')}-{me['pid']}"
    if pool:
        ctx.placement = make_placement(ctx.device.index, pool)
    console.print(f"[bold]autotune worker[/] {ctx.model.name} on {ctx.device.name} [{ctx.device.device}]; "
                  f"study {ctx.study_name!r} in {ctx.storage_url}")
    try:
        with RichProgress(console, ctx.spec.objective) as progress:
            run_study(ctx, progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: the trial in flight is failed (the study may propose it again); everything "
                          "measured is in the study")
        raise typer.Exit(130) from None
    recs, config = write_outputs(ctx, report=False)
    print_results(console, recs, config, ctx.spec.objective, out)


@app.command()
def show(
    out: Optional[Path] = typer.Argument(None, help="output directory of a tune run (with --storage: where to write "
                                         "trials.jsonl, best.yaml and report.html; default outputs/<study>)"),
    markdown: bool = typer.Option(False, "--markdown", help="print the trial table as markdown (for reports)"),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="AUTOTUNE_STORAGE",
                                          help="read the study from this storage instead of a directory (a shared study)"),
    study_name: Optional[str] = typer.Option(None, "--study", help="with --storage: the study's name"),
) -> None:
    """Print the trials, the best config, the Pareto front and the parameter importances of a
    finished or running study; write report.html if the directory has none. With --storage and
    --study, write trials.jsonl, best.yaml and report.html from the storage first."""
    from autotune.analysis import importances, load_saved_study
    from autotune.report import load_results, objectives_front_markdown, print_analysis, print_results, study_objectives, trials_markdown
    from autotune.report_html import REPORT_FILE, write_report_or_warn

    if storage is not None:
        from autotune.study import open_stored, prepare_out_dir, write_outputs

        if not study_name:
            raise AutotuneError("--storage needs --study NAME (the study to read)")
        out = out or Path("outputs") / study_name
        ctx = open_stored(storage, study_name, out)
        prepare_out_dir(out)
        write_outputs(ctx)
    if out is None:
        raise AutotuneError("pass the output directory of a tune run, or --storage URL --study NAME")
    recs, config = load_results(out)
    study = load_saved_study(out, config.study_name if config else None)
    if storage is not None:
        study = ctx.study
    objective = config.objective if config else "throughput"
    if config is None and study is not None:  # nothing feasible yet: the study's identity says what it optimises
        objective = str(study.user_attrs.get("objective", objective)).split(",")[0]  # a multi-objective study's first
    if markdown:
        print(trials_markdown(recs, objective))
        names = study_objectives(recs)
        front = objectives_front_markdown(recs, names, config.trial_number if config else None) if names else None
        if front is not None:
            print("\n" + front)
        return
    if not (out / REPORT_FILE).is_file():
        write_report_or_warn(out, recs, study, objective, config)
    print_results(console, recs, config, objective, out)
    print_analysis(console, recs, importances(study, objective), objective)


@app.command()
def verify(
    config: Path = typer.Argument(..., help="a best.yaml written by `autotune tune`"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda:N or cpu; default: the device it was tuned on"),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE_PCT, "--tolerance", help="percent: a figure drifts only if it is off by more than "
                                    "this, as a factor either way (+100% and -50% are both 2×), and by more than "
                                    "the two spreads explain"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed repeats (≥3); default: as many as recorded"),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="judge the worst case against this budget "
                                                "(e.g. 16GiB) instead of the recorded one"),
    trial_timeout: float = typer.Option(TuneSpec.model_fields["trial_timeout_s"].default, "--trial-timeout",
                                        help=_help("trial_timeout_s")),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report to this file as JSON"),
) -> None:
    """Re-measure a best.yaml on this machine and compare with what it recorded.

    Exit codes: 0 PASS: same environment, every figure within the noise.

    3 DRIFT: a fingerprint field changed, or a figure moved beyond the tolerance and the spreads.

    4 FAIL: the claimed worst case (batch × max length) does not run here or exceeds the budget.

    2: bad input (not a best.yaml, unknown device, budget above the device's memory).
    """
    from autotune.spec import parse_memory
    from autotune.verify import report_lines, verify as run_verify

    try:
        budget = parse_memory(memory_budget) if memory_budget is not None else None
    except ValueError as e:
        raise AutotuneError(f"--memory-budget: {e}") from e
    try:
        report = run_verify(config, device=device, tolerance_pct=tolerance, repeats=repeats, memory_budget_gib=budget,
                            trial_timeout_s=trial_timeout)
    except KeyboardInterrupt:
        err_console.print("interrupted: nothing verified")
        raise typer.Exit(130) from None
    if json_out is not None:
        try:
            json_out.write_text(report.model_dump_json(indent=2) + "\n")
        except OSError as e:
            raise AutotuneError(f"--json {json_out}: cannot write ({e.strerror}); pass a writable path") from e
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code)


@app.command("replay")
def replay_command(
    config: Path = typer.Argument(..., help="a best.yaml written by `autotune tune`"),
    at: str = typer.Option("0.5,0.8,1.0", "--at", help="arrival rates as fractions of the capacity, e.g. 0.5,0.8,1.0"),
    requests: int = typer.Option(300, "--requests", help="requests replayed at each rate (the first 10% warm the queue up)"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda:N or cpu; default: the device it was tuned on"),
    seed: int = typer.Option(0, "--seed", help="seed of the arrivals and the drawn requests"),
    repeats: int = typer.Option(6, "--repeats", help="batches measured per batch size for the service model (its tail "
                                "is its slowest samples: 3 make a p95 of the slowest one)"),
    slo: Optional[str] = typer.Option(None, "--slo", help="judge the capacity against these limits instead of the "
                                      "study's --slo (same form, e.g. ttft_p95=2s,tpot_p95=60ms)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report here; default: replay.json beside the best.yaml"),
    kv_cache: str = typer.Option("keep", "--kv-cache", help="keep: the server allocates its static KV cache once and runs "
                                 "every batch on it, as servers do; per-call: a new cache in every generate(), as "
                                 "generate() makes one (the check before 2026-12-07)"),
) -> None:
    """Check the capacity against reality: measure the config's service times on its workload, compute
    its capacity under the study's --slo, then replay the workload at fractions of it (Poisson
    arrivals, one server process batching requests as they come) and print the simulated p95
    latencies next to the replayed ones."""
    import json

    from autotune.atomic import atomic_write_text
    from autotune.replay import replay_deployment

    try:
        fractions = [float(f) for f in at.split(",") if f.strip()]
    except ValueError:
        raise AutotuneError(f"--at {at}: cannot read it; give fractions of the capacity like 0.5,0.8,1.0") from None
    if not fractions or any(not 0 < f <= 2 for f in fractions):
        raise AutotuneError(f"--at {at}: fractions must be above 0 and at most 2 (200% of the capacity), e.g. 0.5,0.8,1.0")
    if not 3 <= repeats <= 100:
        raise AutotuneError(f"--repeats {repeats}: measure 3 to 100 batches per batch size")
    if kv_cache not in ("keep", "per-call"):
        raise AutotuneError(f"--kv-cache {kv_cache}: give keep or per-call")
    if not 112 <= requests <= 100_000:
        raise AutotuneError(f"--requests {requests}: replay between 112 (100 counted after the warm-up) and 100000 requests per rate")
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    target = json_out or config.parent / "replay.json"
    saved: list[dict] = []

    def save(report: dict) -> None:  # after the capacity and after every rate: a stopped run keeps what it measured
        try:
            atomic_write_text(target, json.dumps(report, indent=2) + "\n")
        except OSError as e:
            raise AutotuneError(f"--json {target}: cannot write ({e.strerror}); pass a writable path") from e
        saved[:] = [report]

    if not target.parent.is_dir():
        raise AutotuneError(f"--json {target}: its folder does not exist; pass a path in an existing folder")
    try:
        report = replay_deployment(config, device=device, fractions=fractions, n_requests=requests, seed=seed, slo=slo,
                                   repeats=repeats, note=say, save=save, keep_kv_cache=kv_cache == "keep")
    except ValueError as e:
        raise AutotuneError(f"{config}: {e}") from e
    except KeyboardInterrupt:
        done = f"the capacity and {len({r['fraction'] for r in saved[0]['rows']})} rate(s) are in {target}" if saved else "nothing was measured yet"
        err_console.print(f"interrupted: {done}")
        raise typer.Exit(130) from None
    say(report["markdown"])
    say(f"wrote {target}")


@app.command("export")
def export_command(
    config: Path = typer.Argument(..., help="a best.yaml written by `autotune tune`"),
    to: str = typer.Option(..., "--to", help="vllm, sglang, tgi or transformers"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the file here (a directory: the target's default name) "
                                       "and the command line next to it as .sh; default: print to stdout"),
    allow_approximate: bool = typer.Option(False, "--allow-approximate", help="write the nearest exportable setting "
                                           "(with a comment) instead of failing on one the target cannot take"),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", help="GPUs to shard the model "
                                                       "over; default: the GPUs best.yaml was measured on (num_gpus)"),
    headroom: float = typer.Option(DEFAULT_HEADROOM, "--headroom", help="memory headroom over the measured peak, as a fraction (0.1 = 10%)"),
    gpu_memory_gib: Optional[float] = typer.Option(None, "--gpu-memory-gib", help="the serving GPU's memory in GiB; "
                                                   "default: the tuning GPU's"),
    model: Optional[str] = typer.Option(None, "--model", help="the checkpoint the server loads (hub id or path); "
                                        "default: the one best.yaml was tuned on"),
) -> None:
    """Export a best.yaml to a serving system's config file and command line."""
    from autotune.export import export, write_export

    result = export(config, to, allow_approximate=allow_approximate, tensor_parallel_size=tensor_parallel_size,
                    headroom=headroom, gpu_memory_gib=gpu_memory_gib, model=model)
    if out is None:
        sys.stdout.write(result.printable())
        return
    for path in write_export(result, out):
        console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"approximate: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def cache(
    clear: bool = typer.Option(False, "--clear", help="delete them (each is rebuilt when a study needs it again)"),
) -> None:
    """List the rebuildable builds autotune keeps (random-weight checkpoints, quantized copies), on
    disk and in the RAM folder $AUTOTUNE_SCRATCH_DIR names, with their sizes; --clear deletes them."""
    import shutil

    from autotune.models import cache_dir, cache_entries, scratch_dir

    entries = cache_entries()
    for entry in entries:
        where = "RAM " if entry.in_ram else "disk"
        action = "deleted" if clear else ""
        console.print(f"{where} {entry.size_bytes / 1024**3:7.2f} GiB  {entry.path} {action}".rstrip(),
                      markup=False, highlight=False, soft_wrap=True)
        if clear:
            shutil.rmtree(entry.path, ignore_errors=True)
    total = sum(e.size_bytes for e in entries) / 1024**3
    ram = scratch_dir()
    console.print(f"{len(entries)} rebuildable build(s), {total:.2f} GiB{' freed' if clear else ''} "
                  f"(disk: {cache_dir()}; RAM: {ram if ram is not None else 'not used'})",
                  markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    # Standalone mode lets typer handle usage errors (exit 2 with usage text), --help and Ctrl-C
    # outside a study; what is ours to report is an AutotuneError: one line, no traceback.
    try:
        app()
    except AutotuneError as e:
        err_console.print(f"error: {e}", soft_wrap=True, highlight=False, markup=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
