"""What a finished (or running) study says beyond its best config: the Pareto front of the feasible
measured trials and the parameter importances. Pure functions over trial records and the Optuna
study, shared by the terminal view (`autotune show`) and report.html, so both show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState as OptunaState

from autotune.objectives import objective as objective_def
from autotune.spec import Stat, TrialRecord
from autotune.study.context import RECORD_ATTR  # the study owns how records are stored on trials
from autotune.study.pareto import non_dominated

# PED-ANOVA (Optuna's default evaluator) needs trials to compare; with one trial it returns equal
# shares for every knob, which reads like a finding and is not one.
MIN_TRIALS_FOR_IMPORTANCE = 2


def objective_stat(record: TrialRecord, objective: str) -> Stat | None:
    """The measured figure the objective ranks (autotune/objectives.py): throughput (tok/s or
    pairs/s), request latency (s) or goodput (req/s)."""
    return objective_def(objective).stat(record.outcome.measurement)


def front_candidates(records: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible measured trials; duplicates are left out (they repeat another trial's record)."""
    return [r for r in records if r.state == "measured" and r.outcome.measurement is not None]


def quality_on_front(records: list[TrialRecord]) -> bool:
    """Quality is a Pareto dimension only when every feasible measured trial has a score: a missing
    score cannot be compared, and dropping those trials would hide configs that may be best."""
    candidates = front_candidates(records)
    return bool(candidates) and all(r.outcome.quality is not None for r in candidates)


def _goodness(record: TrialRecord, objective: str, with_quality: bool) -> tuple[float, ...]:
    """The record's Pareto coordinates, each oriented so that higher is better."""
    m = record.outcome.measurement
    ranked = objective_def(objective)
    speed = -ranked.key(objective_stat(record, objective).median)
    coords = (speed, -m.peak_memory_gib)
    return coords + (record.outcome.quality.score,) if with_quality else coords


def pareto_front(records: list[TrialRecord], objective: str) -> list[TrialRecord]:
    """The non-dominated feasible measured trials over (objective, peak memory[, quality]), by
    ascending peak memory. A trial is dominated when another is at least as good on every
    dimension and better on one; exact ties all stay on the front."""
    with_quality = quality_on_front(records)
    front = non_dominated(front_candidates(records), lambda r: _goodness(r, objective, with_quality))
    return sorted(front, key=lambda r: (r.outcome.measurement.peak_memory_gib, r.number))


@dataclass(frozen=True)
class Importances:
    """How much each knob explains the objective across the feasible measured trials (normalised
    to sum to 1, largest first). Empty with a `note` saying why when it cannot be computed."""

    by_param: dict[str, float]
    n_trials: int
    note: str = ""


def importances(study: optuna.Study | None, objective: str) -> Importances:
    """Parameter importances (Optuna's default evaluator, PED-ANOVA) of the objective over the
    feasible measured trials. Infeasible trials are left out: their stored value is a placeholder
    (0 tok/s or infinite latency), not a measurement. Duplicates are left out: they would count
    one measurement twice. Knobs with one value in these trials cannot explain anything and are
    not ranked."""
    if study is None:
        return Importances({}, 0, "no study storage to read (study.db is missing or cannot be opened)")
    trials = []
    for trial in study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE,)):
        raw = trial.user_attrs.get(RECORD_ATTR)
        if raw is None or raw.get("state") != "measured" or raw.get("objective_value") is None:
            continue
        # The record's objective value, not the trial's stored values: it is the measured figure
        # whatever the study stores as its Optuna objective(s).
        trials.append(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                value=raw["objective_value"]))
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importances({}, len(trials), f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} feasible measured trials "
                                            f"to compare; the study has {len(trials)}")
    names = sorted({name for t in trials for name in t.params})
    varying = [name for name in names if len({repr(t.params.get(name)) for t in trials}) > 1]
    if not varying:
        return Importances({}, len(trials), "every feasible measured trial has the same value for every knob; "
                                            "nothing to attribute the differences to")
    feasible = optuna.create_study(direction=objective_def(objective).direction)
    feasible.add_trials(trials)
    try:
        values = optuna.importance.get_param_importances(feasible, params=varying)
    except Exception as e:  # the evaluator's own limits (degenerate values, too few distinct points)
        return Importances({}, len(trials), f"Optuna could not compute importances: {e}")
    return Importances(dict(sorted(values.items(), key=lambda kv: -kv[1])), len(trials))


def load_saved_study(out: Path, study_name: str | None) -> optuna.Study | None:
    """The study in an output directory's own study.db (the default storage), or None when there
    is none (another --storage was used) or it cannot be read. `study_name` None: the only study
    in the file."""
    db = out / "study.db"
    if not db.is_file():
        return None
    url = f"sqlite:///{db.resolve()}"
    try:
        if study_name is None:
            names = [s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)]
            if len(names) != 1:
                return None
            study_name = names[0]
        return optuna.load_study(study_name=study_name, storage=url)
    except Exception:  # a locked, foreign or damaged file: the report goes on without importances
        return None
