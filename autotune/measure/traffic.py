"""Throughput and latency of generate() under a workload (issue 20): mixed-length requests, batched
and padded as transformers pads them for generation.

The fixed default workload never comes here: it is measured by `throughput.measure_generation`,
unchanged, so studies without a workload keep today's figures. A non-default one is measured as:

1. The worst-case check, as for the fixed shape: one untimed generate() of batch_size prompts of
   max_length - new_tokens tokens generating new_tokens (two with compile), inside the memory
   tracker, so the peak memory covers the candidate's claimed worst case.
2. `repeats` timed batches (the space's repeats, at least 3 in a study), each of batch_size
   requests drawn from the workload (`WorkloadSampler.draw`, one seeded draw of repeats x
   batch_size requests, split in order; the same seed for every candidate, so candidates of one
   batch size see the same requests: common random numbers. A study's trials draw with seed 0,
   its confirmation's round k with seed k, so the rounds add other requests).

Building a batch (`build_batches`):

- A request whose prompt + output tokens exceed the candidate's max_length is *over the limit*:
  counted (`Measurement.workload_truncated`), never dropped, and truncated to fit: its prompt is
  cut first, keeping at least one prompt token, then its output (prompt = max(1, max_length -
  output), output = max_length - prompt). The share of the workload's traffic a config of that
  max_length would reject or truncate, `Measurement.workload_over_limit_share`, is counted over
  the whole workload, not the few timed requests (`WorkloadSampler.over_limit`: exact over a
  file's requests, 100,000 seeded draws of a distribution).
- The batch's prompts are left-padded to its longest prompt P (pad ids with attention mask 0, as a
  tokenizer with padding_side="left" pads them for generate()), and the batch generates its
  longest output G, exactly (min_new_tokens = max_new_tokens = G, so EOS cannot end it early).
  Every row is P + G tokens long: the padding of the shorter prompts and the tokens generated for
  a request after its own output is done are *padding waste*, `Measurement.padding_share` =
  1 - (the requests' own prompt + output tokens) / (batch_size x (P + G)), over the timed batches.
  The longest prompt and the longest output may come from different requests, so P + G can exceed
  max_length: the KV cache then holds more than the worst-case shape, and the peak memory (over
  the whole window) includes it.

Timing a batch: one generate(new=G) of it, as a server runs it (`timed_batch_generate`): its whole
time T, and t1, the time its first generated token reaches the host (a streamer's clock; the
replay, autotune/replay.py, times its batches with the same function). Per request i of that
batch, with own output o_i:

- ttft_s = t1: every request's first token exists when the batch's prefill and first step end.
- request_latency_s = T: generate() returns the batch when its longest request is done, so a
  request that finished early is returned at the end too (static batching's cost, in the figure).
- tpot_s = (T - t1) / (G - 1): the batch's pace, one token per request per decode step; the time
  a streaming client waits between two tokens. A request of one output token has no tpot sample
  (nothing after the first), so tpot_s holds one sample per request with o_i >= 2.

So ttft_s and request_latency_s hold repeats x batch_size samples (one per request), and their
percentiles are per-request percentiles. The throughput figures are one sample per batch, counting
only the requests' own (useful) tokens, never padding: output_tokens_per_s = sum(o_i) / T,
prefill_tokens_per_s = sum(p_i) / t1, decode_tokens_per_s = sum(o_i - 1) / (T - t1) (batches with
G >= 2), requests_per_s = batch_size / T.

Warm-up: after the worst case, the first batch is run once untimed (the padded batches take
another code path than the unpadded worst case: a 4-D attention mask). Compiled candidates (a
static cache) compile each new shape: each batch is then run once more untimed before it is timed,
except where the caller fixed the cache length first (`rewarm_each_batch=False`, the capacity
check, without chunked prefill): then every batch's decode shape is the one the warm-up compiled,
its prefill runs eagerly, and each batch is timed on its first run, as a server meets it.
(Chunked prefill compiles the prefill chunks too, a shape per last-chunk length: those candidates
are re-run untimed.) Text requests only: vision inputs and rerankers take the fixed shape (the study
refuses a workload for them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from autotune.loading import generate_kwargs
from autotune.measure.compile_stats import compile_stats, snapshot
from autotune.measure.memory import MemoryTracker
from autotune.measure.throughput import _generate_runner, _synchronize, _window_fields
from autotune.spec import Candidate, Measurement, Stat
from autotune.workload import Request, WorkloadSampler

DECODE_FLOOR_S = 1e-6  # as measure_generation: a decode time is never reported as zero or negative


def workload_sampler(workload: dict | None, new_tokens: int, tokenizer, model_config) -> WorkloadSampler:
    """The WorkloadSampler of a normalised workload section (None: the fixed shape); a file's
    prompts counted with the model's tokenizer as the quality run builds them (the chat template
    over the prompt, images as their visual tokens)."""
    from autotune.workload import parse_workload

    parsed = parse_workload(workload, "/", "workload")  # a normalised section's file path is absolute
    count = count_answer = None
    if parsed.kind == "file":
        from autotune.measure.prompting import Prompter

        if tokenizer is None:
            raise ValueError("a file workload's prompts are counted with the model's tokenizer, and this model has none")
        prompter = Prompter(tokenizer, model_config, data_dir=parsed.file.parent)
        count = lambda example: len(prompter.example(example).ids)  # noqa: E731
        count_answer = lambda text: len(prompter.text_ids(text))  # noqa: E731
    return WorkloadSampler(parsed, new_tokens=new_tokens, count_tokens=count, count_answer_tokens=count_answer)


def fit_request(request: Request, max_length: int) -> tuple[Request, bool]:
    """The request as a config of max_length serves it, and whether it was over the limit: the
    prompt is cut first (at least one token stays), then the output."""
    prompt, output = request.prompt_tokens, max(1, request.output_tokens)  # a generating request makes >= 1 token
    if prompt + output <= max_length:
        return Request(prompt, output), False
    prompt = max(1, max_length - output)
    return Request(prompt, max_length - prompt), True


@dataclass(frozen=True)
class WorkloadBatch:
    """batch_size requests as generate() runs them: left-padded to the longest prompt, generating
    the longest output."""

    requests: tuple[Request, ...]  # as served (truncated where over the limit)
    truncated: int  # how many of them were over max_length

    @property
    def prompt_length(self) -> int:
        return max(r.prompt_tokens for r in self.requests)

    @property
    def new_tokens(self) -> int:
        return max(r.output_tokens for r in self.requests)

    @property
    def useful_tokens(self) -> int:
        return sum(r.total for r in self.requests)

    @property
    def processed_tokens(self) -> int:
        """Every row's prompt slot and generated tokens: batch x (longest prompt + longest output)."""
        return len(self.requests) * (self.prompt_length + self.new_tokens)

    def left_padding(self) -> list[int]:
        """Pad tokens before each request's prompt."""
        return [self.prompt_length - r.prompt_tokens for r in self.requests]


