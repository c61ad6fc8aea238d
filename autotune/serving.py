"""How many requests/s the best config holds: its capacity under the study's SLO, as best.yaml
records it. The simulation is autotune/capacity.py's (Poisson arrivals, static batches of up to
batch_size); this module picks its inputs from the study's records and keeps the answer.

Inputs: the best config's own measurement (the confirmation's pooled one when there is one) and
every other measured trial of the same settings at a smaller batch size, so that the queue's
partial batches take the measured times of smaller batches (interpolated between them) rather
than the full batch's. A compiled config's server pads a batch to a bucket (capacity.bucket_sizes,
pads_to_buckets): only trials at its bucket sizes feed it, and a partial batch takes the next
measured size up (ServiceModel rounds_up), never an interpolation. Output lengths: under a
workload, the output lengths of the requests the measurement timed (each request of the simulation draws one of them); under the fixed shape, the
space's new_tokens. Under a workload a simulated request draws a timed request's prompt with its
output, and a batch's prefill moves with its longest prompt by the slope fitted to the timed
batches (prompt_scaling.py). Every --slo limit is simulated at its own percentile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from autotune.slo import SloLimit
    from autotune.spec import Candidate, TrialRecord

# Trials whose timings are real service times of a config that runs (over budget is not one).
_SERVICE_STATES = ("measured", "slo_violated", "low_quality")


class ServingCapacity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_rps: float = Field(description="the largest Poisson arrival rate (requests/s) whose simulated p95s meet the SLO")
    concurrency: float = Field(description="mean requests in the server at that rate (waiting or running; Little's law)")
    saturation_rps: float = Field(description="the most it can take at all (full batches back to back), whatever the SLO")
    limited_by: str = Field(description="the limit a slightly higher rate misses (e.g. ttft_p95) or saturation")
    reason: str
    slo: str = Field(default="", description="the limits simulated ('' without --slo: capacity is saturation)")
    # Files written before every percentile was simulated listed their non-p95 limits here.
    not_simulated: list[str] = Field(default=[], description="--slo limits not simulated (always empty since every percentile is)")
    batch_sizes: list[int] = Field(description="the measured batch sizes the simulation interpolates between (a compiled "
                                   "config's: its bucket sizes, a partial batch taking the next one up)")
    simulated_p95_s: dict[str, float] = Field(default={}, description="ttft/tpot/e2e p95 simulated at rate_rps")
    output_tokens: list[int] = Field(default=[], description="the output lengths requests drew from (one entry: every request's)")
    prompt_slope_s_per_token: float = Field(default=0.0, description="seconds a batch's prefill grows per padded prompt token "
                                            "(rows × longest prompt), fitted to the timed batches (prompt_scaling.py); 0: "
                                            "prompt-blind (the fixed shape)")
    meets_again_rps: list[float] = Field(default=[], description="[lowest, highest] scanned rate above the capacity that meets "
                                         "the SLO again (small batches queue worse than full ones); empty when none does")

    def summary(self) -> str:
        within = f" within {self.slo}" if self.slo else ""
        return (f"capacity: {_rate(self.rate_rps)} requests/s{within} (about {self.concurrency:,.1f} concurrent; "
                f"saturation {_rate(self.saturation_rps)} requests/s; limited by {self.limited_by})"
                + (f"; meets the SLO again at {_rate(self.meets_again_rps[0])}-{_rate(self.meets_again_rps[1])} requests/s, "
                   f"not at the lighter loads between" if self.meets_again_rps else ""))


def pads_to_buckets(candidate: Candidate) -> bool:
    """Whether the candidate's server pads each batch to a bucket size (capacity.bucket_sizes): a
    compiled candidate's decode steps replay CUDA graphs recorded per batch shape, and every new
    batch size compiles anew, so its server runs a few sizes, not every size up to batch_size."""
    return candidate.compile


def _rate(rps: float) -> str:
    return f"{rps:,.2f}" if rps >= 10 else f"{rps:.3g}"


def serving_capacity(recs: list[TrialRecord], best: TrialRecord, limits: list[SloLimit]) -> ServingCapacity | None:
    """The capacity of `best` under `limits` (None when it has no measurement to simulate)."""
    from autotune.capacity import bucket_sizes, capacity
    from autotune.knobs import boundary_shape

    def same_but_batch(c) -> bool:  # the grouping the batch-size bisection uses (knobs.boundary_shape)
        return c.load_key == best.candidate.load_key and boundary_shape(c) == boundary_shape(best.candidate)

    if best.outcome.measurement is None:
        return None
    points = {r.candidate.batch_size: r.outcome.measurement for r in recs
              if r.state in _SERVICE_STATES and r.outcome.measurement is not None
              and r.candidate.batch_size < best.candidate.batch_size and same_but_batch(r.candidate)}
    padded = pads_to_buckets(best.candidate)
    if padded:  # its server runs the bucket sizes only
        buckets = set(bucket_sizes(best.candidate.batch_size))
        points = {k: m for k, m in points.items() if k in buckets}
    points[best.candidate.batch_size] = best.outcome.measurement
    measurement = best.outcome.measurement
    decodes = measurement.tpot_s is not None
    simulated_limits = [lim for lim in limits if decodes or lim.latency != "tpot"]  # a reranker has no TPOT
    service = _service_model(points, padded)
    prompts = measurement.request_prompt_tokens
    outputs = (measurement.request_output_tokens or [best.candidate.new_tokens]) if decodes else [1] * len(prompts or [1])
    if prompts is None or len(prompts) != len(outputs):
        prompts = None
    result = capacity(service, simulated_limits, output_tokens=outputs, prompt_tokens=prompts)
    sim = result.simulated
    simulated = {} if sim is None else {"ttft": sim.ttft_s.p95, "e2e": sim.e2e_s.p95,
                                        **({"tpot": sim.tpot_s.p95} if sim.tpot_s is not None else {})}
    return ServingCapacity(
        rate_rps=result.rate_rps, concurrency=result.concurrency, saturation_rps=result.saturation_rps,
        limited_by=result.limited_by, reason=result.reason,
        slo=",".join(lim.label() for lim in simulated_limits),
        batch_sizes=sorted(points), simulated_p95_s=simulated, output_tokens=sorted(outputs),
        prompt_slope_s_per_token=service.prompt_slope_s,
        meets_again_rps=list(result.meets_again_rps or ()))


def _service_model(points: dict, padded: bool):
    """The capacity's service model: with its prompt slope (prompt_scaling.py) where every measured
    size knows the prompt each timed request's batch was padded to (a workload's measurement),
    prompt-blind otherwise."""
    from autotune.capacity import ServiceModel
    from autotune.prompt_scaling import prompted_service

    if all(m.request_padded_prompt_tokens is not None and len(m.request_padded_prompt_tokens) == len(m.ttft_s.samples)
           for m in points.values()):
        # A workload's timed batches are full (traffic.build_batches): batch i is requests i·k … i·k + k − 1,
        # fitted one sample per batch as the capacity check fits them (prompted_service checks it).
        samples = {k: (m.ttft_s.samples, None if m.tpot_s is None else m.tpot_s.samples) for k, m in points.items()}
        batches = {k: [(k, p) for p in m.request_padded_prompt_tokens[::k]] for k, m in points.items()}
        return prompted_service(samples, batches, rounds_up=padded)[0]
    return ServiceModel.from_measurements(points, rounds_up=padded)
