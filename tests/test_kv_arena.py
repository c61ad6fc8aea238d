"""One static KV cache allocation for every batch size (autotune/kv_arena.py): the same tokens as
generate()'s own cache at every size, one address, and generate() itself again after the block."""

from __future__ import annotations

import pytest
import torch

from autotune.kv_arena import KvArena, cache_kwarg, serve_from
from autotune.models import BUNDLED_CONFIG_DIR

STATIC = {"do_sample": False, "cache_implementation": "static", "disable_compile": True, "pad_token_id": 0}
SIZES = (4, 1, 2, 4, 3, 1)  # alternating, as a server's batches come


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / "tiny-qwen2.json")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _generate(model, rows: int, seed: int, new_tokens: int = 8, prompt: int = 10, **more) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 200, (rows, prompt), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # a left-padded row, as the server's batches have
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, **STATIC, **more)


def test_every_batch_size_runs_on_one_allocation_and_generates_what_its_own_cache_does(tiny_model) -> None:
    reference = [_generate(tiny_model, rows, seed) for seed, rows in enumerate(SIZES)]
    arena = KvArena(tiny_model, max_rows=4, max_cache_tokens=32)
    with serve_from(tiny_model, arena):
        served = [_generate(tiny_model, rows, seed) for seed, rows in enumerate(SIZES)]
        keys = {rows: arena.cache(rows).layers[-1].keys for rows in (1, 2, 3, 4)}
    assert all(torch.equal(a, b) for a, b in zip(reference, served))
    assert arena.generates_served == len(SIZES)
    full = arena.cache(4).layers[-1].keys
    assert {k.data_ptr() for k in keys.values()} == {full.data_ptr()}  # views of the first rows
    assert [k.shape[0] for k in keys.values()] == [1, 2, 3, 4]
    assert "generate" not in tiny_model.__dict__  # the class's generate() again


def test_a_cache_not_reset_between_batches_generates_other_tokens(tiny_model, monkeypatch) -> None:
    """What reset() is for: a cache that keeps the last batch's length writes the next batch's keys
    after it, and the tokens change (the equality above can fail)."""
    reference = [_generate(tiny_model, rows, seed) for seed, rows in enumerate((2, 2))]
    arena = KvArena(tiny_model, max_rows=2, max_cache_tokens=48)
    monkeypatch.setattr(type(arena.cache(2)), "reset", lambda self: None)
    with serve_from(tiny_model, arena):
        served = [_generate(tiny_model, rows, seed) for seed, rows in enumerate((2, 2))]
    assert torch.equal(reference[0], served[0]) and not torch.equal(reference[1], served[1])


def test_a_batch_the_arena_cannot_hold_runs_on_generates_own_cache(tiny_model) -> None:
    arena = KvArena(tiny_model, max_rows=2, max_cache_tokens=16)
    with serve_from(tiny_model, arena):
        wide = _generate(tiny_model, 3, 0)  # more rows than the arena has
        long = _generate(tiny_model, 1, 1, new_tokens=6, prompt=12)  # 17 tokens cached > 16
        beams = _generate(tiny_model, 1, 3, num_beams=2)  # two rows of cache per request
        fits = _generate(tiny_model, 2, 2, new_tokens=5, prompt=12)  # 16 cached: the 17th token is never fed back
    assert arena.generates_served == 1
    assert wide.shape == (3, 18) and long.shape == (1, 18) and fits.shape == (2, 17) and beams.shape == (1, 18)
    with pytest.raises(ValueError, match="does not fit the KV arena of 2 rows"):
        arena.cache(3)