# A warm-up request: two prompt tokens and two new ones (one decode step). The padded form's first
# row has one prompt token, so the batch takes the padded path (a 4-D attention mask) that mixed
# lengths take, not the all-ones fast path.
WARMUP_NEW_TOKENS = 2


def warmup_requests(rows: int, *, padded: bool) -> tuple[Request, ...]:
    """A small batch of `rows` requests that runs a shape's code path untimed (its graphs compiled
    and captured, its kernels chosen) without the cost of a real prompt."""
    first = Request(1, WARMUP_NEW_TOKENS) if padded else Request(2, WARMUP_NEW_TOKENS)
    return (first, *(Request(2, WARMUP_NEW_TOKENS),) * (rows - 1))


def build_batches(requests: list[Request], batch_size: int, max_length: int) -> list[WorkloadBatch]:
    """Consecutive batches of batch_size requests (a last partial batch is dropped: draw a
    multiple), each request fitted to max_length."""
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"need batch_size >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    batches = []
    for start in range(0, len(requests) - batch_size + 1, batch_size):
        fitted = [fit_request(r, max_length) for r in requests[start:start + batch_size]]
        batches.append(WorkloadBatch(tuple(r for r, _ in fitted), sum(over for _, over in fitted)))
    return batches


def padding_share(batches: list[WorkloadBatch]) -> float:
    """Padded tokens / all tokens processed, over the batches."""
    processed = sum(b.processed_tokens for b in batches)
    return 1 - sum(b.useful_tokens for b in batches) / processed if processed else 0.0


