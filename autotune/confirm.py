"""Noise-aware choice of the winner: re-measure the search's top candidates interleaved, pick by
median, and call a difference inside the noise a tie (broken by lower peak memory).

Why: the search's best is the candidate that happened to measure highest once (repeats of one
point differed by 3-57% on an H100), so its figure leans high and its lead over the runner-up may
be noise. Re-measuring the top k side by side, in the same minutes, gives each the same machine.

Protocol:
- Rounds: each round re-measures every candidate once with `REPEATS_PER_ROUND` timed repeats
  (after the worker's usual warm-up at the exact shapes), so slow drift of the machine (clocks,
  thermals, neighbours) hits every candidate alike. The samples of all rounds are pooled per
  candidate. The search's own samples are left out: they are the ones it was picked on.
- Order: within a round, candidates that share a load-key (dtype, quantization, attention,
  compile) run back to back, and every other round runs in reverse order (A B C, C B A, ...): a
  linear drift then evens out, and the model loaded at the end of a round is the one the next
  round starts with. The cost: with L different load-keys among the top k, the confirmation loads
  L + (rounds - 1) * (L - 1) models (a top k that shares one load-key loads none after the first);
  a load costs seconds to minutes, so the count is reported (`reloads`). Grouping all rounds of a
  load-key together would load each model once, but the candidates would then be measured at
  different times, which is what the confirmation is there to avoid.
- Decision: the leader is the best pooled median. Any candidate whose median is within the noise
  of the leader's ties with it: within a factor 1 + half the sum of the two spreads (each median
  plus or minus half its range), the rule `autotune verify` uses for drift. Among the tied, the
  lowest peak memory wins (same speed, more headroom). A candidate that fails, runs out of memory
  or goes over the budget in any round is dropped and cannot win.
- Time: the confirmation is study time, and `--timeout` never skips it (issue 20: a confirmation
  skipped by --timeout left a runner-up under-measured by 29%). The search keeps the time the
  confirmation is expected to take (confirmation_cost_s, from this run's measured trials) and
  stops starting trials that would eat into it (study/budget.py). The confirmation's deadline is
  the later of --timeout and its start plus that estimate: when the search overran (a trial took
  longer than expected, or the top k filled up late), the study overruns --timeout by up to the
  estimate rather than skip it. No round starts after the deadline (a round in flight completes,
  as a trial does); a confirmation cut short that way still picks its winner on the rounds that
  ran, and best.yaml says the winner is unconfirmed and why (`confirmed`, `confirmation_note`).
- The result is stored in the study (user attrs) and in best.yaml (`confirmation`); a resumed study
  re-uses it as long as the search's top k are the same trials, and re-runs it otherwise (or when
  --confirm-repeats changed, or its time ran out before its last round). best.yaml's `confirmed`
  is true only for the winner of a complete confirmation of today's top k; otherwise
  `confirmation_note` says why not (off, nothing to compare, not reached yet, cut short, every
  candidate dropped).
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from autotune.spec import Candidate, Confirmation, ConfirmedCandidate, Measurement, Stat, TrialRecord
from autotune.worker.client import worker_state_suspect
from autotune.worker.protocol import WorkRequest
from autotune.objectives import objective as objective_def
from autotune.slo import goodput

if TYPE_CHECKING:
    from autotune.study.context import StudyContext
    from autotune.worker import WorkerClient

CONFIRMATION_ATTR = "autotune.confirmation"
CONFIRMED_MEASUREMENT_ATTR = "autotune.confirmation.measured"  # the winner's pooled Measurement
# Two timed repeats per round: one warm-up run per request is then a third of the round's work
# instead of a half, and rounds stay short enough to interleave.
REPEATS_PER_ROUND = 2
# The worker's trial number for confirmation runs (-1 is the quality reference): its log names
# the candidate, and no fault planted for a trial number fires here.
CONFIRM_TRIAL_NUMBER = -2


KNEE_NOTE = ("a multi-objective study without --slo: best.yaml holds its Pareto front's knee, measured once "
             "(the confirmation ranks by one objective; give --slo to choose the best within it, confirmed)")


def objective_stat(measurement: Measurement, objective: str) -> Stat:
    """The Stat the objective is the median of (as study.objective_value)."""
    stat = objective_def(objective).stat(measurement)
    if stat is None:
        raise ValueError(f"the measurement has no {objective} figure")
    return stat


def top_candidates(recs: list[TrialRecord], objective: str, k: int) -> list[TrialRecord]:
    """The k best feasible measured trials by the search's objective value, one per candidate, in
    the order study.best_record ranks them (ties to lower peak memory, then the earlier trial)."""
    key = objective_def(objective).key
    feasible = [r for r in recs if r.state == "measured" and r.objective_value is not None]
    ranked = sorted(feasible, key=lambda r: (key(r.objective_value), r.outcome.measurement.peak_memory_gib, r.number))
    top: list[TrialRecord] = []
    for r in ranked:
        if len(top) == k:
            break
        if all(t.candidate != r.candidate for t in top):
            top.append(r)
    return top


def round_plan(repeats: int) -> list[int]:
    """Timed repeats per round: 6 -> [2, 2, 2], 5 -> [2, 2, 1]."""
    return [REPEATS_PER_ROUND] * (repeats // REPEATS_PER_ROUND) + ([repeats % REPEATS_PER_ROUND] if repeats % REPEATS_PER_ROUND else [])


def confirmation_cost_s(recs: list[TrialRecord], objective: str, k: int, repeats: int) -> float:
    """Seconds the confirmation of the current top k is expected to take, from this run's records:
    what it would cost if the search stopped now. 0.0 when nothing would be confirmed (k = 0, or
    fewer than two feasible candidates measured).

    It replays confirm()'s plan: round_plan(repeats) rounds over interleaved_order(top), every
    other round reversed, adding
    - a model load whenever the load-key changes, the first of the first round included (the
      model the search left loaded is not counted on). A load costs the median `load_s` of the
      trials that loaded that load-key (a duplicate repeats its original's outcome and is left
      out); for a load-key no trial timed (loaded for the quality reference), the median of all
      loads; with no load timed at all, nothing;
    - per candidate and round, one request: its search trial's warm-up (`warmup_s`: the first run
      at its shape, compile included), the round's timed repeats at its search trial's time per
      repeat (`measure_s` / its samples), and the trial's other work in the worker (total_s less
      spawn, prepare, load, probing, quality, warm-up and measuring: the request's overhead).
    It assumes the confirmation's runs cost what the search's did. It leaves out what the search
    cannot foretell: a fresh worker's spawn and reload after an out-of-memory or error retry (or
    after a candidate that leaves the worker suspect), and a search retry's lost first attempt
    (which it counts as overhead, erring long). A top that is not full yet (fewer than k feasible)
    is estimated as it stands: each candidate that joins it adds its share."""
    if k == 0:
        return 0.0
    top = top_candidates(recs, objective, k)
    if len(top) < 2:
        return 0.0
    loads: dict[tuple, list[float]] = {}
    for r in recs:
        if r.state != "duplicate" and r.outcome.reloaded and r.outcome.load_s > 0:
            loads.setdefault(r.candidate.load_key, []).append(r.outcome.load_s)
    every_load = [s for times in loads.values() for s in times]
    fallback = statistics.median(every_load) if every_load else 0.0
    load_s = {key: statistics.median(times) for key, times in loads.items()}

    def request_s(r: TrialRecord, n_repeats: int) -> float:
        o, m = r.outcome, r.outcome.measurement
        per_repeat = m.measure_s / max(len(m.request_latency_s.samples), 1)
        quality_s = o.quality.elapsed_s if o.quality is not None else 0.0
        other = r.total_s - r.spawn_s - o.prepare_s - o.load_s - o.probe_s - quality_s - m.warmup_s - m.measure_s
        return max(other, 0.0) + m.warmup_s + per_repeat * n_repeats

    order = interleaved_order(top)
    total, loaded = 0.0, None
    for i, n_repeats in enumerate(round_plan(repeats)):
        for r in order if i % 2 == 0 else order[::-1]:
            if r.candidate.load_key != loaded:
                total += load_s.get(r.candidate.load_key, fallback)
                loaded = r.candidate.load_key
            total += request_s(r, n_repeats)
    return total


def interleaved_order(top: list[TrialRecord]) -> list[TrialRecord]:
    """Rank order, with candidates that share a load-key moved next to the first of them."""
    first_seen: dict[tuple, int] = {}
    for i, r in enumerate(top):
        first_seen.setdefault(r.candidate.load_key, i)
    return sorted(top, key=lambda r: first_seen[r.candidate.load_key])


def within_noise(a: Stat, b: Stat) -> bool:
    """The two medians are within a factor 1 + half the sum of the two spreads of each other.
    Timing noise is multiplicative, so the factor applies either way (as in autotune verify)."""
    if a.median <= 0 or b.median <= 0:
        return a.median == b.median
    return max(a.median / b.median, b.median / a.median) <= 1 + (a.spread_pct + b.spread_pct) / 200


def _figure(stat: Stat) -> str:
    return f"{stat.median:,.4g} (spread {stat.spread_pct:.0f}%, n={len(stat.samples)})"


def decide(candidates: list[ConfirmedCandidate], objective: str) -> tuple[int | None, list[int], str]:
    """(winner's trial number, the tied trial numbers, the reason in words)."""
    alive = [c for c in candidates if c.confirmed is not None and not c.dropped]
    if not alive:
        why = "; ".join(f"#{c.trial_number}: {c.dropped or 'not measured'}" for c in candidates)
        return None, [], f"no candidate could be re-measured ({why})"
    key = objective_def(objective).key
    ranked = sorted(alive, key=lambda c: (key(c.confirmed.median), c.peak_memory_gib or 0.0))
    leader = ranked[0]
    tied = [c for c in ranked if within_noise(leader.confirmed, c.confirmed)]
    if len(tied) == 1:
        if len(ranked) == 1:
            return leader.trial_number, [leader.trial_number], f"#{leader.trial_number} is the only candidate left: {_figure(leader.confirmed)}"
        runner = ranked[1]
        factor = max(leader.confirmed.median, runner.confirmed.median) / min(leader.confirmed.median, runner.confirmed.median)
        noise = (leader.confirmed.spread_pct + runner.confirmed.spread_pct) / 2
        return leader.trial_number, [leader.trial_number], (
            f"#{leader.trial_number} {_figure(leader.confirmed)} beats #{runner.trial_number} {_figure(runner.confirmed)}: "
            f"{(factor - 1) * 100:.1f}% apart, more than the {noise:.1f}% the spreads explain")
    winner = min(tied, key=lambda c: (c.peak_memory_gib if c.peak_memory_gib is not None else float("inf"), key(c.confirmed.median)))
    others = ", ".join(f"#{c.trial_number} {_figure(c.confirmed)}" for c in tied)
    return winner.trial_number, [c.trial_number for c in tied], (
        f"tie within the noise: {others}; #{winner.trial_number} wins with the lowest peak memory "
        f"({winner.peak_memory_gib:.3f} GiB)")


def slo_drops(measured: dict[int, list[Measurement]], limits: list) -> dict[int, str]:
    """Candidates whose pooled confirmation rounds break an --slo limit (autotune.slo.SloLimit):
    the search judged each on its own trial, and a candidate near a limit can pass there and break
    it here (CPU, 2026-12-06: TTFT p95 154 ms against 150 ms). Such a one cannot win."""
    from autotune.slo import violations

    drops = {}
    for number, rounds in measured.items():
        broken = violations(pool_measurements(rounds), limits) if rounds and limits else []
        if broken:
            drops[number] = "over the SLO in the confirmation's rounds: " + "; ".join(broken)
    return drops


def pool_measurements(measurements: list[Measurement]) -> Measurement:
    """One Measurement from several rounds: every Stat over all rounds' samples, memory peaks the
    highest of any round, warm-up and measuring time (and a workload's truncated requests) summed."""
    fields: dict = {}
    for name in Measurement.model_fields:
        values = [getattr(m, name) for m in measurements]
        present = [v for v in values if v is not None]
        if not present:
            fields[name] = None
        elif isinstance(present[0], Stat):
            fields[name] = Stat.of([x for v in present for x in v.samples]) if len(present) == len(values) else None
        elif name.endswith("_gib"):
            fields[name] = max(present)
        elif name in ("warmup_s", "measure_s", "workload_truncated"):
            fields[name] = sum(present)
        elif name.startswith("request_"):  # every round's timed requests, in the order of the pooled samples
            fields[name] = [x for v in present for x in v] if len(present) == len(values) else None
        elif name == "padding_share":  # the rounds' mean (each round's batches are about alike in size)
            fields[name] = sum(present) / len(present)
        else:  # per-request figures that do not change between rounds (visual tokens)
            fields[name] = present[0]
    return Measurement(**fields)


def confirm(ctx: StudyContext, worker: WorkerClient, top: list[TrialRecord], repeats: int, *,
            deadline: float | None = None, note: Callable[[str], None] = lambda text: None,
            place: Callable[[Candidate], str | None] | None = None,
            out_of_time: str = "--timeout reached") -> tuple[Confirmation, Measurement | None]:
    """Re-measure `top` (the search's best first) in interleaved rounds; returns the decision and
    the winner's pooled Measurement. No round after the first starts at or past `deadline`
    (monotonic clock); `out_of_time` says, in `Confirmation.stopped`, what that deadline was."""
    objective, budget = ctx.spec.objective, ctx.spec.memory_budget_gib
    plan = round_plan(repeats)
    order = interleaved_order(top)
    measured: dict[int, list[Measurement]] = {r.number: [] for r in top}
    dropped: dict[int, str] = {}
    peaks: dict[int, float] = {}
    reloads, rounds_run, stopped = 0, 0, ""
    measuring_s = loading_s = 0.0
    start = time.monotonic()
    for i, n_repeats in enumerate(plan):
        if i > 0 and deadline is not None and time.monotonic() >= deadline:
            stopped = f"{out_of_time} after {i} of {len(plan)} rounds"
            break
        this_round: dict[int, str] = {}
        for r in order if i % 2 == 0 else order[::-1]:
            if r.number in dropped:
                continue
            reason = place(r.candidate) if place is not None else None  # --gpus: take the GPUs it needs
            if reason is not None:
                dropped[r.number] = f"round {i + 1}: {reason}"
                continue
            # A workload's batches: another draw each round, the same for every candidate of the round.
            request = WorkRequest(trial_number=CONFIRM_TRIAL_NUMBER, candidate=r.candidate, repeats=n_repeats,
                                  workload=ctx.space.workload, workload_seed=i + 1)
            outcome, _ = worker.run(request, ctx.spec.trial_timeout_s)
            retried = ""
            if outcome.status in ("oom", "error") and outcome.phase != "load":
                # It fitted and ran in the search: what ran out is memory the other candidates' runs
                # left in this process (compiled graphs' pools, cached blocks), or what raised is state
                # they left (worker_state_suspect). Once more, in a fresh worker.
                loading_s += outcome.load_s
                reloads += int(outcome.reloaded)
                worker.close()
                outcome, _ = worker.run(request, ctx.spec.trial_timeout_s)
                retried = " (also in a fresh worker)"
            if worker_state_suspect(r.candidate, outcome):
                worker.close()
            reloads += int(outcome.reloaded)
            loading_s += outcome.load_s
            m = outcome.measurement
            if m is not None:
                measuring_s += m.warmup_s + m.measure_s
                if ctx.spec.slo_limits:  # as the study's tell: what --objective goodput ranks
                    m.goodput_rps = goodput(m, ctx.spec.slo_limits)
            if outcome.status != "ok" or m is None:
                dropped[r.number] = f"round {i + 1}: {outcome.status}{retried}: {outcome.reason[:300]}"
            elif budget is not None and m.peak_memory_gib > budget:
                dropped[r.number] = f"round {i + 1}: peak {m.peak_memory_gib:.2f} GiB is over the {budget:.2f} GiB budget"
            else:
                measured[r.number].append(m)
                peaks[r.number] = max(peaks.get(r.number, 0.0), m.peak_memory_gib)
                this_round[r.number] = f"{objective_stat(m, objective).median:,.4g}"
        rounds_run = i + 1
        note(f"confirmation round {rounds_run}/{len(plan)}: "
             + ", ".join(f"#{r.number} {this_round.get(r.number, 'dropped')}" for r in top) + f" ({reloads} model loads so far)")
    for number, why in slo_drops({n: ms for n, ms in measured.items() if n not in dropped}, ctx.spec.slo_limits).items():
        dropped[number] = why
    candidates = [
        ConfirmedCandidate(
            trial_number=r.number, candidate=r.candidate, search_value=r.objective_value,
            confirmed=Stat.of([x for m in measured[r.number] for x in objective_stat(m, objective).samples]) if measured[r.number] else None,
            peak_memory_gib=peaks.get(r.number), rounds=len(measured[r.number]), dropped=dropped.get(r.number, ""),
        )
        for r in top
    ]
    winner, tied, reason = decide(candidates, objective)
    confirmation = Confirmation(
        objective=objective, top_k=ctx.spec.confirm_top, repeats=repeats, rounds=rounds_run, rounds_planned=len(plan),
        candidates=candidates, winner=winner, search_winner=top[0].number, tie=len(tied) > 1, tied=tied, reason=reason,
        reloads=reloads, elapsed_s=round(time.monotonic() - start, 3), measuring_s=round(measuring_s, 3),
        loading_s=round(loading_s, 3), stopped=stopped,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return confirmation, pool_measurements(measured[winner]) if winner is not None else None


def stored_confirmation(study: optuna.Study) -> tuple[Confirmation, Measurement | None] | None:
    raw = study.user_attrs.get(CONFIRMATION_ATTR)
    if raw is None:
        return None
    measurement = study.user_attrs.get(CONFIRMED_MEASUREMENT_ATTR)
    return Confirmation.model_validate(raw), Measurement.model_validate(measurement) if measurement else None


def confirmation_deadline(timeout_s: float | None, started: float, estimate_s: float,
                          note: Callable[[str], None] = lambda text: None) -> tuple[float | None, str]:
    """The confirmation's deadline (monotonic clock) and the words for running out of it: the later
    of --timeout (counted from `started`) and now plus the time estimated for the confirmation
    (confirmation_cost_s), so that --timeout never skips it; None without --timeout (every round
    runs). The search keeps that estimate free (study/budget.py), so the two agree unless the search
    overran, and then the study overruns --timeout by up to the estimate."""
    if timeout_s is None:
        return None, ""
    timeout_at, now = started + timeout_s, time.monotonic()
    if now + estimate_s <= timeout_at:
        return timeout_at, f"--timeout {timeout_s:g}s reached"
    where = "has passed" if now >= timeout_at else f"leaves {timeout_at - now:.0f}s"
    note(f"--timeout {timeout_s:g}s {where}; the confirmation still gets the {estimate_s:.0f}s estimated for it")
    return now + estimate_s, f"the {estimate_s:.0f}s estimated for it (past --timeout {timeout_s:g}s) ran out"


def confirm_study(ctx: StudyContext, worker: WorkerClient, recs: list[TrialRecord], started: float,
                  note: Callable[[str], None], place: Callable[[Candidate], str | None] | None = None) -> Confirmation | None:
    """After the search (run_study): confirm the top --confirm-top candidates unless a stored
    confirmation of the same trials is complete. --timeout (counted from `started`) never skips it:
    its deadline is confirmation_deadline's."""
    spec = ctx.spec
    if spec.confirm_top == 0:
        return None
    if spec.knee_choice:
        note("confirmation skipped: " + KNEE_NOTE)
        return None
    top = top_candidates(recs, spec.objective, spec.confirm_top)
    if len(top) < 2:
        note(f"confirmation skipped: {len(top)} feasible candidate{'s' if len(top) != 1 else ''} measured, nothing to compare")
        return None
    stored = stored_confirmation(ctx.study)
    same_trials = stored is not None and stored[0].top_trials == [r.number for r in top]
    if same_trials and stored[0].repeats == spec.confirm_repeats and stored[0].rounds == stored[0].rounds_planned:
        note(f"confirmation of {', '.join(f'#{r.number}' for r in top)} is up to date (winner #{stored[0].winner}): not re-measured")
        return stored[0]
    deadline, out_of_time = confirmation_deadline(spec.timeout_s, started, confirmation_cost_s(
        recs, spec.objective, spec.confirm_top, spec.confirm_repeats), note)
    plan = round_plan(spec.confirm_repeats)
    note(f"confirming the top {len(top)} ({', '.join(f'#{r.number}' for r in top)}): {len(plan)} interleaved rounds, "
         f"{spec.confirm_repeats} timed repeats each")
    confirmation, measurement = confirm(ctx, worker, top, spec.confirm_repeats, deadline=deadline, note=note, place=place,
                                        out_of_time=out_of_time)
    ctx.study.set_user_attr(CONFIRMATION_ATTR, confirmation.model_dump(mode="json"))
    ctx.study.set_user_attr(CONFIRMED_MEASUREMENT_ATTR, measurement.model_dump(mode="json") if measurement else None)
    changed = "" if confirmation.winner in (None, confirmation.search_winner) else f" (the search alone picked #{confirmation.search_winner})"
    note(f"confirmed: #{confirmation.winner}{changed}: {confirmation.reason}"
         + (f"; {confirmation.stopped}" if confirmation.stopped else ""))
    return confirmation


def confirmed_best(ctx: StudyContext, recs: list[TrialRecord], best: TrialRecord) -> tuple[TrialRecord, Confirmation | None]:
    """The record best.yaml describes: the stored confirmation's winner with its pooled figures,
    when that confirmation covers the current top k; otherwise the search's best, unconfirmed."""
    stored = stored_confirmation(ctx.study) if ctx.spec.confirm_top and not ctx.spec.knee_choice else None
    if stored is None:
        return best, None
    confirmation, measurement = stored
    top = top_candidates(recs, ctx.spec.objective, ctx.spec.confirm_top)
    if confirmation.top_trials != [r.number for r in top] or confirmation.winner is None or measurement is None:
        return best, None
    winner = next(r for r in top if r.number == confirmation.winner)
    pooled = winner.model_copy(update={
        "outcome": winner.outcome.model_copy(update={"measurement": measurement}),
        "objective_value": objective_stat(measurement, ctx.spec.objective).median,
    })
    return pooled, confirmation


def unconfirmed_reason(ctx: StudyContext, recs: list[TrialRecord], applied: Confirmation | None) -> str:
    """Why best.yaml's winner is not confirmed, in words (its `confirmation_note`); "" when it is:
    `applied` (confirmed_best's confirmation) ran every planned round over today's top k."""
    spec = ctx.spec
    if applied is not None:
        if applied.rounds >= applied.rounds_planned:
            return ""
        ran = applied.stopped or f"{applied.rounds} of {applied.rounds_planned} rounds ran"
        return (f"the confirmation was cut short ({ran}): #{applied.winner} won on fewer samples than planned; "
                f"re-run the same command with more --timeout to complete it")
    if not spec.confirm_top:
        return "confirmation off (--confirm-top 0): the search's best, measured once"
    if spec.knee_choice:
        return KNEE_NOTE
    top = top_candidates(recs, spec.objective, spec.confirm_top)
    if len(top) < 2:
        return f"{len(top)} feasible candidate{'s' if len(top) != 1 else ''} measured, nothing to compare: the search's best, measured once"
    ranked = ", ".join(f"#{r.number}" for r in top)
    stored = stored_confirmation(ctx.study)
    if stored is not None and stored[0].top_trials == [r.number for r in top] and stored[0].winner is None:
        return f"the confirmation of {ranked} picked no winner: {stored[0].reason}"
    return (f"not confirmed yet: the search's best, measured once; the confirmation of the top {len(top)} ({ranked}) "
            "runs after the search, and this study has not reached it"
            + (f" (the stored one re-measured {', '.join(f'#{n}' for n in stored[0].top_trials)})" if stored is not None else ""))
