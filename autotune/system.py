"""The machine: which device to tune on, how much memory it has, and the fingerprint stamped into
every result (a config tuned on one GPU says so, and `verify` can tell when it moved)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass

import psutil

from autotune.errors import DeviceError
from autotune.fingerprint import Fingerprint

GIB = 2**30


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cpu" or "cuda:N"
    type: str  # "cpu" or "cuda"
    name: str
    memory_gib: float
    bf16_supported: bool
    capability: tuple[int, int] | None = None  # a CUDA GPU's compute capability (8, 9); None: CPU or unknown

    @property
    def index(self) -> int:
        return cuda_index(self.device)


def cuda_index(device: str) -> int:
    """N of "cuda:N" (0 for a bare "cuda")."""
    return int(device.split(":")[1]) if ":" in device else 0


def detect_device(requested: str | None) -> DeviceInfo:
    import torch

    if requested is None:
        requested = "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = "cuda:0"
    if requested == "cpu":
        return DeviceInfo("cpu", "cpu", _cpu_name(), psutil.virtual_memory().total / GIB, True)
    if not requested.startswith("cuda:") or not requested[5:].isdigit():
        raise DeviceError(f"unknown device {requested!r}; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {requested} but no CUDA GPU is visible (torch {torch.__version__}); use --device cpu or run on a GPU machine")
    index = int(requested[5:])
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {requested} but only {torch.cuda.device_count()} GPU(s) are visible; pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(requested, "cuda", props.name, props.total_memory / GIB, torch.cuda.is_bf16_supported(),
                      (props.major, props.minor))


def check_budget(device: DeviceInfo, budget_gib: float | None) -> None:
    if budget_gib is not None and budget_gib > device.memory_gib:
        raise DeviceError(
            f"--memory-budget {budget_gib:.1f} GiB is more than {device.device} has ({device.memory_gib:.1f} GiB); "
            f"lower it to at most {device.memory_gib:.1f}GiB or leave it out"
        )


def cap_gpu_memory(device: str | int, budget_gib: float) -> float:
    """Cap what torch may allocate on `device` at the budget and return the fraction set: the
    allocator raises OutOfMemoryError past it (a 24 GiB card on an 80 GiB one). The CUDA context
    itself (~0.5 GiB) is outside torch's accounting."""
    import torch

    fraction = min(1.0, budget_gib / (torch.cuda.get_device_properties(device).total_memory / 2**30))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(device: DeviceInfo) -> Fingerprint:
    import torch

    driver = None
    if device.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:  # NVML missing or not permitted: the fingerprint says so by None
            driver = None
    return Fingerprint(
        device=device.device,
        device_name=device.name,
        device_memory_gib=round(device.memory_gib, 2),
        driver=driver,
        cuda=torch.version.cuda if device.type == "cuda" else None,
        cpu=_cpu_name(),
        cpu_cores=psutil.cpu_count(logical=True) or 0,
        host_memory_gib=round(psutil.virtual_memory().total / GIB, 2),
        python=sys.version.split()[0],
        torch=torch.__version__,
        transformers=_version("transformers") or "?",
        bitsandbytes=_version("bitsandbytes"),
        optuna=_version("optuna") or "?",
        autotune=_version("autotune") or "dev",
    )
