"""autotune/capacity.py on inputs whose answers are known: M/D/1 waiting times, the saturation rate
of full batches, padding waste, SLO boundaries, interpolation between measured batch sizes."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from autotune import capacity as cap
from autotune.slo import parse_slo
from autotune.capacity import Capacity, ServiceModel, arrival_times, capacity, expected_longest, saturation_rps, simulate
from autotune.spec import Measurement, Stat


def _fixed(service_s: float, batch_size: int = 1) -> ServiceModel:
    """A deterministic server: every batch of 1..batch_size takes service_s (one output token)."""
    return ServiceModel.from_samples({1: ([service_s], None), batch_size: ([service_s], None)})


# A realistic-looking decoder with spread: batches of 8 are slower per batch, faster per request.
SPREAD = ServiceModel.from_samples({
    1: ([0.050, 0.055, 0.070], [0.010, 0.011, 0.013]),
    8: ([0.200, 0.220, 0.260], [0.015, 0.016, 0.020]),
})


# ------------------------------------------------------------------------------ queueing theory


@pytest.mark.parametrize(("rho", "tolerance"), [(0.5, 0.03), (0.8, 0.05)])
def test_batch_of_one_with_fixed_service_is_md1(rho, tolerance):
    """Poisson arrivals, one server, deterministic service S: the mean wait is ρS / (2(1 − ρ)).
    The tolerance is about 2.5 standard errors of the mean wait over 180,000 requests (measured
    over seeds: 0.4% at ρ=0.5, 2% at ρ=0.8); M/M/1's answer would be twice as large."""
    service_s = 2.0
    result = simulate(_fixed(service_s), rho / service_s, output_tokens=1, n_requests=200_000, seed=1)
    expected_wait_s = rho * service_s / (2 * (1 - rho))
    assert result.wait_s.mean == pytest.approx(expected_wait_s, rel=tolerance)
    assert result.utilisation == pytest.approx(rho, rel=0.02)
    assert result.mean_batch_size == 1.0
    assert result.e2e_s.mean == pytest.approx(result.wait_s.mean + service_s)  # service of a batch of one is all of e2e
    assert result.concurrency == pytest.approx(result.rate_rps * result.e2e_s.mean)  # Little's law


def test_full_batches_saturate_at_batch_size_over_service_time():
    service_s, batch = 2.0, 4
    service = _fixed(service_s, batch)
    assert saturation_rps(service, 1) == pytest.approx(batch / service_s)

    over = simulate(service, 1.5 * batch / service_s, output_tokens=1, n_requests=20_000)
    assert over.throughput_rps == pytest.approx(batch / service_s, rel=0.02)  # the server cannot go faster
    assert over.utilisation > 0.99
    assert over.mean_batch_size > 3.95
    under = simulate(service, 0.7 * batch / service_s, output_tokens=1, n_requests=20_000)
    assert under.throughput_rps == pytest.approx(under.rate_rps, rel=0.03)  # it keeps up
    assert under.e2e_s.p99 < 10 * service_s  # and the queue stays short

    none = capacity(service, [], output_tokens=1)
    assert (none.rate_rps, none.limited_by, none.concurrency) == (pytest.approx(batch / service_s), "saturation", batch)


def test_padding_waste_the_batch_runs_to_its_longest_request():
    """Outputs of 1 or 9 tokens, batches of 2: the batch runs to E[max] = 9·(1 − ¼) + 1·¼ = 7 tokens,
    1 s + 6 × 0.25 s = 2.5 s, so saturation is 2 / 2.5 = 0.8 req/s (fixed 5-token outputs, the same
    mean length, would give 2 / 2 = 1.0)."""
    service = ServiceModel.from_samples({2: ([1.0], [0.25])})
    assert expected_longest([1, 9], 2) == pytest.approx(7.0)
    assert saturation_rps(service, [1, 9]) == pytest.approx(0.8)
    assert saturation_rps(service, 5) == pytest.approx(1.0)
    over = simulate(service, 1.6, output_tokens=[1, 9], n_requests=20_000)
    assert over.throughput_rps == pytest.approx(0.8, rel=0.03)
    assert over.e2e_s.p50 > over.ttft_s.p50  # e2e is the batch's end, whichever request is shorter


def test_the_spread_of_the_samples_enters_the_latency():
    """At a rate where requests almost never wait, the e2e p95 is the slow sample, not the median."""
    service = ServiceModel.from_samples({1: ([1.0, 1.0, 1.0, 1.0, 3.0], None)})
    result = simulate(service, 0.001, output_tokens=1, n_requests=5_000)
    assert result.e2e_s.p50 == pytest.approx(1.0)
    assert result.e2e_s.p95 == pytest.approx(3.0)
    assert result.e2e_s.mean == pytest.approx(1.4, rel=0.05)  # each sample drawn a fifth of the time


