"""Samplers by name: every one runs a real study on the tiny model (with real OOM constraints for
the ones that learn from them), the grid measures every candidate of a space exactly once and
stops, and an unknown name is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.samplers import SAMPLERS, GRID_POINT_ATTR, SpaceGridSampler, create_sampler
from autotune.space import suggest
from autotune.spec import LOAD_KEY_KNOBS, SearchSpace, TuneSpec
from autotune.study import open_study, run_study, write_outputs
from tests.conftest import TINY_SPACE, assert_ok, read_records, run_cli, write_space
from tests.test_cli_errors import assert_one_line_error

# One dtype, two attention kernels (two loads), two batches, two lengths: 8 candidates.
SMALL_SPACE = {"dtype": ["fp32"], "attn_implementation": ["sdpa", "eager"], "batch_size": [1, 2], "max_length": [16, 32],
               "new_tokens": 2}


# ------------------------------------------------------------------------------ the grid, without a worker


def _grid_study(space: SearchSpace) -> tuple[optuna.Study, SpaceGridSampler]:
    sampler = create_sampler("grid", 0, space)
    assert isinstance(sampler, SpaceGridSampler)
    return optuna.create_study(sampler=sampler, direction="maximize"), sampler


def test_grid_assigns_every_point_once_counting_enqueued_trials() -> None:
    space = SearchSpace.model_validate(TINY_SPACE)
    study, sampler = _grid_study(space)
    baseline = {"dtype": "fp32", "quantization": "none", "attn_implementation": "sdpa", "compile": False, "batch_size": 1, "max_length": 32}
    study.enqueue_trial(baseline)
    seen = []
    while not sampler.is_exhausted(study):
        asked = [study.ask() for _ in range(3)]  # asked in batches, as the study does: all RUNNING at once
        for trial in asked:
            seen.append(suggest(trial, space))
        for trial in asked:
            study.tell(trial, 1.0)
        assert len(seen) <= space.size + 2
    assert seen[0].model_dump(include=set(baseline)) == baseline
    assert len(set(seen[: space.size])) == space.size == 8  # every point once, the enqueued baseline among them
    # Load-key major: consecutive grid points share the loaded model.
    keys = [c.load_key for c in seen[1: space.size]]
    assert sum(1 for a, b in zip(keys, keys[1:]) if a != b) == len(set(keys)) - 1


def test_grid_completes_a_load_key_follow_up_with_a_free_point_of_that_load() -> None:
    space = SearchSpace.model_validate(TINY_SPACE)
    study, sampler = _grid_study(space)
    first = study.ask()
    cand = suggest(first, space)
    study.tell(first, 1.0)
    study.enqueue_trial({k: v for k, v in zip(LOAD_KEY_KNOBS, cand.load_key) if k in space.knobs})
    follow_up = study.ask()
    other = suggest(follow_up, space)
    assert other.load_key == cand.load_key and other != cand


def test_grid_offers_a_failed_point_again() -> None:
    space = SearchSpace.model_validate(TINY_SPACE)
    study, _ = _grid_study(space)
    trial = study.ask()
    cand = suggest(trial, space)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a crashed worker: the study measures it again
    again = study.ask()
    assert suggest(again, space) == cand
    points = [t.system_attrs[GRID_POINT_ATTR] for t in study.get_trials(deepcopy=False)]
    assert points[0] == points[1]


# ------------------------------------------------------------------------------ real studies


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"grid"}))
def test_sampler_runs_a_real_study_with_constraints(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 runs out of memory (a real failed allocation in the worker): the OOM constraints are
    what TPE, GP and NSGA-II learn from. Asked two at a time, so the model-based samplers take over
    after their random start (3 trials for this space)."""
    monkeypatch.setenv("AUTOTUNE_FAULTS", json.dumps({"oom_at_batch_size": 2}))
    space = write_space(tmp_path / "space.yaml", **SMALL_SPACE)
    spec = TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=6, out=tmp_path / "out", device="cpu",
                    sampler=name, confirm_top=0)
    ctx = open_study(spec)
    assert type(ctx.study.sampler) is type(create_sampler(name, 0, ctx.space))
    run_study(ctx, ask_batch=2)
    recs, config = write_outputs(ctx)
    counted = [r for r in recs if r.state != "duplicate"]
    assert len(counted) == 6
    assert all(r.state in ("measured", "infeasible") for r in counted), [(r.number, r.state, r.outcome.reason) for r in counted]
    assert len({r.candidate for r in counted}) == len(counted), "a candidate was measured twice"
    assert any(r.constraints["oom"] > 0 for r in counted) and any(r.state == "measured" for r in counted)
    told = [t for t in ctx.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert any(t.constraints["oom"] > 0 for t in told)  # the constraint reached Optuna, where the sampler reads it
    assert config is not None and config.settings.batch_size == 1


@pytest.mark.slow
def test_grid_measures_every_candidate_once_and_stops(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", **SMALL_SPACE)
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--trials", "20",
                     "--sampler", "grid", "--confirm-top", "0", "--out", str(out), "--device", "cpu")
    assert_ok(result)
    assert "stopped: all 8 candidates of the space are answered" in result.stdout
    recs = read_records(out)
    assert [r.state for r in recs].count("duplicate") == 0, [(r.number, r.candidate.label()) for r in recs]
    assert len(recs) == 8 and len({r.candidate for r in recs}) == 8
    assert all(r.state == "measured" for r in recs)
    reloads = sum(1 for r in recs if r.outcome.reloaded)
    assert reloads == 2  # load-key major: one load per attention kernel


@pytest.mark.slow
def test_resume_with_another_sampler_keeps_the_study(tmp_path: Path) -> None:
    """Samplers are not stored: a random start resumed with the grid measures only what is left."""
    space = write_space(tmp_path / "space.yaml", **SMALL_SPACE)
    out = tmp_path / "out"
    common = ("tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--confirm-top", "0",
              "--out", str(out), "--device", "cpu")
    assert_ok(run_cli(*common, "--trials", "3", "--sampler", "random"))
    first = {r.number: r for r in read_records(out)}
    assert_ok(run_cli(*common, "--trials", "8", "--sampler", "grid"))
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    assert all(r == first[r.number] for r in recs if r.number in first)
    assert len(recs) == 8 and len({r.candidate for r in recs}) == 8


def test_unknown_sampler_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("tune", "--sampler", "cmaes", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "--sampler", "unknown sampler 'cmaes'", "gp, grid, nsga2, random, tpe")
    assert not (tmp_path / "out").exists()

