"""autotune/prompt_scaling.py and the prompt-aware service model (capacity.py) on inputs whose answers are known."""

from __future__ import annotations

import pytest

from autotune.capacity import ServiceModel, capacity, saturation_rps, simulate
from autotune.prompt_scaling import fit_slope, prompted_service, prompted_service_model
from autotune.slo import parse_slo

SLOPE_S = 20e-6  # seconds per padded prompt token


def _exact(rows: int, intercept_s: float, prompts: list[int]) -> list[float]:
    return [intercept_s + SLOPE_S * rows * p for p in prompts]


def test_the_slope_is_fitted_within_sizes_so_the_sizes_intercepts_do_not_leak_into_it():
    # Larger batches have a much larger fixed cost and longer prompts: a fit across sizes would
    # take that for prompt time (a slope several times too steep); within sizes it is exact.
    prompts = {1: [100, 300, 500], 8: [1500, 1700, 1900]}
    intercepts = {1: 0.05, 8: 0.60}
    batches = {k: [(k * p, y) for p, y in zip(prompts[k], _exact(k, intercepts[k], prompts[k]))] for k in prompts}
    assert fit_slope(batches) == pytest.approx(SLOPE_S)


@pytest.mark.parametrize("batches", [
    {1: [(100, 0.05), (100, 0.06)], 4: [(800, 0.2), (800, 0.3)]},  # one prompt length per size: nothing to fit
    {1: [(100, 0.09), (500, 0.05)]},  # longer prompts faster: noise, not a prefill
    {1: [(100, 0.05)]},  # one batch
])
def test_no_slope_where_the_samples_cannot_show_one(batches):
    assert fit_slope(batches) == 0.0


def test_the_model_moves_a_batchs_prefill_by_its_longest_prompt_and_keeps_the_samples_noise():
    prompts = [200, 1000, 1800]
    noise = [0.004, -0.002, 0.0]
    prefill = [y + e for y, e in zip(_exact(4, 0.1, prompts), noise)]
    service, fit = prompted_service_model({4: (prefill, [0.01, 0.01, 0.01], prompts)}, rounds_up=False)
    assert fit.slope_s_per_token == pytest.approx(service.prompt_slope_s) and fit.reference_prompt_tokens == pytest.approx(1000)
    assert fit.slope_s_per_token == pytest.approx(SLOPE_S, rel=0.1) and fit.batches == 3
    # At the reference prompt the draws are the samples' own spread around the fit; 800 tokens more
    # add slope × 4 rows × 800 to every draw.
    at_reference = [service.prefill_s(4, u, 1000) for u in (0.0, 0.5, 0.9)]
    longer = [service.prefill_s(4, u, 1800) for u in (0.0, 0.5, 0.9)]
    assert max(at_reference) - min(at_reference) > 0.001
    assert [b - a for a, b in zip(at_reference, longer)] == pytest.approx([fit.slope_s_per_token * 4 * 800] * 3)
    # Without a prompt the draw is the normalised sample (the reference prompt's).
    assert service.prefill_s(4, 0.5) == service.prefill_s(4, 0.5, 1000)


def test_a_compiled_servers_batches_scale_by_their_buckets_rows():
    prompts = [100, 900]
    points = {k: (_exact(k, 0.05 * k, prompts), [0.01, 0.01], prompts) for k in (1, 4)}
    service, fit = prompted_service_model(points, rounds_up=True)
    assert fit.slope_s_per_token == pytest.approx(SLOPE_S) and fit.median_error == pytest.approx(0.0, abs=1e-9)
    # a batch of 3 runs as 4 rows: the 4-row bucket's exact time at its prompt
    assert service.prefill_s(3, 0.5, 700) == pytest.approx(0.2 + SLOPE_S * 4 * 700)
    assert service.prefill_s(1, 0.5, 700) == pytest.approx(0.05 + SLOPE_S * 700)


def test_a_batch_below_the_smallest_measured_size_takes_that_sizes_time_at_its_own_prompt():
    """Only batches of 16 measured: a batch of 1 takes a batch of 16's time at its own prompt
    (conservative, as without a slope), whatever prompts the samples were measured at."""
    prompts = [200, 1000, 1800]
    for shift in (0, 5000):
        shifted = [p + shift for p in prompts]
        service, _ = prompted_service_model({16: (_exact(16, 0.3, shifted), [0.01] * 3, shifted)}, rounds_up=False)
        assert service.prefill_s(1, 0.5, 100) == pytest.approx(service.prefill_s(16, 0.5, 100))
        assert service.prefill_s(1, 0.5, 100) == pytest.approx(max(0.3 + SLOPE_S * 16 * 100, 0.0))


def test_between_measured_sizes_the_prompt_term_scales_with_the_batchs_own_rows():
    prompts = [100, 900]
    points = {k: (_exact(k, 0.05 * k, prompts), [0.01, 0.01], prompts) for k in (2, 6)}
    service, _ = prompted_service_model(points, rounds_up=False)
    # a batch of 4: halfway between the intercepts, 4 rows of its prompt
    assert service.prefill_s(4, 0.5, 500) == pytest.approx(0.2 + SLOPE_S * 4 * 500)


