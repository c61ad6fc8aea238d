"""Registry of weight-quantization methods. Add a method by subclassing and registering it; the
search space validates names against this registry, the loader asks it for the config, the
memory model for its bytes per weight, the quality reference for its precision rank, the
prequantized cache for what identifies a saved copy, and the transformers export for the config
it writes. What each serving system makes of it is that exporter's rule (autotune/export/)."""

from __future__ import annotations

import functools
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any


class QuantizationMethod(ABC):
    """Contract: ``unavailable_reason`` is cheap and never imports heavy code paths that may fail;
    ``build_config`` returns what ``from_pretrained(quantization_config=...)`` takes, or None."""

    name: str
    # Bytes per weight of the quantized linear layers, a lower bound (the memory model's): the
    # quantization constants are left out. None: not quantized, the dtype's bytes.
    bytes_per_weight: float | None
    # 0 = most faithful weights: the quality reference tries methods in this order.
    precision_rank: int
    # Keep a quantized copy of the checkpoint after the first load and load later candidates from
    # it. Worth it where quantizing while loading is slow next to saving (bench/load_times.py).
    cache_prequantized: bool = False
    # torch._inductor.config settings (name → value, dotted for its sub-configs) this method's
    # kernels need when generate() is compiled. The load applies them around every generate() of
    # the model (loading.scope_inductor_settings), never process-wide: the worker compiles other
    # candidates after this one. The transformers export sets them in its script.
    inductor_settings: Mapping[str, Any] = {}

    @abstractmethod
    def unavailable_reason(self, device_type: str, capability: tuple[int, int] | None = None,
                           dtype: str | None = None) -> str | None:
        """Why this method cannot run here (missing package, wrong device, a GPU's compute
        `capability` too old, a candidate `dtype` its kernels refuse), or None. An unknown
        capability (None) refuses nothing: the load decides."""

    @abstractmethod
    def build_config(self, compute_dtype: Any) -> Any | None: ...

    def cache_identity(self) -> str:
        """What, besides the checkpoint, the dtype and transformers' version, decides the bytes of
        a saved quantized copy (the quantizing library's version): part of its cache name."""
        return ""

    def config_source(self, compute_dtype: str) -> str | None:
        """The Python expression of `build_config(compute_dtype)` for the transformers export
        (`compute_dtype` is itself an expression such as 'torch.bfloat16'); None: no config."""
        return None

    config_imports: tuple[str, ...] = ()  # names `config_source` needs from transformers
    config_import_lines: tuple[str, ...] = ()  # other import statements it needs (torchao's config classes)

    def compile_unsupported_reason(self) -> str | None:
        """Why transformers will not compile generate() with this method, known before loading.
        It asks the quantizer transformers would build (`is_compileable`), so a newer release that
        can compile it is believed; the loader checks again on the loaded model."""
        return _compile_verdict(self.name)


@functools.lru_cache(maxsize=None)
def _compile_verdict(method_name: str) -> str | None:
    config = QUANTIZATION_METHODS[method_name].build_config(None)
    if config is None:
        return None
    import transformers

    try:
        from transformers.quantizers.auto import AutoHfQuantizer

        compileable = AutoHfQuantizer.from_config(config).is_compileable
    except Exception:  # noqa: BLE001 — no verdict before loading; the loader checks the loaded model
        return None
    if compileable:
        return None
    return f"transformers {transformers.__version__} does not compile generate() with this quantization"


QUANTIZATION_METHODS: dict[str, QuantizationMethod] = {}


def register(method: QuantizationMethod) -> QuantizationMethod:
    QUANTIZATION_METHODS[method.name] = method
    return method


def get_method(name: str) -> QuantizationMethod:
    from autotune.errors import SpaceError, unknown_name_message

    try:
        return QUANTIZATION_METHODS[name]
    except KeyError:
        raise SpaceError(unknown_name_message("quantization", name, QUANTIZATION_METHODS)) from None


class NoQuantization(QuantizationMethod):
    name = "none"
    bytes_per_weight = None
    precision_rank = 0

    def unavailable_reason(self, device_type: str, capability: tuple[int, int] | None = None,
                           dtype: str | None = None) -> str | None:
        return None

    def build_config(self, compute_dtype: Any) -> None:
        return None


class _Bitsandbytes(QuantizationMethod):
    config_imports = ("BitsAndBytesConfig",)

    def unavailable_reason(self, device_type: str, capability: tuple[int, int] | None = None,
                           dtype: str | None = None) -> str | None:
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install bitsandbytes)"
        return None

    def cache_identity(self) -> str:
        import importlib.metadata

        try:
            return importlib.metadata.version("bitsandbytes")
        except importlib.metadata.PackageNotFoundError:
            return ""


