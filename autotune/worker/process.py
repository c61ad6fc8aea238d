"""The worker's main loop (runs in the child process).

It keeps the loaded model while consecutive requests share a load-key and reloads otherwise. Every
failure it can survive becomes a typed TrialOutcome: 'oom' (infeasible), 'unsupported' (the
library refused the combination at load time) or 'error' (a traceback for the log).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
import traceback

from autotune.measure.memory import release_freed_host_memory
from autotune.models import ModelRef
from autotune.spec import Probe, TrialOutcome
from autotune.system import cap_gpu_memory
from autotune.worker.faults import Faults
from autotune.worker.protocol import QualityRequest, WorkRequest

_CPU_OOM_MARKERS = ("can't allocate memory", "Cannot allocate memory", "not enough memory", "DefaultCPUAllocator", "out of memory")
# Exceptions transformers/bitsandbytes raise when a combination is not supported (an attention
# kernel the architecture lacks, a dtype a quantizer refuses): the candidate is unsupported here.
_UNSUPPORTED_AT_LOAD = (NotImplementedError, ValueError, ImportError)


def is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _CPU_OOM_MARKERS)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def _redirect_output(log_path: str) -> None:
    # Everything the libraries print (warnings, progress bars, C++ messages) goes to the log file,
    # which is kept next to the study so a crashed trial can be diagnosed afterwards.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def _cap_host_memory(budget_gib: float) -> None:
    """The CPU counterpart of set_per_process_memory_fraction: with RLIMIT_DATA at the budget, an
    allocation past it fails with ENOMEM inside torch (a catchable error -> infeasible) instead
    of the kernel's OOM killer ending the worker (a crash). Set after the imports: a budget below
    what the runtime itself already holds would break the worker rather than the candidate, and
    the budget constraint marks every candidate over budget anyway."""
    import resource

    limit = int(budget_gib * 2**30)
    try:
        with open("/proc/self/status") as f:
            in_use = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration):
        return
    if limit > in_use:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def measure_quality(model, prompter, request: QualityRequest, device: str):
    """Task score (or label-free agreement) and fidelity to the reference, with intervals."""
    from autotune.data import load_validation_set
    from autotune.measure.quality import (
        answer_agreement,
        bootstrap_ci,
        capture_reference,
        fidelity,
        fidelity_items,
        fidelity_prompts,
        load_reference,
        paired_difference,
        save_reference,
        task_scores,
    )
    from autotune.spec import QualityReport

    start = time.perf_counter()
    examples = load_validation_set(request.data_path, allow_outside=request.allow_data_outside)[: request.max_examples]
    label_free = request.metric == "top1_agreement"
    scores, texts = task_scores(model, prompter, examples, "contains" if label_free else request.metric, device)
    if request.is_reference:
        answers = {i: prompter.text_ids(t) for i, (t, e) in enumerate(zip(texts, examples)) if e.kind == "generate"}
        items = fidelity_items(examples, answers)
        reference = capture_reference(model, fidelity_prompts(prompter, examples, items), device,
                                      tails=[item.tail for item in items])
        save_reference(request.reference_path, reference, items, scores, texts)
        if label_free:
            scores = [1.0] * len(items)
        low, high = bootstrap_ci(scores)
        return QualityReport(metric=request.metric, score=sum(scores) / len(scores), ci_low=low, ci_high=high, n=len(scores),
                             per_example=scores, kl_mean=0.0, kl_p95=0.0, top1_agreement=1.0, answer_agreement=1.0,
                             elapsed_s=time.perf_counter() - start)
    saved = load_reference(request.reference_path)  # data only, never unpickled: the file may have been tampered with
    items = saved.items
    fid = fidelity(model, saved.reference, fidelity_prompts(prompter, examples, items), device)
    reference_scores = saved.scores
    agreement = answer_agreement(texts, saved.texts)
    if label_free:
        scores, reference_scores = fid.per_sequence_top1, [1.0] * len(fid.per_sequence_top1)
    low, high = bootstrap_ci(scores)
    diff = paired_difference(scores, reference_scores)
    return QualityReport(
        metric=request.metric, score=sum(scores) / len(scores), ci_low=low, ci_high=high, n=len(scores), per_example=scores,
        kl_mean=fid.kl_mean, kl_p95=fid.kl_p95, top1_agreement=fid.top1_agreement, answer_agreement=agreement,
        delta_vs_reference=diff.mean,
        delta_ci_low=diff.ci_low, delta_ci_high=diff.ci_high, within_noise=diff.within_noise,
        elapsed_s=time.perf_counter() - start,
    )


class _Worker:
    def __init__(self, model_ref: ModelRef, device: str, memory_budget_gib: float | None) -> None:
        self.ref = model_ref
        self.device = device
        self.budget = memory_budget_gib
        self.faults = Faults.from_env()
        self.model = None
        self.tokenizer = None
        self.loaded_key: tuple | None = None
        self.offload: dict = {}  # the loaded model's offload figures (Measurement fields), if it is offloaded
        self.vocab_size = 32000
        self._gpu_fraction = 1.0  # of the GPU's memory torch may use: the budget, where one is given
        self._processors: dict[int | None, object] = {}  # image processors by max_pixels (they do not depend on the load)
        self._samplers: dict[tuple, object] = {}  # WorkloadSamplers by (workload, new_tokens), for the loaded tokenizer

    def setup(self) -> None:
        import torch
        import transformers  # noqa: F401  (import cost belongs to spawning, not to the first trial)

        if self.device == "cpu" and self.budget is not None:
            _cap_host_memory(self.budget)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
            if self.budget is not None:
                self._gpu_fraction = cap_gpu_memory(self.device, self.budget)

    def _cap_spread_devices(self, num_gpus: int) -> None:
        """The budget is per GPU: a model spread over N GPUs gets it on each of cuda:0..N-1."""
        if num_gpus <= 1 or not self.device.startswith("cuda") or self.budget is None:
            return
        for i in range(1, num_gpus):
            cap_gpu_memory(i, self.budget)

    @contextlib.contextmanager
    def _memory_cap_lifted(self):
        """Building a file is not a candidate, so the GPU budget does not apply to it: under the cap,
        bnb int8 quantizes 3x slower (18 s vs 6 s for a 7B on an H100) as the allocator keeps
        hitting the limit. Cached blocks are released before the cap comes back."""
        import torch

        capped = self.device.startswith("cuda") and self._gpu_fraction < 1.0
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        try:
            yield
        finally:
            if capped:
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(self._gpu_fraction, self.device)

    def _unload(self) -> None:
        self.model = None
        self._samplers = {}  # a file workload's lengths were counted with this load's tokenizer
        self.offload = {}
        self.tokenizer = None
        self.loaded_key = None
        gc.collect()
        release_freed_host_memory()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def handle(self, request: WorkRequest) -> TrialOutcome:
        from autotune.loading import ensure_prequantized, load_model_for_trial
        from autotune.models import materialize
        from autotune.vision import CandidateShapeError

        cand = request.candidate
        print(f"[trial {request.trial_number}] {cand.label()}", flush=True)
        load_s, prepare_s, reloaded = 0.0, 0.0, False
        if self.loaded_key != cand.load_key:
            self._unload()
            reloaded = True
            load_failure: TrialOutcome | None = None
            self._cap_spread_devices(cand.num_gpus)
            start = time.perf_counter()
            try:
                with self._memory_cap_lifted():
                    # Building the random-weight checkpoint (cached after the first build on this
                    # machine) and quantizing a copy for later loads are preparation, not the
                    # candidate: a model that only fits offloaded must still be built in full once.
                    # The trial's own load below reads the files under the budget.
                    materialize(self.ref, self.device)
                    prepare_s = time.perf_counter() - start
                    prepare_s += ensure_prequantized(self.ref, cand, self.device)
                start = time.perf_counter()
                self.model, self.tokenizer = load_model_for_trial(self.ref, cand, self.device)
                self.faults.after_load(self.model, cand)
            except Exception as e:  # noqa: BLE001 — every load failure becomes a typed outcome
                traceback.print_exc()
                status = "oom" if is_oom(e) else "unsupported" if isinstance(e, _UNSUPPORTED_AT_LOAD) else "error"
                load_failure = TrialOutcome(status=status, reason=_one_line(e), phase="load", reloaded=True,
                                            load_s=time.perf_counter() - start, prepare_s=prepare_s)
            if load_failure is not None:
                self._unload()  # after the except block, so the half-loaded weights are no longer referenced
                return load_failure
            load_s = time.perf_counter() - start
            release_freed_host_memory()  # loading buffers (e.g. fp32 weights before quantizing)
            self.loaded_key = cand.load_key
            text_config = getattr(self.model.config, "text_config", None) or self.model.config  # VL models nest it
            self.vocab_size = int(getattr(text_config, "vocab_size", None) or self.vocab_size)
            print(f"[trial {request.trial_number}] loaded in {load_s:.1f}s", flush=True)
            self._offload_figures()

        quality = None
        if request.quality is not None:
            try:
                quality = measure_quality(self.model, self._prompter(request.quality), request.quality, self.device)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                return TrialOutcome(status="oom" if is_oom(e) else "error", reason=_one_line(e), phase="quality",
                                    load_s=load_s, prepare_s=prepare_s, reloaded=reloaded)
            print(f"[trial {request.trial_number}] quality {quality.metric} = {quality.score:.3f} in {quality.elapsed_s:.1f}s", flush=True)
            gc.collect()
            release_freed_host_memory()  # else the quality run's freed heap counts in the next peak RSS
        if not request.measure:
            return TrialOutcome(status="ok", quality=quality, load_s=load_s, prepare_s=prepare_s, reloaded=reloaded)
        if request.boundary_batch_sizes:
            try:
                boundary = self._boundary(cand, request.boundary_batch_sizes, request.boundary_exhaustive)
            except CandidateShapeError as e:
                return TrialOutcome(status="unsupported", reason=str(e), phase="measure", load_s=load_s, prepare_s=prepare_s,
                                    reloaded=reloaded)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                return TrialOutcome(status="error", reason=_one_line(e), phase="measure", load_s=load_s, prepare_s=prepare_s,
                                    reloaded=reloaded)
            return TrialOutcome(status="ok", boundary=boundary, load_s=load_s, prepare_s=prepare_s, reloaded=reloaded)

        self.faults.measurement_starting(request.trial_number)

        def before_each_run() -> None:
            self.faults.before_each_run(cand, self.device)

        failure: TrialOutcome | None = None
        try:
            if request.workload is not None:
                measurement = self._measure_workload(cand, request, before_each_run)
            else:
                measurement = self._measure(cand, request.repeats, before_each_run)
        except CandidateShapeError as e:  # the request the candidate claims cannot be built
            return TrialOutcome(status="unsupported", reason=str(e), phase="measure", load_s=load_s, prepare_s=prepare_s,
                                reloaded=reloaded, quality=quality)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            failure = TrialOutcome(status="oom" if is_oom(e) else "error", reason=_one_line(e), phase="measure", load_s=load_s,
                                   prepare_s=prepare_s, reloaded=reloaded, quality=quality)
        if failure is not None:
            # Released only here, after the except block: until then the exception's traceback keeps
            # the failed run's frames, and with them its KV cache and activations, alive.
            gc.collect()
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            return failure
        if self.offload:
            measurement = measurement.model_copy(update=self.offload)
        print(f"[trial {request.trial_number}] {measurement.throughput.median:.1f} {measurement.throughput_unit}, "
              f"peak {measurement.peak_memory_gib:.2f} GiB", flush=True)
        return TrialOutcome(status="ok", measurement=measurement, load_s=load_s, prepare_s=prepare_s, reloaded=reloaded,
                            quality=quality)


    def _offload_figures(self) -> None:
        """cpu_offload_gib > 0: what the loaded model keeps on the host (hf_device_map) and the GPU's
        max_memory it was loaded with, recorded with every measurement of this load (best.yaml,
        the exporters' cpu-offload-gb)."""
        from autotune.loading import offloaded_gib

        plan = getattr(self.model, "autotune_offload", None)
        self.offload = {} if plan is None else {"offloaded_gib": round(offloaded_gib(self.model), 3),
                                                "offload_gpu_max_memory_gib": round(plan.gpu_max_memory_gib, 3)}
        if plan is not None:
            print(f"  offload: {self.offload['offloaded_gib']:.2f} GiB of {plan.weights_gib:.2f} GiB of weights in host memory "
                  f"(GPU max_memory {plan.gpu_max_memory_gib:.2f} GiB)", flush=True)

    def _at_shape(self, cand) -> None:
        """Called before the loaded model runs `cand`'s requests: drop the static cache generate()
        remembers from earlier calls, the quality run's included (`loading.forget_static_cache`).
        Compiled code and CUDA graphs of earlier shapes stay: resetting them between shapes was
        tried and crashes when a shape comes back ("Running CUDAGraph after shutdown", H200,
        Session 7), and `bench/compile_memory.py` measured the same peak without it (BENCHMARKS §8)."""
        from autotune.loading import forget_static_cache

        forget_static_cache(self.model)

    def _probe(self, cand) -> Probe:
        """The candidate's worst case once: does it run, and within the budget?"""
        from autotune.kinds import get_kind
        from autotune.measure.throughput import probe_peak_gib
        from autotune.vision import build_batch, yes_no_ids

        self._at_shape(cand)

        vision = build_batch(self._image_processor(cand.max_pixels), self.ref.config(), cand, self.vocab_size, self.device) \
            if cand.has_images else None
        yes_no = None if get_kind(self.ref.model_kind).generates else yes_no_ids(self.tokenizer, self.vocab_size)
        try:
            peak = probe_peak_gib(self.model, cand, self.device, self.vocab_size, yes_no, vision=vision)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            return Probe(batch_size=cand.batch_size, fits=False, reason=_one_line(e))
        finally:
            vision = None
            gc.collect()
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
        if self.budget is not None and peak > self.budget:
            return Probe(batch_size=cand.batch_size, fits=False, peak_memory_gib=peak,
                         reason=f"peak {peak:.2f} GiB over the {self.budget:.2f} GiB budget")
        return Probe(batch_size=cand.batch_size, fits=True, peak_memory_gib=peak)

    def _boundary(self, cand, batch_sizes: list[int], exhaustive: bool):
        """Largest batch size that fits: bisection needs log2(n) probes of the n sizes, valid
        because memory grows with the batch; `exhaustive` probes every size (the check of it)."""
        from autotune.spec import BatchBoundary

        start = time.perf_counter()
        sizes = sorted(set(batch_sizes))
        probes = []

        def fits(index: int) -> bool:
            probe = self._probe(cand.model_copy(update={"batch_size": sizes[index]}))
            probes.append(probe)
            print(f"  probe batch {probe.batch_size}: {'fits' if probe.fits else probe.reason}", flush=True)
            return probe.fits

        if exhaustive:
            ok = [fits(i) for i in range(len(sizes))]
            largest = max((s for s, f in zip(sizes, ok) if f), default=None)
        else:
            low, high = -1, len(sizes)  # sizes[low] fits (or none), sizes[high] does not (or beyond)
            while high - low > 1:
                middle = (low + high) // 2
                if fits(middle):
                    low = middle
                else:
                    high = middle
            largest = sizes[low] if low >= 0 else None
        return BatchBoundary(batch_sizes=sizes, largest_feasible=largest, probes=probes, exhaustive=exhaustive,
                             elapsed_s=time.perf_counter() - start)

    def _image_processor(self, max_pixels: int | None):
        from autotune.models import materialize
        from autotune.vision import build_image_processor

        if max_pixels not in self._processors:  # reading a checkpoint's processor is file I/O
            self._processors[max_pixels] = build_image_processor(self.ref, materialize(self.ref, self.device), max_pixels)
        return self._processors[max_pixels]

    def _prompter(self, request: QualityRequest):
        """Validation prompts at the candidate's input resolution (text models: the chat template)."""
        from pathlib import Path

        from autotune.measure.prompting import Prompter

        processor = self._image_processor(request.max_pixels) if self.ref.is_vision else None
        return Prompter(self.tokenizer, self.ref.config(), processor, request.max_pixels, request.video_frames,
                        Path(request.data_path).parent, request.max_prompt_tokens)

    def _measure(self, cand, repeats: int, before_each_run):
        """Build the candidate's worst-case requests (text, or images + text) and time them:
        generate() for generating kinds, one scoring pass for a reranker."""
        from autotune.kinds import get_kind
        from autotune.measure.throughput import measure_generation, measure_scoring
        from autotune.vision import build_batch, yes_no_ids

        self._at_shape(cand)
        vision, preprocess_again = None, None
        if cand.has_images:
            processor = self._image_processor(cand.max_pixels)
            vision = build_batch(processor, self.ref.config(), cand, self.vocab_size, self.device)

            preprocess_again = lambda: vision.preprocess_again(processor, cand.max_pixels)  # noqa: E731

        if get_kind(self.ref.model_kind).generates:
            return measure_generation(self.model, cand, self.device, repeats, self.vocab_size, before_each_run,
                                      vision=vision, preprocess_again=preprocess_again)
        yes_no = yes_no_ids(self.tokenizer, self.vocab_size)
        return measure_scoring(self.model, cand, self.device, repeats, self.vocab_size, yes_no, before_each_run,
                               vision=vision, preprocess_again=preprocess_again)


    def _sampler(self, workload: dict, new_tokens: int):
        """The workload's WorkloadSampler, kept per workload and new_tokens (traffic.workload_sampler)."""
        import json

        from autotune.measure.traffic import workload_sampler

        key = (json.dumps(workload, sort_keys=True), new_tokens)
        if key not in self._samplers:
            self._samplers[key] = workload_sampler(workload, new_tokens, self.tokenizer, self.ref.config())
        return self._samplers[key]

    def _measure_workload(self, cand, request: WorkRequest, before_each_run):
        """The worst case once, then `repeats` batches of batch_size requests drawn from the workload
        (autotune/measure/traffic.py); text generation only."""
        from autotune.kinds import get_kind
        from autotune.measure.traffic import build_batches, measure_workload

        if cand.has_images or not get_kind(self.ref.model_kind).generates:
            raise ValueError("a workload measures text generation; this candidate's requests carry images or video, "
                             "or the model is a reranker")
        self._at_shape(cand)
        sampler = self._sampler(request.workload, cand.new_tokens)
        repeats = max(1, request.repeats)
        requests = sampler.draw(repeats * cand.batch_size, request.workload_seed, cand.max_length)
        batches = build_batches(requests, cand.batch_size, cand.max_length)
        _, share = sampler.over_limit(cand.max_length)
        return measure_workload(self.model, cand, self.device, batches, self.vocab_size, workload=request.workload,
                                over_limit_share=share, before_each_run=before_each_run)


def _die_with_parent() -> None:
    """A study process killed with SIGKILL cannot stop its worker: the kernel does (Linux), so a
    killed `autotune worker` never leaves a model measuring on a GPU another worker takes over."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(conn, model_ref_json: str, device: str, memory_budget_gib: float | None, log_path: str) -> None:
    _die_with_parent()
    _redirect_output(log_path)
    worker = _Worker(ModelRef.model_validate_json(model_ref_json), device, memory_budget_gib)
    worker.faults.on_startup()
    worker.setup()
    conn.send({"ready": True, "pid": os.getpid()})
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away: nothing left to answer
        if message is None:
            return
        outcome = worker.handle(WorkRequest.model_validate(message))
        conn.send(outcome.model_dump(mode="json"))
