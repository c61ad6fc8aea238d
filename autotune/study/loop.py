"""The study loop: ask the sampler, order the asked candidates to reuse the loaded model, answer
each (from a record, without running, or in the worker), tell Optuna, write the outputs, ask
follow-ups while a model is loaded, then confirm the best few (confirm.py).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time

import optuna

from autotune.confirm import confirm_study, stored_confirmation
from autotune.errors import AutotuneError
from autotune.space import suggest, unsupported_reason
from autotune.spec import LOAD_KEY_KNOBS, Candidate, TrialOutcome, TrialRecord
from autotune.storage import OWNER_ATTR, Heartbeat
from autotune.study.budget import TrialTime, _stop_reason, _too_late_for, confirmation_reserve_s
from autotune.study.claims import _fail_stale, _fail_unrun, _in_flight_elsewhere, _rival, _wait_for_others
from autotune.study.context import CLAIM_ATTR, DEFERRED_ATTR, ProgressSink, StudyContext, _Silent
from autotune.study.health import SYSTEMATIC_FAILURES, SystematicFailureError, out_of_space_error, systematic_failure
from autotune.study.outputs import write_outputs
from autotune.study.placement import _place, _yield_wanted_gpus
from autotune.study.reference import ensure_reference
from autotune.study.results import _key, counted_trials, records
from autotune.study.runner import _run_candidate
from autotune.study.shortcuts import (
    _answered_without_measuring,
    _failed_load_outcome,
    _finished_by_params,
    _inferred_outcome,
    _predicted_over_budget,
    dominating_infeasible,
    failed_load,
)
from autotune.study.tell import tell
from autotune.worker import WorkerClient

# A model load costs seconds to minutes (bnb int8 of a 7B: ~15 s), a trial at a new batch/length
# only seconds. After each load the sampler is asked for this many more trials that keep the
# load-key fixed (Optuna samples the remaining knobs), so every load serves several trials.
TRIALS_PER_LOAD = 3


def _refresh(ctx: StudyContext) -> tuple[list[TrialRecord], dict[tuple, TrialRecord], int]:
    recs = records(ctx.study)
    counted = counted_trials(recs) + (_in_flight_elsewhere(ctx) if ctx.shared else 0)
    return recs, _finished_by_params(recs), counted


def run_study(ctx: StudyContext, progress: ProgressSink | None = None, ask_batch: int = 8) -> None:
    """Run trials until the study holds `spec.trials` counted trials, the space is exhausted, or
    the timeout passes. Trials are asked `ask_batch` at a time (TPE's constant liar keeps them
    apart) and ordered to reuse the loaded model. Ctrl-C marks the trial in flight failed.
    On shared storage every worker runs this same loop; the study is the only coordination.
    Stops with a one-line error when the first trials run in the worker all fail the same way
    (SystematicFailureError) or when what was measured cannot be saved (OutOfSpaceError); the
    worker is closed whatever happens."""
    progress = progress or _Silent()
    spec = ctx.spec
    recs, done, counted = _refresh(ctx)
    started = time.monotonic()
    duplicates_in_a_row = 0
    loaded_key: tuple | None = None
    shape_points = math.prod(len(getattr(ctx.space, k)) for k in ctx.space.knobs if k not in LOAD_KEY_KNOBS)
    pending: list[tuple[optuna.Trial, Candidate]] = []
    follow_ups: set[int] = set()  # trial numbers asked with the loaded model's load-key fixed
    replacements_left = 0  # follow-ups answered without the model (duplicate, inferred) are re-asked
    durations: list[TrialTime] = []  # (loaded a model, compiled, seconds) of the trials run in the worker
    ran_in_worker: list[TrialRecord] = []  # this run's trials the worker was asked to run, for `systematic_failure`
    body_failed = False
    run_log = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "owner": ctx.owner, "trials": []}
    log_dir = ctx.out / "workers" / ctx.worker_tag if ctx.worker_tag else ctx.out / "workers"
    worker = WorkerClient(ctx.model, ctx.device.device, spec.memory_budget_gib, log_dir)
    ctx.heartbeat = Heartbeat(ctx.study._storage, ctx.storage_info.heartbeat_s if ctx.shared else None)
    if ctx.placement is not None:  # the home GPU, for the quality reference and the first trials
        ctx.placement.acquire(ctx.placement.gpus_for(1), on_wait=progress.note)
        worker.use_gpus(ctx.placement.gpus_for(1))
    try:
        loaded_key = ensure_reference(ctx, worker) or loaded_key
        while True:
            if ctx.shared:  # other workers add trials, and may have died holding some
                _fail_stale(ctx, progress.note)
                recs, done, counted = _refresh(ctx)
            if counted >= spec.trials:
                if ctx.role != "tune" or not ctx.shared:
                    break
                # Counted with other workers' trials in flight, some of which may yet turn out to
                # be duplicates (not counted): the tune process sees the study through.
                _wait_for_others(ctx, progress.note)
                recs, done, counted = _refresh(ctx)
                if counted >= spec.trials:
                    break
                continue
            # The confirmation's expected time, kept free of new trials under --timeout (issue 20).
            reserve_s = confirmation_reserve_s(ctx, recs)
            ctx.stopped_reason = _stop_reason(ctx, done, started, duplicates_in_a_row, reserve_s)
            if ctx.stopped_reason:
                break
            if not pending:
                # Never more than the candidates left: the rest could only be duplicates.
                asked = [_ask(ctx) for _ in range(min(ask_batch, spec.trials - counted, ctx.space.size - len(done)))]
                pending = _order_for_loaded_model([(t, suggest(t, ctx.space)) for t in asked], loaded_key)
            trial, cand = pending.pop(0)
            trial_start = time.perf_counter()
            holds = None
            rival = None
            if ctx.shared:  # claim, then look: finished by another worker, or measured by one now
                try:
                    rival = _rival(ctx, trial, cand)
                except optuna.exceptions.UpdateFinishedTrialError:
                    ctx.heartbeat.discard(trial._trial_id)
                    progress.note(f"trial #{trial.number} was declared lost while it waited (no heartbeat for "
                                  f"{3 * spec.heartbeat_s}s) and is queued again; skipping it")
                    continue
                recs, done, counted = _refresh(ctx)
            previous = done.get(_key(cand))
            if previous is None and rival is not None:
                _fail_unrun(ctx, trial, DEFERRED_ATTR, rival)
                progress.note(f"{cand.label()} is being measured by another worker (trial #{rival}); asking for another")
                time.sleep(1.0)  # let it finish: the sampler may well propose it again
                continue
            if previous is not None:  # never measure the same candidate twice: answer from the record
                tell(ctx, trial, cand, previous.outcome, spawn_s=0.0, total_s=0.0, duplicate_of=previous)
                duplicates_in_a_row += 1
                if trial.number in follow_ups and replacements_left > 0 and cand.load_key == loaded_key:
                    # A follow-up that used nothing of the loaded model: ask another while it is loaded.
                    replacements_left -= 1
                    pending.insert(0, _ask_follow_up(ctx, cand.load_key, follow_ups))
                continue
            duplicates_in_a_row = 0
            progress.trial_started(counted, spec.trials, cand)
            try:
                reason = unsupported_reason(cand, ctx.device)
                spawn_s = 0.0
                unloadable = failed_load(cand, done) if reason is None else None
                dominating = dominating_infeasible(cand, done) if reason is None and unloadable is None else None
                too_big = _predicted_over_budget(ctx, cand) if reason is None and dominating is None and unloadable is None else None
                if reason is None and unloadable is None and dominating is None and too_big is None:
                    ctx.stopped_reason = _too_late_for(ctx, cand, loaded_key, started, durations, reserve_s)
                    if ctx.stopped_reason:
                        _fail_unrun(ctx, trial)
                        break
                    reason = _place(ctx, worker, cand, progress.note)
                if reason is not None:
                    outcome = TrialOutcome(status="unsupported", reason=reason)
                elif unloadable is not None:
                    outcome = _failed_load_outcome(unloadable)
                elif dominating is not None:
                    outcome = _inferred_outcome(cand, dominating)
                elif too_big is not None:
                    outcome = TrialOutcome(status="oom", predicted=True, reason=too_big)
                else:
                    ran_at, expected_load = time.perf_counter(), cand.load_key != loaded_key
                    outcome, spawn_s, holds = _run_candidate(ctx, worker, trial.number, cand, done)
                    if holds is not None:  # the worker ran it (else a known boundary answered it for free)
                        # A killed worker (trial timeout) reports no load: it was one if one was due.
                        durations.append((outcome.reloaded or expected_load, cand.compile,
                                          time.perf_counter() - ran_at - outcome.prepare_s))
                        loaded_key = cand.load_key if holds else None
            except BaseException:
                # Ctrl-C or a crash of the parent's own code: the trial in flight is lost, nothing else.
                _fail_unrun(ctx, trial)
                raise
            record = tell(ctx, trial, cand, outcome, spawn_s=spawn_s, total_s=time.perf_counter() - trial_start,
                           inferred_from=dominating if outcome.inferred_from is not None else None)
            if _yield_wanted_gpus(ctx, worker):
                loaded_key = None
            if outcome.reloaded and not outcome.first_attempt and outcome.phase != "load" and shape_points > 1 \
                    and loaded_key == cand.load_key:
                # Ask the follow-ups now and run them next, while this model is still loaded; never more
                # than the candidates neither measured nor pending (the rest could only be duplicates).
                for _ in range(min(TRIALS_PER_LOAD - 1, ctx.space.size - len(done) - len(pending) - 1)):
                    pending.append(_ask_follow_up(ctx, cand.load_key, follow_ups))
                pending = _order_for_loaded_model(pending, loaded_key)
                replacements_left = TRIALS_PER_LOAD - 1
            elif _answered_without_measuring(outcome) and trial.number in follow_ups \
                    and replacements_left > 0 and cand.load_key == loaded_key:
                replacements_left -= 1  # answered without the model, like a duplicate: ask another
                pending.insert(0, _ask_follow_up(ctx, cand.load_key, follow_ups))
            largest = outcome.boundary.largest_feasible if outcome.boundary is not None and outcome.probe_s > 0 else None
            if largest is not None and largest != cand.batch_size and loaded_key == cand.load_key:
                # Throughput rises with the batch until memory runs out: the largest batch that fits,
                # just found by the bisection, is the next candidate to measure on this model.
                pending.insert(0, _ask_at_boundary(ctx, cand, largest, follow_ups))
            counted += 1
            ctx.new_trials.append(record.number)
            recs.append(record)
            if record.state != "failed":
                done[_key(cand)] = record
            else:  # a candidate failed MAX_ATTEMPTS times joins `done`
                done = _finished_by_params(recs)
            run_log["trials"].append({"number": record.number, "total_s": record.total_s})
            write_outputs(ctx, report=False)  # after `tell`: a failed write loses nothing the study holds
            progress.trial_finished(record, counted, spec.trials)
            if holds is not None:
                ran_in_worker.append(record)
                if len(ran_in_worker) <= SYSTEMATIC_FAILURES and (stop := systematic_failure(ran_in_worker)):
                    raise SystematicFailureError(stop)
        if ctx.role == "tune":
            if ctx.shared:
                _wait_for_others(ctx, progress.note)
            # The noise-aware choice among the best few (autotune/confirm.py): same worker, same --timeout.
            confirm_started = time.monotonic()
            earlier = stored_confirmation(ctx.study)
            confirmation = confirm_study(ctx, worker, records(ctx.study), started, progress.note,
                                         place=lambda cand: _place(ctx, worker, cand, progress.note))
            run_log["confirmation_s"] = round(time.monotonic() - confirm_started, 3)
            if confirmation is not None and (earlier is None or earlier[0] != confirmation):  # measured now
                run_log["confirmation_measuring_s"] = confirmation.measuring_s
                run_log["confirmation_loading_s"] = confirmation.loading_s
    except BaseException as e:
        body_failed = True
        disk = _disk_error(ctx, e)
        if disk is not None:
            raise disk from e
        raise
    finally:
        # Every step runs even if one before it raises (a full disk fails the storage writes and
        # runs.jsonl alike), the worker first: a live worker child would keep this process from
        # ever exiting (multiprocessing joins its children at exit).
        def log_run() -> None:
            run_log["wall_s"] = time.monotonic() - started
            with open(ctx.out / "runs.jsonl", "a") as f:
                f.write(json.dumps(run_log) + "\n")

        cleanup = [worker.close, *[(lambda t=trial: _fail_unrun(ctx, t)) for trial, _ in pending],  # asked, never run
                   ctx.heartbeat.stop, *([ctx.placement.release_all] if ctx.placement is not None else []), log_run]
        try:
            _run_all(cleanup)
        except Exception as e:
            if not body_failed:  # else the body's error is the one to report; this one follows from it
                disk = _disk_error(ctx, e)
                if disk is not None:
                    raise disk from e
                raise


def _run_all(steps) -> None:
    """Run every step, even when one raises; then raise the first error."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as e:  # noqa: PERF203 - each step must run
            if first is None:
                first = e
    if first is not None:
        raise first