def test_a_slope_too_steep_for_the_short_prompts_falls_back_to_the_prompt_blind_model():
    # One long prompt's sample is far below the slope the others show: moved to the shortest
    # measured prompt it would be <= 0 s, so the fit is not used.
    points = {1: ([0.01, 0.5, 1.0, 0.02], [0.01] * 4, [100, 1000, 1900, 1900])}
    service, fit = prompted_service_model(points, rounds_up=False)
    assert fit.slope_s_per_token == 0.0 and service.prompt_slope_s == 0.0
    assert service.points[1].prefill_s == (0.01, 0.02, 0.5, 1.0)
    # Short prompts fast, long ones slow, but the short ones' samples barely above 0: the line through
    # them would give the shortest prompt 0 s, which no batch takes.
    steep = {1: ([0.02, 0.03, 0.80, 0.60], [0.01] * 4, [100, 100, 2000, 2000])}
    service, fit = prompted_service_model(steep, rounds_up=False)
    assert fit.slope_s_per_token == 0.0 and min(service.prefill_s(1, u, 100) for u in (0.0, 0.5, 0.9)) > 0


def test_the_simulation_gives_short_prompts_short_first_tokens():
    """At a rate so light that every batch is one request, the p50 first token is the prefill of
    the median request's prompt: slope × prompt on top of the intercept."""
    prompts = [100, 2100]
    service, _ = prompted_service_model({1: (_exact(1, 0.05, prompts), [0.01, 0.01], prompts)}, rounds_up=False)
    short = simulate(service, 0.01, output_tokens=[2], prompt_tokens=[100], n_requests=200)
    long = simulate(service, 0.01, output_tokens=[2], prompt_tokens=[2000], n_requests=200)
    assert short.ttft_s.p50 == pytest.approx(0.05 + SLOPE_S * 100)
    assert long.ttft_s.p50 == pytest.approx(0.05 + SLOPE_S * 2000)
    # Prompt-blind, both take the samples as they come: the short prompts' figure is too slow.
    blind = ServiceModel.from_samples({1: (_exact(1, 0.05, prompts), [0.01, 0.01])})
    assert simulate(blind, 0.01, output_tokens=[2], prompt_tokens=[100], n_requests=200).ttft_s.p95 > 1.5 * short.ttft_s.p95


def test_a_prompt_blind_model_simulates_exactly_as_without_prompts():
    service = ServiceModel.from_samples({1: ([0.05, 0.07], [0.01, 0.012]), 4: ([0.2, 0.25], [0.015, 0.02])})
    args = dict(output_tokens=[4, 8, 16], n_requests=3000, seed=5)
    assert simulate(service, 6.0, prompt_tokens=[10, 500, 2000], **args) == simulate(service, 6.0, **args)


def test_saturation_and_capacity_count_the_longest_prompt_a_full_batch_meets():
    prompts = [100, 900]
    service, _ = prompted_service_model({2: (_exact(2, 0.1, prompts), [0.01, 0.01], prompts)}, rounds_up=False)
    # A full batch of 2 draws two prompts from {100, 900}: its longest is 900 three times in four.
    expected_prefill_s = 0.1 + SLOPE_S * 2 * (0.25 * 100 + 0.75 * 900)
    assert saturation_rps(service, [1, 1], [100, 900]) == pytest.approx(2 / expected_prefill_s)
    short_only = capacity(service, parse_slo("ttft_p95=0.3s"), output_tokens=[1], prompt_tokens=[100], n_requests=2000)
    mixed = capacity(service, parse_slo("ttft_p95=0.3s"), output_tokens=[1, 1], prompt_tokens=[100, 900], n_requests=2000)
    assert short_only.rate_rps > mixed.rate_rps


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(output_tokens=[4, 8], prompt_tokens=[10]), "one prompt length per output length"),
    (dict(output_tokens=[4], prompt_tokens=[0]), "prompt_tokens must be integers ≥ 1"),
    (dict(output_tokens=[4, 8], in_order=True), "one entry per request"),
])
def test_bad_prompt_inputs_say_what_is_wrong(kwargs, message):
    service = ServiceModel.from_samples({1: ([0.05], [0.01])})
    with pytest.raises(ValueError, match=message):
        simulate(service, 1.0, n_requests=200, **kwargs)


def test_samples_that_do_not_line_up_by_batch_give_the_prompt_blind_model():
    samples = {2: ([0.1, 0.1, 0.3, 0.3], [0.01] * 4)}
    service, fit = prompted_service(samples, {2: [(2, 100), (2, 900)]}, rounds_up=False)
    assert fit is not None and service.prompt_slope_s > 0
    # the two requests of the first batch disagree: not one sample per batch
    service, fit = prompted_service({2: ([0.1, 0.2, 0.3, 0.3], [0.01] * 4)}, {2: [(2, 100), (2, 900)]}, rounds_up=False)
    assert fit is None and service.prompt_slope_s == 0.0 and service.points[2].prefill_s == (0.1, 0.2, 0.3, 0.3)