def serving_rows(candidate: Candidate, k: int) -> int:
    """The rows generate() runs a batch of k requests as: the smallest bucket >= k
    (capacity.bucket_of: powers of two, and batch_size; the sizes a capacity check measures) where
    the server pads to buckets, else the k rows as they are."""
    from autotune.capacity import bucket_of
    from autotune.serving import pads_to_buckets

    return bucket_of(k, candidate.batch_size) if pads_to_buckets(candidate) else k


def batch_inputs(batch: WorkloadBatch, vocab_size: int, pad_id: int, seed: int, device: str = "cpu", rows: int | None = None):
    """(input_ids, attention_mask) of the batch, left-padded: random ids from the lower vocabulary
    (as the fixed shape's; throughput does not depend on them), pad_id with mask 0 before them.
    `rows` (>= the requests; serving_rows) adds filler rows of one prompt token each, left-padded
    like a short request: they generate alongside and are nobody's answer."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = batch.prompt_length
    rows = len(batch.requests) if rows is None else rows
    if rows < len(batch.requests):
        raise ValueError(f"rows {rows} is fewer than the batch's {len(batch.requests)} requests")
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    lengths = [r.prompt_tokens for r in batch.requests] + [1] * (rows - len(batch.requests))
    for row, length in enumerate(lengths):
        input_ids[row, width - length:] = torch.randint(0, max(2, min(vocab_size, 32000)), (length,), generator=generator)
        attention_mask[row, width - length:] = 1
    return input_ids.to(device), attention_mask.to(device)


def _pad_token(model) -> int:
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "eos_token_id", None) or 0
        pad = pad[0] if isinstance(pad, list) else pad
    return int(pad)


def timed_batch_generate(model, input_ids, attention_mask, base_kwargs: dict, pad: int, n_new: int, device: str,
                         before_each_run: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """One generate() of a batch to n_new tokens, as a server runs it: (seconds to its first
    generated token, seconds to its end). The first token's time is a streamer's clock when
    generate() hands it the first generated token (generate copies each step's tokens to the host,
    which waits for the device; the streamer's first put is the prompt). Under stop_check deferred
    generate() hands each token over one step late, after queueing the next step: the time a
    streaming client of that generate() would see too."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.puts, self.first_s = 0, None

        def put(self, value) -> None:
            self.puts += 1
            if self.puts == 2:
                self.first_s = time.perf_counter()

        def end(self) -> None:
            pass

    before_each_run()
    streamer = FirstToken()
    kwargs = {**base_kwargs, "max_new_tokens": n_new, "min_new_tokens": n_new, "pad_token_id": pad}
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer, **kwargs)
    _synchronize(device)
    end = time.perf_counter()
    expected = (input_ids.shape[0], input_ids.shape[1] + n_new)
    if tuple(out.shape) != expected:
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {expected}: the measurement would be wrong")
    return (streamer.first_s or end) - start, end - start