def _disk_error(ctx: StudyContext, e: BaseException) -> AutotuneError | None:
    """A full disk (or quota, or read-only file system) while saving, as one line that says what
    the study holds; None for any other error."""
    if isinstance(e, AutotuneError):
        return None
    try:
        saved = len(records(ctx.study))
    except Exception:  # the storage itself may be what failed
        saved = None
    where = ctx.storage_url.removeprefix("sqlite:///").removeprefix("journal://")
    return out_of_space_error(e, where, saved)


def _order_for_loaded_model(batch: list[tuple[optuna.Trial, Candidate]], loaded_key: tuple | None):
    """Run the candidates that reuse the loaded model first, then the rest grouped by load-key
    (in the sampler's order): a reload costs seconds to minutes, a trial only seconds."""
    first_seen: dict[tuple, int] = {}
    for i, (_, cand) in enumerate(batch):
        first_seen.setdefault(cand.load_key, i)
    return sorted(batch, key=lambda tc: (tc[1].load_key != loaded_key, first_seen[tc[1].load_key]))


def _ask(ctx: StudyContext) -> optuna.Trial:
    """Ask the sampler; on shared storage, record who holds the trial and start beating for it
    (asked trials wait in `pending` before they run: they must not look dead meanwhile)."""
    trial = ctx.study.ask()
    if ctx.shared:
        trial.set_user_attr(OWNER_ATTR, ctx.owner)
        if trial.user_attrs.get(CLAIM_ATTR):  # a retried trial carries its dead worker's claim
            trial.set_user_attr(CLAIM_ATTR, None)
        if ctx.heartbeat is not None:
            ctx.heartbeat.add(trial._trial_id)
    return trial


def _ask_fixed(ctx: StudyContext, params: dict, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """Ask for a trial with these knobs fixed (the sampler chooses the rest). On shared storage
    another worker may take the enqueued trial first; then this one is an ordinary sampled trial."""
    ctx.study.enqueue_trial(params)
    trial = _ask(ctx)
    follow_ups.add(trial.number)
    return trial, suggest(trial, ctx.space)


def _ask_follow_up(ctx: StudyContext, load_key: tuple, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """A shape with the load-key fixed (the sampler still chooses batch and length)."""
    return _ask_fixed(ctx, {k: v for k, v in zip(LOAD_KEY_KNOBS, load_key) if k in ctx.space.knobs}, follow_ups)


def _ask_at_boundary(ctx: StudyContext, cand: Candidate, batch_size: int, follow_ups: set[int]) -> tuple[optuna.Trial, Candidate]:
    """This candidate at another batch size (every other knob fixed)."""
    return _ask_fixed(ctx, {**{k: getattr(cand, k) for k in ctx.space.knobs}, "batch_size": batch_size}, follow_ups)
