"""One static KV cache allocation that every batch size of a server shares, at a fixed address.

transformers' generate() builds a new StaticCache in every call and marks its tensors static
(`torch._dynamo.mark_static_address`). A decode step compiled with CUDA graphs (reduce-overhead)
replays its recorded graph only while those tensors sit where they sat at recording; when the
caching allocator hands the new cache another address, inductor's cudagraph trees record the graph
again (a warm-up run, a capture and two synchronisations, inside the request's latency). A server
that runs batches of one size back to back tends to get the same blocks back; one that alternates
sizes (1, 4, 2, 16 …) need not.

A server keeps its KV cache instead. KvArena allocates the cache once, for the largest batch size,
and hands each batch size a StaticCache whose layers are views of the first rows of that allocation
(`keys[:rows]`: contiguous, starting at the same address), reset (zeroed in place) before each use
and passed to generate() as its cache (`cache_kwarg`). Under a memory cap there is room for one cache of
the largest batch, not one per size, which is why the sizes share it.

Only transformers' plain StaticCache of full-attention layers is arranged so (`supports`); other
caches (offloaded, quantized, sliding-window layers) are left to generate(). An early-initialised
cache reports its length as a device tensor, so generate()'s prefill waits for the device once
(after the reset's zeroing), as transformers' own early-initialised cache (chunked prefill) does;
between a server's batches the device is idle, so the wait is short.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _kept_cache_class():
    """StaticCache that generate() never takes for the caller's: handed in as a Cache object, generate()
    marks it `_is_user_defined` and so "returned" to the caller, and then refuses the deferred stop
    check on a cache it cannot crop (5.17) or crops it every step (5.25). The arena's cache is
    reset before every batch, so nothing is owed to the caller: the flag stays False, and generate()
    runs as on its own cache."""
    from transformers import StaticCache

    class KeptStaticCache(StaticCache):
        _is_user_defined = property(lambda self: False, lambda self, value: None)

    return KeptStaticCache


class KvArena:
    """Static KV caches of up to `max_rows` rows and `max_cache_tokens` tokens, one allocation."""

    def __init__(self, model, max_rows: int, max_cache_tokens: int) -> None:
        import torch

        # transformers' own shape for an early-initialised cache (what generate() does for chunked
        # prefill), in the model's dtype as there: a quantized model's cache is in its compute dtype.
        shape = model._get_static_cache_init_shape()
        if shape is None:
            raise ValueError("this model's static cache cannot be initialised ahead of time (layers on several devices)")
        self._model, self.max_rows, self.max_cache_tokens = model, max_rows, max_cache_tokens
        num_heads, head_dim = shape
        self._cache_class = _kept_cache_class()
        with torch.inference_mode(False):  # normal tensors (see cache())
            self._full = self._cache_class(config=model.config.get_text_config(decoder=True), max_cache_len=max_cache_tokens)
            self._full.early_initialization(batch_size=max_rows, num_heads=num_heads, head_dim=head_dim,
                                            dtype=model.dtype, device=model.device)
        self._caches: dict[int, Any] = {max_rows: self._full}
        self.generates_served = 0  # generate() calls that ran on the arena (serve_from)

    @staticmethod
    def supports(model, generate_kwargs: dict) -> bool:
        """Whether generate() would build a plain StaticCache of full-attention layers for this model
        (asked of StaticCache itself: a config without layer_types may still have sliding windows)."""
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        if generate_kwargs.get("cache_implementation") != "static":
            return False
        layers = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=1).layers  # allocated lazily
        return all(type(layer) is StaticLayer for layer in layers)

    def cache(self, rows: int):
        """The StaticCache of `rows` rows, zeroed: views of the first `rows` rows of the allocation."""
        import torch

        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"a batch of {rows} rows does not fit the KV arena of {self.max_rows} rows")
        cache = self._caches.get(rows)
        if cache is None:
            # Normal tensors, not inference tensors, even when first asked for inside generate()'s
            # inference mode: reset() zeroes them in place, which an inference tensor refuses outside it.
            with torch.inference_mode(False):
                cache = self._caches[rows] = self._view(rows)
        cache.reset()
        return cache

    def _view(self, rows: int):
        import torch

        cache = self._cache_class(config=self._model.config.get_text_config(decoder=True), max_cache_len=self.max_cache_tokens)
        for layer, full in zip(cache.layers, self._full.layers, strict=True):
            # What StaticLayer.lazy_initialization sets, with views in place of new tensors.
            # (transformers 5.17 also keeps the dtype; 5.25 does not.)
            for name in ("dtype", "device", "num_heads", "k_head_dim", "v_head_dim"):
                if hasattr(full, name):
                    setattr(layer, name, getattr(full, name))
            layer.batch_size = rows
            layer.keys, layer.values = full.keys[:rows], full.values[:rows]
            layer.cumulative_length = layer.cumulative_length.to(full.device)
            for tensor in (layer.keys, layer.values, layer.cumulative_length):
                torch._dynamo.mark_static_address(tensor)
            layer.is_initialized = True
        return cache


def cache_kwarg(model) -> str:
    """The name generate() takes a Cache object by: `cache` from transformers 5.2x (which deprecates
    `past_key_values` with a warning), `past_key_values` in 5.17."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@contextlib.contextmanager
def serve_from(model, arena: KvArena) -> Iterator[KvArena]:
    """Inside the block every generate() of the model that would build a static cache that the
    arena holds (its rows and its prompt plus new tokens fit) runs on the arena's cache for its
    rows instead: the callers (the measurement, the replay) pass generate() the same arguments as
    without it. Any other generate() runs as it would. `model.generate` is wrapped on the instance
    and unwrapped when the block ends."""
    original, name = model.generate, cache_kwarg(model)

    def one_sequence_per_row(kwargs: dict) -> bool:  # beams and returned sequences multiply the cache's rows
        config = model.generation_config
        return all((kwargs.get(k) if kwargs.get(k) is not None else getattr(config, k, 1) or 1) == 1
                   for k in ("num_beams", "num_return_sequences"))

    def generate(*args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if (kwargs.get("cache_implementation") == "static" and name not in kwargs and input_ids is not None
                and "max_new_tokens" in kwargs and one_sequence_per_row(kwargs)
                and input_ids.shape[0] <= arena.max_rows
                and input_ids.shape[1] + kwargs["max_new_tokens"] - 1 <= arena.max_cache_tokens):
            # (the last token is never fed back: generate() sizes its own cache at max_length - 1.)
            # generate() refuses a cache and a cache_implementation together; None, not left out, so
            # that a cache_implementation in the model's generation_config is not filled back in.
            kwargs = {**kwargs, "cache_implementation": None, name: arena.cache(input_ids.shape[0])}
            arena.generates_served += 1
        return original(*args, **kwargs)

    had_own = "generate" in model.__dict__
    model.generate = generate
    try:
        yield arena
    finally:
        if had_own:
            model.generate = original
        else:
            del model.generate
