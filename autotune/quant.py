"""Registry of weight-quantization methods. Add a method by subclassing and registering it; the
search space validates names against this registry, the loader asks it for the config, the
memory model for its bytes per weight, the quality reference for its precision rank, the
prequantized cache for what identifies a saved copy, and the transformers export for the config
it writes. What each serving system makes of it is that exporter's rule (autotune/export/)."""

from __future__ import annotations

import functools
import importlib.util
from abc import ABC, abstractmethod
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

    @abstractmethod
    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this method cannot run here (missing package, wrong device), or None."""

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

    def unavailable_reason(self, device_type: str) -> str | None:
        return None

    def build_config(self, compute_dtype: Any) -> None:
        return None


class _Bitsandbytes(QuantizationMethod):
    config_imports = ("BitsAndBytesConfig",)

    def unavailable_reason(self, device_type: str) -> str | None:
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
    precision_rank = 1
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
register(BnbFourBit("nf4", precision_rank=2))  # normal-float levels fit weights better than fp4's
register(BnbFourBit("fp4", precision_rank=3))
