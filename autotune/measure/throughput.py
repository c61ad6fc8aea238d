"""Throughput and latency of generate() at the candidate's claimed worst case.

Protocol (DESIGN.md): batch_size sequences, each prompt_tokens long, generating exactly new_tokens
(min = max, so EOS cannot end a run early and flatter the numbers). Warm up once at the exact
shapes (with a static cache, new shapes also mean a recompile), then `repeats` interleaved pairs of generate(new=1) and generate(new=N). The first gives
TTFT and prefill throughput; the difference gives decode time. Each figure is the median of the
repeats with its spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from autotune.measure.compile_stats import compile_stats, snapshot
from autotune.measure.memory import MemoryTracker
from autotune.spec import Candidate, Measurement, Stat
from autotune.loading import generate_kwargs


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _window_fields(memory, warmup_s: float, measure_s: float, batch: int, request_times: list[float], vision,
                   preprocess_times: list[float] | None) -> dict:
    """The Measurement fields both workloads share: memory peaks, window times, vision figures."""
    return dict(
        peak_memory_gib=memory.peak_memory_gib,
        peak_allocated_gib=memory.peak_allocated_gib,
        peak_reserved_gib=memory.peak_reserved_gib,
        nvml_peak_used_gib=memory.nvml_peak_used_gib,
        peak_rss_gib=memory.peak_rss_gib,
        warmup_s=warmup_s,
        measure_s=measure_s,
        visual_tokens_per_request=vision.visual_tokens_per_request if vision is not None else None,
        preprocess_s=Stat.of(preprocess_times) if preprocess_times else None,
        # Model time plus preprocessing done serially before it, per repeat.
        requests_per_s_with_preprocessing=Stat.of([batch / (t + p) for t, p in zip(request_times, preprocess_times)])
        if preprocess_times else None,
    )


def _request_inputs(candidate: Candidate, vocab_size: int, device: str, vision):
    """(input_ids, attention_mask, extra model inputs) of the candidate's worst-case batch: the
    vision batch's, or random text ids."""
    import torch

    if vision is not None:
        return vision.input_ids, vision.attention_mask, vision.model_inputs
    generator = torch.Generator().manual_seed(1234)
    # Random ids from the lower part of the vocabulary: real-token-like, and never special tokens
    # that some chat templates treat differently. Throughput does not depend on the ids.
    input_ids = torch.randint(0, max(2, min(vocab_size, 32000)), (candidate.batch_size, candidate.prompt_tokens),
                              generator=generator).to(device)
    return input_ids, torch.ones_like(input_ids), {}


def _generate_runner(model, candidate: Candidate, device: str, vocab_size: int, vision,
                     before_each_run: Callable[[], None]) -> Callable[[int], float]:
    """generate() of the candidate's worst-case batch for n new tokens, returning its seconds."""
    import torch

    batch, prompt = candidate.batch_size, candidate.prompt_tokens
    input_ids, attention_mask, extra = _request_inputs(candidate, vocab_size, device, vision)
    base_kwargs = generate_kwargs(candidate)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "eos_token_id", None) or 0
        pad = pad[0] if isinstance(pad, list) else pad

    def timed_generate(n_new: int) -> float:
        before_each_run()
        kwargs = {**base_kwargs, "max_new_tokens": n_new, "min_new_tokens": n_new, "pad_token_id": pad}
        _synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if out.shape != (batch, prompt + n_new):
            raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(batch, prompt + n_new)}: the measurement would be wrong")
        return elapsed

    return timed_generate


def probe_peak_gib(model, candidate: Candidate, device: str, vocab_size: int, yes_no: tuple[int, int] | None,
                   before_each_run: Callable[[], None] = lambda: None, vision=None) -> float:
    """One run of the candidate's worst case (all new tokens generated, or one scoring pass): its
    peak memory, or the OOM it raises. What a feasibility probe needs, at a third of a trial's cost."""
    run = (_generate_runner(model, candidate, device, vocab_size, vision, before_each_run) if yes_no is None
           else _score_runner(model, candidate, device, vocab_size, yes_no, vision, before_each_run))
    with MemoryTracker(device, num_gpus=candidate.num_gpus) as tracker:
        run(candidate.new_tokens)
    return tracker.result().peak_memory_gib


