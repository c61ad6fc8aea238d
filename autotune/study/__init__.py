"""The Optuna study: create or resume, enqueue the baseline, run trials through the worker, turn
outcomes into trial states and constraints (in exactly one place: tell.py), and keep trials.jsonl
and best.yaml up to date after every trial so an interrupted study loses at most the trial in
flight. One job per module:

  context.py    StudyContext, QualitySetup, the progress sink, the user-attribute names (a leaf)
  setup.py      validate the inputs, create / resume / join / open a stored study
  results.py    trial records as stored; best and baseline record, speedup (a leaf)
  tell.py       outcome -> trial state: `classify` (pure) and `tell` (applies it to Optuna)
  shortcuts.py  answering a candidate without running it (finished, dominated, predicted, boundary)
  runner.py     running one candidate in the worker: bisection, measurement, retry in a fresh worker
  reference.py  the quality reference and floor; the names quality and boundaries are cached under
  claims.py     shared storage: claims, trials in flight elsewhere, stale trials, unrun trials
  budget.py     time: why the loop stops, whether the next trial would overrun --timeout
  placement.py  --gpus: the GPUs a candidate runs on
  outputs.py    trials.jsonl, best.yaml, report.html
  ownership.py  the owner lock: one `tune` process per study kept in a file (SQLite, journal)
  health.py     when the study must stop: the first trials failing the same way, a full disk
  loop.py       run_study: ask, order, answer, tell, follow-ups, confirmation

`from autotune.study import NAME` works for the names in `_EXPORTS`; each is imported from its
module on first use (PEP 562). So importing a leaf (autotune.study.context, autotune.study.results),
as confirm.py, analysis.py and report.py do, does not import the loop and everything it uses: no
import cycle runs through this package (tests/test_imports.py checks the whole graph).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # context.py
    "StudyContext": "context", "QualitySetup": "context", "ProgressSink": "context",
    "RECORD_ATTR": "context", "BASELINE_ATTR": "context", "INTERRUPTED_ATTR": "context",
    "REFERENCE_QUALITY_ATTR": "context", "QUALITY_CACHE_PREFIX": "context", "BOUNDARY_PREFIX": "context",
    "SPEC_ATTR": "context", "SPACE_ATTR": "context", "FINGERPRINT_ATTR": "context", "CLAIM_ATTR": "context",
    "DEFERRED_ATTR": "context", "IDENTITY_ATTRS": "context", "CONSTRAINT_KEYS": "context",
    # setup.py
    "prepare_out_dir": "setup", "default_study_name": "setup", "model_default_dtype": "setup",
    "default_validation_set": "setup", "setup_quality": "setup", "open_study": "setup", "join_study": "setup",
    "open_stored": "setup",
    # results.py
    "records": "results", "counted_trials": "results", "objective_value": "results", "best_record": "results",
    "baseline_record": "results", "speedup": "results",
    # tell.py
    "Verdict": "tell", "classify": "tell",
    # shortcuts.py
    "MAX_ATTEMPTS": "shortcuts", "MONOTONE_SHAPE_KNOBS": "shortcuts", "dominating_infeasible": "shortcuts",
    "failed_load": "shortcuts", "fitted_before": "shortcuts",
    # reference.py
    "reference_quality": "reference", "quality_floor": "reference",
    "reference_candidates": "reference", "ensure_reference": "reference",
    # budget.py
    "MAX_CONSECUTIVE_DUPLICATES": "budget", "expected_trial_s": "budget",
    # outputs.py
    "write_trials_jsonl": "outputs", "build_deployment": "outputs", "write_outputs": "outputs",
    # loop.py
    "TRIALS_PER_LOAD": "loop", "run_study": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
