"""Peak memory inside a measurement window.

GPU: torch's allocator peaks (allocated, reserved) after a reset, and NVML's device-wide used
memory sampled by a thread (it sees the CUDA context and other processes too). CPU: the process'
peak RSS; Linux lets us reset the high-water mark (clear_refs 5), otherwise a sampling thread.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from autotune.measure.counts import Counts

GIB = 2**30


@dataclass
class PeakMemory:
    peak_memory_gib: float
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    nvml_peak_used_gib: float | None = None
    peak_rss_gib: float | None = None


@dataclass(frozen=True)
class AllocatorEvents(Counts):
    """Counts of torch's CUDA caching allocator's slow paths (torch.cuda.memory_stats): why a batch
    of a new shape can run slower than one that reuses cached blocks. A new shape may find no
    cached block that fits, and the allocator then asks the driver (`device_allocs`, cudaMalloc or
    cuMemMap) or, when that fails (the card full, or the process' memory fraction reached: the
    budget's cap), frees every cached block and retries (`alloc_retries`: a device-wide
    synchronisation and cudaFree of the whole cache, then the mallocs again)."""

    alloc_retries: int
    device_allocs: int
    device_frees: int


_ALLOCATOR_KEYS = ("num_alloc_retries", "num_device_alloc", "num_device_free")


def allocator_events(device: str) -> AllocatorEvents | None:
    """The caching allocator's counters on one CUDA device so far (a model spread over several GPUs
    has its other devices' not counted). None on CPU (no caching allocator) and where this torch
    lacks one of the counters (not known, rather than 0)."""
    if not device.startswith("cuda"):
        return None
    import torch

    stats = torch.cuda.memory_stats(device)  # a flat dict of a few hundred keys: well under a millisecond
    if any(key not in stats for key in _ALLOCATOR_KEYS):
        return None
    return AllocatorEvents(*(int(stats[key]) for key in _ALLOCATOR_KEYS))


def release_freed_host_memory() -> None:
    """Return freed heap pages to the OS. glibc keeps them resident, and a later allocation can
    reuse them without a new page: an earlier model's or trial's freed memory would then count in
    the next window's RSS (or hide its growth)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def nvml_index(cuda_index: int) -> int:
    """NVML counts physical GPUs; CUDA counts the visible ones (a worker of `--gpus` sees only
    its own, as cuda:0)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if cuda_index < len(visible) and visible[cuda_index].isdigit():
        return int(visible[cuda_index])
    return cuda_index


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryTracker:
    """Use as a context manager around the measured work; `result()` afterwards."""

    def __init__(self, device: str, sample_interval_s: float = 0.02, num_gpus: int = 1) -> None:
        self.device = device
        self.is_cuda = device.startswith("cuda")
        # A model spread over N GPUs (device_map) occupies cuda:0..N-1 of the worker's visible
        # devices; the budget is per GPU, so the peak is the fullest GPU's.
        self.devices = [f"cuda:{i}" for i in range(num_gpus)] if self.is_cuda and num_gpus > 1 else [device]
        self.interval = sample_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0
        self._nvml_handle = None
        self._nvml_handles: list = []
        self._hwm_reset = False

    def _sample(self) -> int:
        if self.is_cuda:
            import pynvml

            # The fullest GPU, like the torch figures (one handle unless the model is spread).
            return max(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in self._nvml_handles)
        return _rss_bytes()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sampled_peak = max(self._sampled_peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryTracker:
        if self.is_cuda:
            import torch

            for dev in self.devices:
                torch.cuda.synchronize(dev)
            # Cached blocks of an earlier, larger trial would count as this one's reserved peak.
            torch.cuda.empty_cache()
            for dev in self.devices:
                torch.cuda.reset_peak_memory_stats(dev)
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml_handles = [pynvml.nvmlDeviceGetHandleByIndex(nvml_index(torch.device(dev).index or 0))
                                      for dev in self.devices]
                self._nvml_handle = self._nvml_handles[0]
            except Exception:  # NVML unavailable (container without it): torch figures remain
                self._nvml_handle = None
            self._hwm_reset = _reset_hwm()  # host memory too (cheap): offloaded weights live there
        else:
            release_freed_host_memory()  # the window counts its own pages, not earlier leftovers
            self._hwm_reset = _reset_hwm()
        # The sampler thread takes the GIL every interval, which slows and jitters Python-bound
        # small-batch decoding: run it only where no exact peak exists (NVML, or no HWM reset).
        if (self.is_cuda and self._nvml_handle is not None) or (not self.is_cuda and not self._hwm_reset):
            self._sampled_peak = self._sample()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sampled_peak = max(self._sampled_peak, self._sample())
        self._result = self._read_peaks()  # the window ends here, not when result() is called

    def result(self) -> PeakMemory:
        return self._result

    def _read_peaks(self) -> PeakMemory:
        if self.is_cuda:
            import torch

            reserved = max(torch.cuda.max_memory_reserved(dev) for dev in self.devices) / GIB
            return PeakMemory(
                peak_memory_gib=reserved,
                peak_allocated_gib=max(torch.cuda.max_memory_allocated(dev) for dev in self.devices) / GIB,
                peak_reserved_gib=reserved,
                nvml_peak_used_gib=self._sampled_peak / GIB if self._nvml_handle is not None else None,
                peak_rss_gib=(_read_hwm_bytes() or 0) / GIB if self._hwm_reset else None,
            )
        hwm = _read_hwm_bytes() if self._hwm_reset else None
        rss = max(hwm or 0, self._sampled_peak) / GIB
        return PeakMemory(peak_memory_gib=rss, peak_rss_gib=rss)