class BnbInt8(_Bitsandbytes):
    name = "bnb-int8"
    bytes_per_weight = 1.0  # one byte; the per-row scales left out
    precision_rank = 2  # int8 weights and int8 activations (outliers kept in 16 bits)
    # H100, Qwen2.5-7B: 6-18 s to quantize while loading (the slow end under a memory cap), 1.6 s
    # from a saved int8 copy, 10 s to save it once. 4-bit methods load in ~2.5 s either way.
    cache_prequantized = True

    def build_config(self, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)

    def config_source(self, compute_dtype: str) -> str:
        return "BitsAndBytesConfig(load_in_8bit=True)"


class BnbFourBit(_Bitsandbytes):
    bytes_per_weight = 0.5  # 4 bits; the absmax constant per 64 weights left out

    def __init__(self, quant_type: str, precision_rank: int) -> None:
        self.quant_type = quant_type
        self.name = f"bnb-{quant_type}"
        self.precision_rank = precision_rank

    def build_config(self, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_compute_dtype=compute_dtype
        )

    def config_source(self, compute_dtype: str) -> str:
        return f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{self.quant_type}", bnb_4bit_compute_dtype={compute_dtype})'


register(NoQuantization())
register(BnbInt8())
register(BnbFourBit("nf4", precision_rank=4))  # normal-float levels fit weights better than fp4's
register(BnbFourBit("fp4", precision_rank=6))


# torchao (pytorch/ao) through transformers' TorchAoConfig: weights quantized tensor by tensor as
# they load onto the device (device_map), with the candidate's dtype as the compute dtype. Its
# quantizer compiles (TorchAoHfQuantizer.is_compileable), so compile x torchao is a real
# combination. Checked with transformers 5.17/5.24 and torchao 0.18 (docs/notes of issue 19).
TORCHAO_MIN_FALLBACK = "0.15.0"  # transformers' TORCHAO_MIN_VERSION (5.17-5.24), if it cannot be read
TORCHAO_TORCH_FLOOR = ("0.17", (2, 11))  # torchao >= 0.17 builds on torch >= 2.11's stable ABI


def _installed(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchao_reason() -> str | None:
    """Why torchao cannot be used here at all, from the installed versions only (nothing imported
    that can fail): not installed, older than transformers accepts, or too new for this torch."""
    from packaging.version import InvalidVersion, Version

    version = _installed("torchao")
    if version is None or importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao)"
    try:
        from transformers.utils.import_utils import TORCHAO_MIN_VERSION as minimum
    except ImportError:
        minimum = TORCHAO_MIN_FALLBACK
    torch_version = _installed("torch") or "0"
    try:
        ao, torch_release = Version(version), Version(torch_version).release[:2]
        if ao < Version(str(minimum)):
            return f"torchao {version} is older than transformers accepts (>= {minimum}); pip install -U torchao"
        if ao >= Version(TORCHAO_TORCH_FLOOR[0]) and torch_release < TORCHAO_TORCH_FLOOR[1]:
            floor = ".".join(map(str, TORCHAO_TORCH_FLOOR[1]))
            return (f"torchao {version} needs torch >= {floor} (this is torch {torch_version}); upgrade torch, or install "
                    "the torchao built for it (0.16 for torch 2.10, 0.15 for torch 2.9)")
    except InvalidVersion:
        return None  # a version string we cannot read: the load decides
    return None


# torchao.quantization.utils.recommended_inductor_config_setter's settings (torchao 0.18), which
# set_inductor_config=True would set process-wide (tests/test_torchao.py checks they still match).
TORCHAO_RECOMMENDED_INDUCTOR: Mapping[str, Any] = {
    "coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
    "force_fuse_int_mm_with_mul": True, "fx_graph_cache": True, "triton.unique_kernel_names": True}


