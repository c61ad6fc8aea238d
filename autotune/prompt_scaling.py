"""The prompt slope of a service model: how much longer a batch's prefill takes per padded prompt token.

A capacity check times a few workload batches at each batch size (replay.service_batches), their
prompts of the workload's spread. Drawing a batch's prefill from its size's samples whatever its
prompts (capacity.ServiceModel without a slope) gives a batch of short prompts the time of a long
one as often as not: on the H200 of 2026-12-07 (BENCHMARKS §23) the first token of a batch of 16
took 0.3-1.0 s by its longest prompt, and the simulated p95 latencies came out 11-45% above the
replayed ones. A prefill is close to linear in the tokens it runs, rows × longest prompt (a batch
is left-padded to its longest prompt, and a compiled server pads the rows to its bucket), so:

    prefill = c(size) + slope × rows × longest prompt + noise

with one intercept per size (what does not grow with the prompt: launches, the first decode step,
sampling) and one slope for all, fitted by least squares within sizes (each size's batches about
their own means: the sizes' intercepts never leak into the slope). The samples are then
normalised to a reference prompt (their mean longest prompt), keeping each sample's noise, and the
simulation moves a batch's draw by slope × rows × (its longest prompt − reference). A slope that
comes out ≤ 0 (every batch of a size had one prompt length, as under the fixed shape, or noise
larger than the effect), or one that would take a sample to ≤ 0 s at the shortest measured prompt,
is taken as 0: the prompt-blind model, exactly as before.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autotune.capacity import ServiceModel


@dataclass(frozen=True)
class PromptFit:
    """What the fit found (replay.json keeps it)."""

    slope_s_per_token: float  # seconds per padded prompt token (rows × longest prompt); 0: prompt-blind
    reference_prompt_tokens: float  # the longest prompt the samples were normalised to
    batches: int  # fitted over
    median_error: float  # |fit − sample| / sample over the batches, the sizes' intercepts included


def fit_slope(batches: Mapping[int, Sequence[tuple[float, float]]]) -> float:
    """{rows: [(padded prompt tokens, prefill seconds)] of that size's batches} → the least-squares
    slope within sizes (0 when it is not positive or nothing varies within a size)."""
    covariance = variance = 0.0
    for samples in batches.values():
        if len(samples) < 2:
            continue
        mean_x = statistics.fmean(x for x, _ in samples)
        mean_y = statistics.fmean(y for _, y in samples)
        covariance += sum((x - mean_x) * (y - mean_y) for x, y in samples)
        variance += sum((x - mean_x) ** 2 for x, _ in samples)
    return max(covariance / variance, 0.0) if variance > 0 else 0.0


def prompted_service_model(points: Mapping[int, tuple[Sequence[float], Sequence[float] | None, Sequence[int]]], *,
                           rounds_up: bool) -> tuple[ServiceModel, PromptFit]:
    """{batch size k: (one prefill sample per timed batch, tpot samples or None, each batch's longest
    prompt in tokens)} → the service model with its prompt slope, and the fit's figures.
    rounds_up: a compiled server (passed on to the model). Each measured size k ran as k rows: a
    measured size is its own bucket, so the padded prompt tokens of its batches are k × longest."""
    for k, (prefill, _, prompts) in points.items():
        if len(prefill) != len(prompts) or not prefill:
            raise ValueError(f"batch size {k}: {len(prefill)} prefill samples for {len(prompts)} batches; give one per batch")
    slope = fit_slope({k: [(k * p, y) for y, p in zip(prefill, prompts)] for k, (prefill, _, prompts) in points.items()})
    reference = statistics.fmean(p for _, _, prompts in points.values() for p in prompts)
    normalised = {k: ([y - slope * k * (p - reference) for y, p in zip(prefill, prompts)], tpot)
                  for k, (prefill, tpot, prompts) in points.items()}
    # Every sample moved down to the shortest measured prompt must stay a positive time: a slope that
    # takes a sample below 0 there is too steep for the short prompts the simulation will meet.
    shortest = min(p for _, _, prompts in points.values() for p in prompts)
    if any(y - slope * k * (p - shortest) <= 0 for k, (prefill, _, prompts) in points.items()
           for y, p in zip(prefill, prompts)):
        slope, normalised = 0.0, {k: (list(prefill), tpot) for k, (prefill, tpot, _) in points.items()}
    service = ServiceModel.from_samples(normalised, rounds_up=rounds_up, prompt_slope_s=slope, reference_prompt_tokens=reference)
    errors = []
    for k, (prefill, _, prompts) in points.items():
        intercept = statistics.fmean(normalised[k][0])
        errors += [abs(intercept + slope * k * (p - reference) - y) / y for y, p in zip(prefill, prompts)]
    return service, PromptFit(slope, reference, len(errors), statistics.median(errors))


def prompted_service(samples: Mapping[int, tuple[Sequence[float], Sequence[float] | None]],
                     batches: Mapping[int, Sequence[tuple[int, int]]], *, rounds_up: bool) -> tuple[ServiceModel, PromptFit | None]:
    """A capacity check's service model: {k: (its measurement's ttft samples, one per timed request
    in batch order, and its tpot samples)} and {k: (requests, longest prompt) of each batch timed,
    in order} → the model with its prompt slope, or prompt-blind (fit None) when the samples do not
    line up one batch after another (a measurement that orders them otherwise)."""
    points = {}
    for k, (ttft, tpot) in samples.items():
        starts = [0]
        for requests, _ in batches[k]:
            starts.append(starts[-1] + requests)
        if starts[-1] != len(ttft) or any(len(set(ttft[a:b])) != 1 for a, b in zip(starts, starts[1:])):
            return ServiceModel.from_samples(samples, rounds_up=rounds_up), None
        points[k] = ([ttft[a] for a in starts[:-1]], tpot, [prompt for _, prompt in batches[k]])
    return prompted_service_model(points, rounds_up=rounds_up)