# ------------------------------------------------------------------------------ capacity


def test_capacity_under_an_e2e_limit_is_the_boundary():
    slo = parse_slo("e2e_p95=3s")
    found = capacity(SPREAD, slo, output_tokens=128, seed=3)
    assert found.limited_by == "e2e_p95"
    assert 0 < found.rate_rps < found.saturation_rps
    at = simulate(SPREAD, found.rate_rps, output_tokens=128, seed=3)
    assert at == found.simulated
    assert at.e2e_s.p95 <= 3.0
    assert simulate(SPREAD, 1.1 * found.rate_rps, output_tokens=128, seed=3).e2e_s.p95 > 3.0
    assert found.concurrency == pytest.approx(found.rate_rps * at.e2e_s.mean)
    assert "e2e_p95" in found.reason


def test_a_limit_missed_even_at_a_tiny_rate_gives_zero_with_the_reason():
    # A request alone takes 0.05..0.07 s to its first token and 0.05 + 127 × 0.010.. s to its last.
    for slo, limit in [(parse_slo("ttft_p95=30ms"), "ttft_p95"), (parse_slo("e2e_p95=1s"), "e2e_p95"),
                       (parse_slo("tpot_p95=5ms,e2e_p95=100s"), "tpot_p95")]:
        found = capacity(SPREAD, slo, output_tokens=128)
        assert (found.rate_rps, found.concurrency, found.limited_by) == (0.0, 0.0, limit)
        assert found.reason.startswith("even ") and limit in found.reason and "\n" not in found.reason
        assert found.saturation_rps > 0 and found.meets_again_rps is None


def test_tpot_depends_only_on_the_tpot_samples():
    """One request per batch: TPOT is the tpot sample whatever the prefill or the queue, so a
    TPOT limit is met up to saturation or not at all."""
    fast = ServiceModel.from_samples({1: ([0.1], [0.010, 0.012])})
    slow_prefill = ServiceModel.from_samples({1: ([0.9], [0.010, 0.012])})
    assert (simulate(fast, 0.5, output_tokens=16, n_requests=2_000).tpot_s
            == simulate(slow_prefill, 0.5, output_tokens=16, n_requests=2_000).tpot_s)

    met = capacity(slow_prefill, parse_slo("tpot_p95=12ms"), output_tokens=16, n_requests=2_000)
    assert met.limited_by == "saturation"
    assert met.rate_rps == pytest.approx(met.saturation_rps, rel=0.011)
    missed = capacity(fast, parse_slo("tpot_p95=11ms"), output_tokens=16, n_requests=2_000)
    assert (missed.rate_rps, missed.limited_by) == (0.0, "tpot_p95")


def test_tpot_of_larger_batches_limits_the_rate_that_fills_them():
    service = ServiceModel.from_samples({1: ([0.05], [0.010]), 4: ([0.10], [0.030])})
    found = capacity(service, parse_slo("tpot_p95=20ms"), output_tokens=16)
    assert found.limited_by == "tpot_p95"
    assert 0 < found.rate_rps < 0.5 * found.saturation_rps
    assert found.simulated.tpot_s.p95 <= 0.02


# Small batches slower per request than full ones (a batch of 32 runs 64 tokens faster than a batch
# of 1: per-step overhead, as the H100 replay of 2026-12-06 measured): a light load queues behind
# slow single requests and misses a TTFT limit that a heavier load, served in full batches, meets.
OVERHEAD_BOUND = ServiceModel.from_samples({1: ([0.1], [0.08]), 32: ([0.8], [0.03])})


def test_capacity_is_the_first_miss_from_below_when_latency_is_not_monotone_in_rate():
    slo = parse_slo("ttft_p95=4.5s")
    found = capacity(OVERHEAD_BOUND, slo, output_tokens=64)
    assert found.limited_by == "ttft_p95" and 0 < found.rate_rps < 0.2
    assert simulate(OVERHEAD_BOUND, found.rate_rps, output_tokens=64).ttft_s.p95 <= 4.5
    assert simulate(OVERHEAD_BOUND, 1.02 * found.rate_rps, output_tokens=64).ttft_s.p95 > 4.5
    # Heavier loads meet the limit again: reported, and true in the simulation, but not the capacity.
    low, high = found.meets_again_rps
    assert 1.0 < low < high < found.saturation_rps
    assert all(simulate(OVERHEAD_BOUND, rate, output_tokens=64).ttft_s.p95 <= 4.5 for rate in (low, high))
    assert simulate(OVERHEAD_BOUND, 0.5, output_tokens=64).ttft_s.p95 > 4.5  # the band between misses
    assert "meets every limit again" in found.reason and "lighter load is the limit" in found.reason
    # Under a limit every rate meets up to saturation there is nothing to report.
    monotone = capacity(OVERHEAD_BOUND, parse_slo("ttft_p95=6s"), output_tokens=64)
    assert monotone.meets_again_rps is None and monotone.rate_rps > 10 and "again" not in monotone.reason