def measure_generation(
    model, candidate: Candidate, device: str, repeats: int, vocab_size: int, before_each_run: Callable[[], None] = lambda: None,
    vision=None, preprocess_again: Callable[[], float] | None = None,
) -> Measurement:
    """`vision` (autotune.vision.VisionBatch) carries image requests; `preprocess_again` re-runs
    their CPU preprocessing and returns its seconds, timed apart from the model."""
    batch, prompt, new = candidate.batch_size, candidate.prompt_tokens, candidate.new_tokens
    timed_generate = _generate_runner(model, candidate, device, vocab_size, vision, before_each_run)

    compiled = snapshot() if candidate.compile else None
    with MemoryTracker(device, num_gpus=candidate.num_gpus) as tracker:
        warm_start = time.perf_counter()
        # First runs at a new shape are 2-8x slower: never time them. generate(new) runs the
        # exact prefill shape of generate(1) and every decode shape, so it warms both.
        timed_generate(new)
        if candidate.compile:  # a static cache of prompt+1 is another compiled shape
            timed_generate(1)
        warmup_s = time.perf_counter() - warm_start
        warmed = snapshot() if compiled else None
        measure_start = time.perf_counter()
        prefill_times, full_times = [], []
        for _ in range(repeats):
            prefill_times.append(timed_generate(1))
            full_times.append(timed_generate(new))
        measure_s = time.perf_counter() - measure_start
    memory = tracker.result()
    stats = None
    if compiled is not None and warmed is not None:
        after = snapshot()
        stats = compile_stats(compiled, after, after.graphs - warmed.graphs, after.recorded_since(warmed))
    preprocess_times = [preprocess_again() for _ in range(repeats)] if preprocess_again else None

    # Decode time per repeat is full minus prefill of the same repeat (interleaved, so drift in
    # clocks or thermals hits both). Floor it at a microsecond rather than report negative speed.
    decode_times = [max(f - p, 1e-6) for p, f in zip(prefill_times, full_times)]
    return Measurement(
        output_tokens_per_s=Stat.of([batch * new / t for t in full_times]),
        prefill_tokens_per_s=Stat.of([batch * prompt / t for t in prefill_times]),
        decode_tokens_per_s=Stat.of([batch * (new - 1) / t for t in decode_times]),
        requests_per_s=Stat.of([batch / t for t in full_times]),
        ttft_s=Stat.of(prefill_times),
        tpot_s=Stat.of([t / (new - 1) for t in decode_times]),
        request_latency_s=Stat.of(full_times),
        compile_stats=stats,
        **_window_fields(memory, warmup_s, measure_s, batch, full_times, vision, preprocess_times),
    )


def _score_runner(model, candidate: Candidate, device: str, vocab_size: int, yes_no: tuple[int, int], vision,
                  before_each_run: Callable[[], None]) -> Callable[[int], float]:
    """One scoring pass of the candidate's batch of query-document pairs, returning its seconds
    (the argument is unused: a reranker generates nothing)."""
    import torch

    batch = candidate.batch_size
    input_ids, attention_mask, extra = _request_inputs(candidate, vocab_size, device, vision)

    def timed_score(_: int = 0) -> float:
        before_each_run()
        _synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **extra).logits[:, -1]
            scores = torch.softmax(logits[:, list(yes_no)].float(), dim=-1)[:, 0]
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if scores.shape != (batch,) or not torch.isfinite(scores).all():
            raise RuntimeError(f"reranker scores have shape {tuple(scores.shape)} or are not finite: the measurement would be wrong")
        return elapsed

    return timed_score


def measure_scoring(
    model, candidate: Candidate, device: str, repeats: int, vocab_size: int, yes_no: tuple[int, int],
    before_each_run: Callable[[], None] = lambda: None, vision=None, preprocess_again: Callable[[], float] | None = None,
) -> Measurement:
    """A reranker's workload: batch_size query-document pairs of max_length tokens scored in one
    forward pass (P("yes") against P("no") at the last position). Nothing is generated, so the
    generation figures stay empty; requests/s counts pairs."""
    batch, tokens = candidate.batch_size, candidate.prompt_tokens
    run = _score_runner(model, candidate, device, vocab_size, yes_no, vision, before_each_run)
    timed_score = lambda: run(0)  # noqa: E731

    with MemoryTracker(device, num_gpus=candidate.num_gpus) as tracker:
        warm_start = time.perf_counter()
        timed_score()
        warmup_s = time.perf_counter() - warm_start
        measure_start = time.perf_counter()
        times = [timed_score() for _ in range(repeats)]
        measure_s = time.perf_counter() - measure_start
    memory = tracker.result()
    preprocess_times = [preprocess_again() for _ in range(repeats)] if preprocess_again else None
    return Measurement(
        output_tokens_per_s=None, decode_tokens_per_s=None, tpot_s=None,
        prefill_tokens_per_s=Stat.of([batch * tokens / t for t in times]),
        requests_per_s=Stat.of([batch / t for t in times]),
        ttft_s=Stat.of(times),
        request_latency_s=Stat.of(times),
        **_window_fields(memory, warmup_s, measure_s, batch, times, vision, preprocess_times),
    )