class _TorchAo(QuantizationMethod):
    config_imports = ("TorchAoConfig",)
    ao_class: str  # the torchao.quantization config class
    # Its constructor arguments (bools, ints, strings). set_inductor_config=False everywhere: True
    # sets torch._inductor.config flags process-wide (coordinate descent tuning, ...) and never
    # restores them, so every compiled candidate measured later in the same worker would compile
    # differently from one measured before it. The export writes the same argument.
    ao_kwargs: dict[str, Any] = {"set_inductor_config": False}

    @property
    def config_import_lines(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"from torchao.quantization import {self.ao_class}",)

    def unavailable_reason(self, device_type: str, capability: tuple[int, int] | None = None,
                           dtype: str | None = None) -> str | None:
        return torchao_reason() or self.device_reason(device_type, capability, dtype)

    def device_reason(self, device_type: str, capability: tuple[int, int] | None, dtype: str | None) -> str | None:
        return None

    def ao_config(self) -> Any:
        import torchao.quantization

        return getattr(torchao.quantization, self.ao_class)(**self.ao_kwargs)

    def build_config(self, compute_dtype: Any) -> Any:
        from transformers import TorchAoConfig

        return TorchAoConfig(self.ao_config())

    def config_source(self, compute_dtype: str) -> str:
        import json

        args = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in self.ao_kwargs.items())
        return f"TorchAoConfig({self.ao_class}({args}))"

    def cache_identity(self) -> str:
        return f"torchao {_installed('torchao') or '?'}"


def _capability_reason(what: str, needed: tuple[int, int], device_type: str, capability: tuple[int, int] | None) -> str | None:
    arch = {(8, 0): "Ampere", (8, 9): "Ada/Hopper"}[needed]
    if device_type != "cuda":
        return f"{what} runs on CUDA GPUs only (compute capability >= {needed[0]}.{needed[1]}, {arch} or newer)"
    if capability is not None and tuple(capability) < needed:
        return (f"{what} needs compute capability >= {needed[0]}.{needed[1]} ({arch} or newer); "
                f"this GPU has {capability[0]}.{capability[1]}")
    return None


class TorchAoInt8WeightOnly(_TorchAo):
    """int8 weights (per output row, symmetric), activations and matmul in the candidate's dtype.
    Runs wherever torch does (CPU and GPU)."""

    name = "torchao-int8wo"
    bytes_per_weight = 1.0  # one byte; the per-row scales left out
    precision_rank = 1  # per-row int8 weights like bnb-int8's, but the activations stay in 16/32 bits
    ao_class = "Int8WeightOnlyConfig"
    # Compiled with CUDA graphs at batch 1 on an H100, a 7B decoded 78.7 ms per token without
    # torchao's settings and 12.8 ms with them (bf16: 7.2 ms; BENCHMARKS §24). fp8 and int4 weight-only
    # are not given them: not measured with and without (fp8 compiled was already fast, §20).
    inductor_settings = TORCHAO_RECOMMENDED_INDUCTOR


class TorchAoFloat8(_TorchAo):
    """fp8 (e4m3) weights and dynamically quantized fp8 activations, per tensor, with fp8 matmuls
    (torch._scaled_mm): CUDA GPUs of compute capability >= 8.9 only (Ada, Hopper, Blackwell).
    Not the weight-only variant (Float8WeightOnlyConfig runs anywhere but computes in 16 bits, so
    it saves memory, not time)."""

    name = "torchao-fp8"
    bytes_per_weight = 1.0  # one byte; the per-tensor scale left out
    precision_rank = 3  # 3 mantissa bits, and the activations quantized too: below int8 weights, above 4-bit
    ao_class = "Float8DynamicActivationFloat8WeightConfig"

    def device_reason(self, device_type: str, capability: tuple[int, int] | None, dtype: str | None) -> str | None:
        return _capability_reason("fp8 dynamic activation + weight quantization", (8, 9), device_type, capability)


class TorchAoInt4WeightOnly(_TorchAo):
    """int4 weights (asymmetric, groups of 128) packed for tinygemm
    (torch.ops.aten._weight_int4pack_mm): CUDA GPUs of compute capability >= 8.0, bf16 only. The
    CPU int4 layout (Int4OpaqueTensor) is not offered: it is a torchao prototype and cannot be saved."""

    name = "torchao-int4wo"
    bytes_per_weight = 0.5  # 4 bits; the bf16 scale and zero point per 128 weights left out
    precision_rank = 5  # groups of 128 with a zero point: about nf4's fidelity, placed after it (64-weight blocks)
    ao_class = "Int4WeightOnlyConfig"
    ao_kwargs = {"group_size": 128, "int4_packing_format": "tile_packed_to_4d", **_TorchAo.ao_kwargs}

    def device_reason(self, device_type: str, capability: tuple[int, int] | None, dtype: str | None) -> str | None:
        reason = _capability_reason("int4 weight-only (tinygemm, tile_packed_to_4d)", (8, 0), device_type, capability)
        if reason is None and dtype is not None and dtype != "bf16":
            reason = f"int4 weight-only (tinygemm) computes in bf16 only, not {dtype}"
        return reason


register(TorchAoInt8WeightOnly())
register(TorchAoFloat8())
register(TorchAoInt4WeightOnly())