def test_no_slo_means_saturation():
    found = capacity(SPREAD, [], output_tokens=64)
    assert found == Capacity(rate_rps=found.saturation_rps, concurrency=8.0, saturation_rps=saturation_rps(SPREAD, 64),
                             limited_by="saturation", reason=found.reason, simulated=None)


# ------------------------------------------------------------------------------ service model


def test_interpolation_between_measured_batch_sizes():
    service = ServiceModel.from_samples({2: ([1.0], [0.1]), 6: ([3.0], [0.5])})
    assert service.batch_size == 6
    assert service.prefill_s(4, 0.5) == pytest.approx(2.0)
    assert service.tpot_s(5, 0.5) == pytest.approx(0.4)
    assert service.prefill_s(1, 0.5) == 1.0  # below the smallest measured size: the smallest's (conservative)
    assert service.batch_s(4, 11, 0.5) == pytest.approx(2.0 + 10 * 0.3)
    assert service.mean_batch_s(3, 11.0) == pytest.approx(1.5 + 10 * 0.2)

    # With spread, the u-quantiles of the two sizes are interpolated.
    spread = ServiceModel.from_samples({1: ([3.0, 1.0, 2.0], [0.1]), 3: ([3.0, 4.0, 5.0], [0.1])})
    assert [spread.prefill_s(2, u) for u in (0.1, 0.5, 0.9)] == pytest.approx([2.0, 3.0, 4.0])


