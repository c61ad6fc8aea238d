"""Registry of weight-quantization methods. Add a method by subclassing and registering it; the
search space validates names against this registry and the loader asks it for the config."""

from __future__ import annotations

import functools
import importlib.util
from abc import ABC, abstractmethod
from typing import Any


class QuantizationMethod(ABC):
    """Contract: ``unavailable_reason`` is cheap and never imports heavy code paths that may fail;
    ``build_config`` returns what ``from_pretrained(quantization_config=...)`` takes, or None."""

    name: str
    bits_per_weight: float
    # Keep a quantized copy of the checkpoint after the first load and load later candidates from
    # it. Worth it where quantizing while loading is slow next to saving (bench/load_times.py).
    cache_prequantized: bool = False

    @abstractmethod
    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this method cannot run here (missing package, wrong device), or None."""

    @abstractmethod
    def build_config(self, compute_dtype: Any) -> Any | None: ...

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
    bits_per_weight = 16.0  # of the chosen dtype really; the memory model refines it

    def unavailable_reason(self, device_type: str) -> str | None:
        return None

    def build_config(self, compute_dtype: Any) -> None:
        return None


class _Bitsandbytes(QuantizationMethod):
    def unavailable_reason(self, device_type: str) -> str | None:
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install bitsandbytes)"
        return None


class BnbInt8(_Bitsandbytes):
    name = "bnb-int8"
    bits_per_weight = 8.0
    # H100, Qwen2.5-7B: 6-18 s to quantize while loading (the slow end under a memory cap), 1.6 s
    # from a saved int8 copy, 10 s to save it once. 4-bit methods load in ~2.5 s either way.
    cache_prequantized = True

    def build_config(self, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)


class BnbFourBit(_Bitsandbytes):
    bits_per_weight = 4.5  # 4-bit blocks plus one absmax per 64 weights

    def __init__(self, quant_type: str) -> None:
        self.quant_type = quant_type
        self.name = f"bnb-{quant_type}"

    def build_config(self, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_compute_dtype=compute_dtype
        )


register(NoQuantization())
register(BnbInt8())
register(BnbFourBit("nf4"))
register(BnbFourBit("fp4"))
