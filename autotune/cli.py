"""The `autotune` command. Help texts come from TuneSpec's field descriptions (one source of truth);
every AutotuneError becomes one line on stderr and exit code 2, Ctrl-C exits 130 after saving."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from autotune.errors import AutotuneError
from autotune.spec import TuneSpec

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
    storage: Optional[str] = typer.Option(None, "--storage", help=_help("storage")),
    out: Path = typer.Option(TuneSpec.model_fields["out"].default, "--out", help=_help("out")),
    seed: int = typer.Option(0, "--seed", help=_help("seed")),
    data: Optional[Path] = typer.Option(None, "--data", help=_help("data")),
    min_quality: Optional[str] = typer.Option(None, "--min-quality", help=_help("min_quality")),
    quality_metric: Optional[str] = typer.Option(None, "--quality-metric", help=_help("quality_metric")),
    quality_examples: Optional[int] = typer.Option(None, "--quality-examples", help=_help("quality_examples")),
) -> None:
    """Run (or resume) a tuning study and write best.yaml."""
    from autotune.report import RichProgress, print_results
    from autotune.study import open_study, run_study, write_outputs

    try:
        spec = TuneSpec(
            model=model, random_weights=random_weights, kind=kind, space=space, trials=trials, timeout_s=timeout,
            trial_timeout_s=trial_timeout, memory_budget_gib=memory_budget, objective=objective, device=device,
            study=study, storage=storage, out=out, seed=seed, data=data, min_quality=min_quality,
            quality_metric=quality_metric, quality_examples=quality_examples,
        )
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_gib", "").replace("_s", "").replace("_", "-") if err["loc"] else "option"
        raise AutotuneError(f"{flag}: {err['msg'].removeprefix('Value error, ')}") from e
    ctx = open_study(spec)
    console.print(
        f"[bold]autotune[/] {ctx.model.name} ({ctx.model.kind}) on {ctx.device.name} [{ctx.device.device}]; "
        f"study {ctx.study_name!r} in {ctx.storage_url}; space of {ctx.space.size} candidates"
    )
    try:
        with RichProgress(console, spec.objective) as progress:
            run_study(ctx, progress)
    except KeyboardInterrupt:
        write_outputs(ctx)
        err_console.print(f"interrupted: completed trials are saved in {spec.out}; re-run the same command to resume")
        raise typer.Exit(130) from None
    recs, config = write_outputs(ctx)
    if ctx.stopped_reason:
        console.print(f"stopped: {ctx.stopped_reason}")
    if not ctx.new_trials:
        console.print(f"nothing new to measure: the study already holds {spec.trials} trials (raise --trials to measure more)")
    print_results(console, recs, config, spec.objective, spec.out)
    if config is None:
        raise typer.Exit(1)


@app.command()
def show(
    out: Path = typer.Argument(..., help="output directory of a tune run"),
    markdown: bool = typer.Option(False, "--markdown", help="print the trial table as markdown (for reports)"),
) -> None:
    """Print the trials and the best config of a finished or running study."""
    from autotune.report import load_results, print_results, trials_markdown

    recs, config = load_results(out)
    objective = config.objective if config else "throughput"
    if markdown:
        print(trials_markdown(recs, objective))
        return
    print_results(console, recs, config, objective, out)


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