def measure_workload(
    model, candidate: Candidate, device: str, batches: list[WorkloadBatch], vocab_size: int, *,
    workload: dict, over_limit_share: float, before_each_run: Callable[[], None] = lambda: None,
    rewarm_each_batch: bool | None = None,
) -> Measurement:
    """The worst-case check, then each batch timed once (see the module docstring). `rewarm_each_batch`:
    run each batch untimed before timing it (None: when compiled). `workload`:
    the section measured (recorded with the figures); `over_limit_share`: the workload's share of
    requests over the candidate's max_length (`WorkloadSampler.over_limit`)."""
    if not batches:
        raise ValueError("a workload measurement needs at least one batch")
    if candidate.has_images:
        raise ValueError("a workload measures text requests; this candidate's requests carry images or video")
    worst_case = _generate_runner(model, candidate, device, vocab_size, None, before_each_run)
    base_kwargs, pad = generate_kwargs(candidate), _pad_token(model)

    def timed(input_ids, attention_mask, n_new: int) -> tuple[float, float]:
        return timed_batch_generate(model, input_ids, attention_mask, base_kwargs, pad, n_new, device, before_each_run)

    # Compiled: each batch's shape is compiled by an untimed run first (unless the caller fixed the
    # cache length), so only graphs compiled inside the timed runs count as compiled while timed.
    rewarm = candidate.compile if rewarm_each_batch is None else rewarm_each_batch
    compiled = snapshot() if candidate.compile else None
    graphs_while_timed, recorded_while_timed = 0, 0

    with MemoryTracker(device, num_gpus=candidate.num_gpus) as tracker:
        warm_start = time.perf_counter()
        worst_case(candidate.new_tokens)  # the claimed worst case runs (and peaks) first, as for the fixed shape
        if candidate.compile:
            worst_case(1)
        # The padded batches take another path (a 4-D attention mask, not the all-ones fast path):
        # its first run is not timed either. A small batch of its own runs it (batch_size rows of
        # two prompt tokens, the first row padded, two new tokens: one decode step), so that every
        # workload batch, the first included, is timed on its own shape's first run.
        padded_path = WorkloadBatch(warmup_requests(candidate.batch_size, padded=True), 0)
        timed(*batch_inputs(padded_path, vocab_size, pad, 1233, device), WARMUP_NEW_TOKENS)
        warmup_s = time.perf_counter() - warm_start
        measure_start = time.perf_counter()
        first, whole = [], []
        for index, batch in enumerate(batches):
            input_ids, attention_mask = batch_inputs(batch, vocab_size, pad, 1234 + index, device)
            if rewarm:  # a new static-cache shape compiles: never time that
                timed(input_ids, attention_mask, batch.new_tokens)
            # One generate() per batch, its first token timed inside it: a new batch shape's first
            # run, as a server meets it (timing generate(new=1) first would warm the shape for the
            # whole run: the GPU replay of 2026-12-06 ran 9-36% slower than service times measured so).
            before = snapshot() if compiled else None
            t1, t = timed(input_ids, attention_mask, batch.new_tokens)
            if before is not None:
                after = snapshot()
                graphs_while_timed += after.graphs - before.graphs
                recorded_while_timed += after.recorded_since(before) or 0
            first.append(t1)
            whole.append(t)
            del input_ids, attention_mask
        measure_s = time.perf_counter() - measure_start
    memory = tracker.result()
    stats = None
    if compiled is not None:  # recordings are counted in every snapshot or in none (a torch without the trigger)
        stats = compile_stats(compiled, snapshot(), graphs_while_timed,
                              recorded_while_timed if compiled.cudagraphs_recorded is not None else None)

    ttft, tpot, e2e = [], [], []
    decode_rates = []
    for batch, t1, t in zip(batches, first, whole):
        decode = max(t - t1, DECODE_FLOOR_S)
        for request in batch.requests:
            ttft.append(t1)
            e2e.append(t)
            if request.output_tokens > 1:
                tpot.append(decode / (batch.new_tokens - 1))
        if batch.new_tokens > 1:
            decode_rates.append(sum(r.output_tokens - 1 for r in batch.requests) / decode)
    size = candidate.batch_size
    return Measurement(
        output_tokens_per_s=Stat.of([sum(r.output_tokens for r in b.requests) / t for b, t in zip(batches, whole)]),
        prefill_tokens_per_s=Stat.of([sum(r.prompt_tokens for r in b.requests) / t for b, t in zip(batches, first)]),
        decode_tokens_per_s=Stat.of(decode_rates) if decode_rates else None,
        requests_per_s=Stat.of([size / t for t in whole]),
        ttft_s=Stat.of(ttft),
        tpot_s=Stat.of(tpot) if tpot else None,
        request_latency_s=Stat.of(e2e),
        workload=workload,
        workload_over_limit_share=over_limit_share,
        workload_truncated=sum(b.truncated for b in batches),
        padding_share=padding_share(batches),
        request_output_tokens=[r.output_tokens for b in batches for r in b.requests],
        request_prompt_tokens=[r.prompt_tokens for b in batches for r in b.requests],
        request_padded_prompt_tokens=[b.prompt_length for b in batches for _ in b.requests],
        compile_stats=stats,
        **_window_fields(memory, warmup_s, measure_s, size, whole, None, None),
    )
