"""Samplers by name (`--sampler`): the search strategy is the one thing a benchmark of the tuner
against random search and the full grid swaps; the study code around it stays the same.

Constraints: the study records OOM, unsupported, over-budget and low quality with
`trial.set_constraint` (autotune/study/tell.py). In Optuna 5, TPE, GP and NSGA-II read them from
`trial.constraints` themselves; their `constraints_func` argument is deprecated, and passing one as
well would store every constraint a second time (by index next to by name). Random search and the
grid learn nothing, so they ignore constraints; the study still never picks an infeasible best.

Samplers are not stored with a study: resuming one with another `--sampler` is fine, the new
sampler learns from every trial the study already holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError, unknown_name_message
from autotune.knobs import LOAD_KEY_KNOBS

if TYPE_CHECKING:  # annotations only: spec's sampler validator imports this module
    from autotune.spec import SearchSpace

DEFAULT_SAMPLER = "tpe"
GRID_POINT_ATTR = "autotune.grid_point"  # trial system attr: the index of the grid point it measures
# Optuna's own system attr for enqueue_trial's parameters (the baseline, load-key follow-ups).
_FIXED_PARAMS_ATTR = "fixed_params"


def startup_trials(space: SearchSpace) -> int:
    """Random trials before a model-based sampler takes over: a quarter of the space, 3 to 10."""
    return min(10, max(3, space.size // 4))


def _tpe(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(space))


class _NoRepeatProposals:
    """For samplers that propose deterministically from a model or a converged population (GP's
    acquisition maximum, NSGA-II's offspring). On a small categorical space that is soon a
    candidate already measured, again and again: the study answers such a duplicate from its
    record, the sampler learns nothing new, and the study ends on 200 duplicates in a row (GP found
    18 of 48 candidates in 300 asks, NSGA-II 32). A proposal that repeats a completed trial is
    handed to the sampler's independent (random) sampler instead."""

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        params = super().sample_relative(study, trial, search_space)
        if not params:
            return params
        proposal = {**params, **trial.system_attrs.get(_FIXED_PARAMS_ATTR, {})}  # enqueued values win over sampled ones
        for done in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            if all(done.params.get(k) == v for k, v in proposal.items()):
                return {}
        return params


class _NoRepeatGPSampler(_NoRepeatProposals, optuna.samplers.GPSampler):
    pass


class _NoRepeatNSGAIISampler(_NoRepeatProposals, optuna.samplers.NSGAIISampler):
    pass


def _gp(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    # Every knob is categorical; GPSampler handles those (and the constraints) itself. It needs torch.
    # The random fallback for repeated proposals is intended: no warning per knob for it.
    return _NoRepeatGPSampler(seed=seed, n_startup_trials=startup_trials(space), warn_independent_sampling=False)


def _nsga2(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    # The first generation is random: Optuna's default of 50 would make a 12-trial study a random
    # search, so a generation is as large as the model-based samplers' random start.
    return _NoRepeatNSGAIISampler(seed=seed, population_size=max(2, startup_trials(space)))


def _random(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _grid(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    return SpaceGridSampler(space)  # deterministic order: the seed does not apply


SamplerFactory = Callable[[int, "SearchSpace"], optuna.samplers.BaseSampler]
SAMPLERS: dict[str, SamplerFactory] = {"tpe": _tpe, "gp": _gp, "nsga2": _nsga2, "random": _random, "grid": _grid}


def check_sampler_name(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(unknown_name_message("sampler", name, SAMPLERS))
    return name


def create_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise AutotuneError(f"--sampler: {unknown_name_message('sampler', name, SAMPLERS)}")
    return SAMPLERS[name](seed, space)


class SpaceGridSampler(optuna.samplers.BaseSampler):
    """Every candidate of the search space exactly once.

    Optuna's GridSampler does not fit the study's ask/tell loop: it calls `study.stop()` when the
    grid is exhausted (which raises outside `study.optimize`), does not count enqueued trials (the
    baseline, the load-key follow-ups) as visited, and refuses to complete a partially enqueued
    one. This grid assigns each new trial the first free point that agrees with whatever was
    enqueued for it. A point is taken once a COMPLETE trial holds its parameters (also one measured
    under another sampler before a resume) or a RUNNING trial was assigned it; a failed trial's
    point is free again, as the study measures it again. The study stops itself when every
    candidate is measured.

    The order is load-key major (dtype, quantization, attention, compile vary slowest), so
    consecutive points reuse the loaded model: a full grid loads each model once, not once per
    trial.
    """

    def __init__(self, space: SearchSpace) -> None:
        knobs = space.knobs
        self._knobs = tuple(k for k in LOAD_KEY_KNOBS if k in knobs) + tuple(k for k in knobs if k not in LOAD_KEY_KNOBS)
        self._points = [dict(zip(self._knobs, values)) for values in itertools.product(*(getattr(space, k) for k in self._knobs))]
        self._index = {self._point_key(p): i for i, p in enumerate(self._points)}

    @property
    def size(self) -> int:
        return len(self._points)

    def _point_key(self, params: dict) -> tuple:
        return tuple(params.get(k) for k in self._knobs)

    def taken_points(self, study: optuna.Study) -> set[int]:
        taken = set()
        for trial in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if trial.state == TrialState.COMPLETE:
                index = self._index.get(self._point_key(trial.params))
            elif trial.state == TrialState.RUNNING:
                index = trial.system_attrs.get(GRID_POINT_ATTR)
            else:
                index = None
            if index is not None:
                taken.add(index)
        return taken

    def is_exhausted(self, study: optuna.Study) -> bool:
        return len(self.taken_points(study)) >= self.size

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if GRID_POINT_ATTR in trial.system_attrs:
            return
        fixed = trial.system_attrs.get(_FIXED_PARAMS_ATTR, {})
        matching = [i for i, point in enumerate(self._points) if all(point.get(k, v) == v for k, v in fixed.items())]
        taken = self.taken_points(study)
        free = [i for i in matching if i not in taken]
        # Nothing free (the study asked past the grid's end, or for a load whose points are all
        # taken): repeat a taken point; the study answers it from its record, never measures twice.
        index = (free or matching or [0])[0]
        study._storage.set_trial_system_attr(trial._trial_id, GRID_POINT_ATTR, index)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution):
        if param_name not in self._knobs:
            raise ValueError(f"{param_name!r} is not a knob of the search space the grid was built from")
        return self._points[trial.system_attrs[GRID_POINT_ATTR]][param_name]