def test_bucket_sizes_are_powers_of_two_and_the_batch_and_a_batch_pads_to_the_next():
    assert cap.bucket_sizes(1) == [1]
    assert cap.bucket_sizes(8) == [1, 2, 4, 8]
    assert cap.bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert [cap.bucket_of(k, 12) for k in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
    with pytest.raises(ValueError, match="outside 1..12"):
        cap.bucket_of(13, 12)


def test_a_compiled_server_takes_the_next_measured_size_up_not_an_interpolation():
    samples = {2: ([1.0], [0.1]), 6: ([3.0], [0.5])}
    padded = ServiceModel.from_samples(samples, rounds_up=True)
    assert [padded.prefill_s(k, 0.5) for k in (1, 2, 3, 5, 6)] == [1.0, 1.0, 3.0, 3.0, 3.0]
    assert padded.tpot_s(4, 0.5) == 0.5 and padded.mean_batch_s(3, 11.0) == pytest.approx(3.0 + 10 * 0.5)
    # The same light load queues longer behind padded batches than behind interpolated ones.
    light = dict(output_tokens=11, n_requests=4000, seed=3)
    eager = ServiceModel.from_samples(samples)
    assert simulate(padded, 0.3, **light).e2e_s.p95 > simulate(eager, 0.3, **light).e2e_s.p95


def test_the_simulation_draws_what_the_public_methods_say():
    sloped = ServiceModel(SPREAD.points, prompt_slope_s=1e-5, reference_prompt_tokens=500.0)
    for service in (SPREAD, sloped):
        for k in range(1, 9):
            for u in (0.0, 0.2, 0.5, 0.7, 0.999):
                for prompt in (None, 100, 500, 2000):
                    assert service._draw(k, u, prompt) == pytest.approx((service.prefill_s(k, u, prompt), service.tpot_s(k, u)))


def test_from_measurements_reads_ttft_and_tpot_samples():
    def measured(ttft, tpot):
        one = Stat.of([1.0, 1.0, 1.0])
        return Measurement(output_tokens_per_s=one, prefill_tokens_per_s=one, decode_tokens_per_s=one, requests_per_s=one,
                           ttft_s=Stat.of(ttft), tpot_s=Stat.of(tpot), request_latency_s=one, peak_memory_gib=1.0,
                           warmup_s=1.0, measure_s=1.0)

    service = ServiceModel.from_measurements({1: measured([0.2, 0.1, 0.3], [0.01, 0.02, 0.03]), 4: measured([0.4] * 3, [0.05] * 3)})
    assert service.batch_size == 4
    assert service.prefill_s(1, 0.0) == 0.1 and service.tpot_s(1, 0.99) == 0.03
    assert service.prefill_s(4, 0.5) == 0.4


def test_pure_module_imports_nothing_heavy():
    tree = ast.parse(Path(cap.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= {"__future__", "bisect", "math", "random", "collections", "dataclasses", "typing", "autotune"}
    assert "open(" not in Path(cap.__file__).read_text()


# ------------------------------------------------------------------------------ determinism, inputs


def test_the_same_seed_gives_the_same_answer():
    a = simulate(SPREAD, 2.0, output_tokens=[32, 128], n_requests=3_000, seed=7)
    assert a == simulate(SPREAD, 2.0, output_tokens=[32, 128], n_requests=3_000, seed=7)
    assert a != simulate(SPREAD, 2.0, output_tokens=[32, 128], n_requests=3_000, seed=8)
    slo = parse_slo("ttft_p95=500ms,e2e_p95=3s")
    assert capacity(SPREAD, slo, output_tokens=128, n_requests=3_000) == capacity(SPREAD, slo, output_tokens=128, n_requests=3_000)
    assert a.requests == 3_000 - 300  # the first 10% are warm-up


@pytest.mark.parametrize(("call", "message"), [
    (lambda: simulate(SPREAD, 0.0, output_tokens=8), "rate_rps must be"),
    (lambda: simulate(SPREAD, -1.0, output_tokens=8), "rate_rps must be"),
    (lambda: simulate(SPREAD, math.nan, output_tokens=8), "rate_rps must be"),
    (lambda: simulate(SPREAD, math.inf, output_tokens=8), "rate_rps must be"),
    (lambda: simulate(SPREAD, 1.0, output_tokens=0), "output_tokens must be"),
    (lambda: simulate(SPREAD, 1.0, output_tokens=[]), "output_tokens: an empty list"),
    (lambda: simulate(SPREAD, 1.0, output_tokens=8, n_requests=50), "at least 100"),
    (lambda: simulate(SPREAD, 1.0, output_tokens=8, warmup_fraction=1.0), "warmup_fraction"),
    (lambda: simulate(_fixed(1.0), 1.0, output_tokens=8), "decodes nothing"),
    (lambda: ServiceModel.from_samples({1: ([], [0.1])}), "prefill_s: no samples"),
    (lambda: ServiceModel.from_samples({1: ([0.1], [])}), "tpot_s: no samples"),
    (lambda: ServiceModel.from_samples({1: ([0.1, -0.2], [0.1])}), "finite seconds > 0"),
    (lambda: ServiceModel.from_samples({}), "no measured points"),
    (lambda: ServiceModel.from_samples({0: ([0.1], [0.1])}), "integers ≥ 1"),
    (lambda: ServiceModel.from_samples({1: ([0.1], [0.1]), 2: ([0.1], None)}), "decodes or it does not"),
    (lambda: SPREAD.prefill_s(9, 0.5), "outside 1..8"),
    (lambda: SPREAD.tpot_s(0, 0.5), "outside 1..8"),
    (lambda: SPREAD.prefill_s(1, 1.0), "u must be"),
    (lambda: parse_slo("e2e_p95=0ms"), "must be above zero"),
    (lambda: capacity(_fixed(1.0), parse_slo("tpot_p95=100ms"), output_tokens=1), "tpot limit needs"),
    (lambda: capacity(SPREAD, [], output_tokens=8, rel_tol=0.0), "rel_tol"),
])
def test_bad_inputs_raise_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_every_percentile_of_the_slo_is_simulated():
    """A p99 limit is judged on the simulated p99, a p50 on the p50: the tighter percentile gives
    the lower capacity, and each capacity's simulation meets its own limit."""
    p50 = capacity(SPREAD, parse_slo("e2e_p50=3s"), output_tokens=128, n_requests=3_000)
    p99 = capacity(SPREAD, parse_slo("e2e_p99=3s"), output_tokens=128, n_requests=3_000)
    assert 0 < p99.rate_rps < p50.rate_rps
    assert p50.simulated.e2e_s.p50 <= 3.0 and p99.simulated.e2e_s.p99 <= 3.0
    assert (p50.limited_by, p99.limited_by) == ("e2e_p50", "e2e_p99")


def test_arrival_times_are_the_simulations_poisson_arrivals():
    times = arrival_times(5_000, 4.0, seed=2)
    assert times == sorted(times) and len(times) == 5_000
    assert times[-1] / len(times) == pytest.approx(0.25, rel=0.05)  # mean gap 1 / rate
    assert arrival_times(10, 2.0, seed=2) == [t * 2 for t in arrival_times(10, 4.0, seed=2)]