def test_generate_treats_the_arenas_cache_as_its_own(tiny_model, monkeypatch) -> None:
    """A Cache handed to generate() is the caller's, "returned" to it, and generate() then refuses
    the deferred stop check on a cache it cannot crop (transformers 5.17) or crops it every step
    (5.25): the arena's cache must read as generate()'s own, or `stop_check: deferred` would be
    measured as sync. And a cache_implementation in the model's generation_config is not filled
    back in beside the arena's cache (generate() refuses both)."""
    from transformers.generation import utils as generation_utils

    seen: list[tuple[bool, bool]] = []
    stock = generation_utils.DeferredStopCheck.is_supported

    def recording(device, cache, cache_is_returned, is_assistant):
        seen.append((cache_is_returned, stock(torch.device("mps"), cache, cache_is_returned, is_assistant)))
        return False

    monkeypatch.setattr(generation_utils.DeferredStopCheck, "is_supported", staticmethod(recording))
    _generate(tiny_model, 2, 0)
    arena = KvArena(tiny_model, max_rows=2, max_cache_tokens=32)
    monkeypatch.setattr(tiny_model.generation_config, "cache_implementation", "static")
    with serve_from(tiny_model, arena):
        _generate(tiny_model, 2, 0)
    assert arena.generates_served == 1
    assert seen == [(False, True), (False, True)]  # not returned, so the deferred check is allowed, as on its own


def test_only_a_plain_static_cache_of_full_attention_layers_is_kept(tiny_model) -> None:
    assert KvArena.supports(tiny_model, {"cache_implementation": "static"})
    assert not KvArena.supports(tiny_model, {})  # generate()'s dynamic cache
    assert not KvArena.supports(tiny_model, {"cache_implementation": "offloaded_static"})
    sliding = tiny_model.config.__class__(**{**tiny_model.config.to_dict(), "use_sliding_window": True, "sliding_window": 8,
                                             "layer_types": ["sliding_attention", "full_attention"]})
    assert sliding.layer_types[0] == "sliding_attention"
    assert not KvArena.supports(type("M", (), {"config": sliding})(), {"cache_implementation": "static"})
    from transformers import MistralConfig

    # No layer_types at all: StaticCache infers sliding-window layers from sliding_window itself.
    mistral = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, sliding_window=8, vocab_size=100)
    assert not KvArena.supports(type("M", (), {"config": mistral})(), {"cache_implementation": "static"})
    assert cache_kwarg(tiny_model) in ("cache", "past_key_values")


@pytest.mark.gpu
def test_a_compiled_decode_on_the_arena_records_no_graph_when_batch_sizes_alternate() -> None:
    """The point of the arena on CUDA graphs: once each batch size has run (and recorded), batches of
    alternating sizes replay their graphs: the KV cache they read never moves. generate()'s own cache
    (a new one per call) is counted too, for the log: whether it lands elsewhere is the allocator's."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.generation import CompileConfig

    from autotune.measure.graph_recordings import recordings

    torch._dynamo.reset()
    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / "tiny-qwen2.json")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cuda:0").eval()
    model.generation_config.compile_config = CompileConfig(mode="reduce-overhead")
    kwargs = {"do_sample": False, "cache_implementation": "static", "pad_token_id": 0, "max_new_tokens": 6, "min_new_tokens": 6}
    sizes = (1, 4, 2, 8)

    def run(rows: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 200, (rows, 20), generator=generator).to("cuda:0")
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        torch.cuda.synchronize()

    # Room for a graph per size and cache (past dynamo's limit, decode would run eagerly and record
    # nothing, and the assertion below would hold for the wrong reason).
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        for seed, rows in enumerate(sizes * 2):  # generate()'s own cache; its length fixed by the first call
            run(rows, seed)
        before = recordings()
        for seed, rows in enumerate((1, 8, 2, 4, 1, 8, 4, 2) * 2):
            run(rows, 100 + seed)
        own = (recordings() - before).recordings
        arena = KvArena(model, max_rows=8, max_cache_tokens=model.__dict__["_previous_max_cache_length"])
        with serve_from(model, arena):
            warm = recordings()
            for seed, rows in enumerate(sizes * 2):  # each size records against the arena
                run(rows, 200 + seed)
            recorded_at_start = (recordings() - warm).recordings
            before = recordings()
            for seed, rows in enumerate((1, 8, 2, 4, 1, 8, 4, 2) * 2):
                run(rows, 300 + seed)
            kept = (recordings() - before).recordings
    print(f"CUDA graphs recorded over 16 alternating batches: generate()'s own cache {own}, the arena {kept} "
          f"(the arena's start-up: {recorded_at_start})")
    assert recorded_at_start > 0  # CUDA graphs are in use: the cache moved onto the arena and was recorded there
    assert arena.generates_served == 24 and kept == 0
