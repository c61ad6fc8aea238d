"""Generate-time knobs (issue 19): cache_implementation, compile_mode, prefill_chunk_size, stop_check.

Unit tests (validation, unsupported reasons on CPU, generate kwargs, memory model, exports), a CPU
fidelity check of chunked prefill through transformers, a short CPU study (slow) and a GPU test
(compile modes, offloaded caches)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autotune import knobs, kv_cache
from autotune.deploy import read_deployment
from autotune.errors import ExportError, SpaceError
from autotune.export import export
from autotune.loading import generate_kwargs
from autotune.memory_model import ModelShape, activation_bytes, kv_cache_bytes, lower_bound_gib, predicted_infeasible_reason
from autotune.space import load_space, space_digest, unsupported_reason
from autotune.spec import Candidate
from autotune.system import DeviceInfo
from tests.conftest import assert_ok, read_records, run_cli, write_space

EXPORT_INPUTS = Path(__file__).parent / "golden" / "export" / "inputs"
BASE = {"dtype": ["fp32"], "batch_size": [1], "max_length": [64], "new_tokens": 8}


def _cpu() -> DeviceInfo:
    from autotune.system import detect_device

    return detect_device("cpu")


def cand(**kw) -> Candidate:
    return Candidate(**{"dtype": "bf16", "batch_size": 4, "max_length": 1024, "new_tokens": 64, **kw})


def _space(tmp_path: Path, **kw):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, **kw}))
    return load_space(path)


# ------------------------------------------------------------------------------ space and candidate


def test_absent_knobs_keep_the_space_digest_and_candidates(tmp_path: Path) -> None:
    space = _space(tmp_path)
    assert space.knobs == ("dtype", "quantization", "attn_implementation", "compile", "batch_size", "max_length")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert space_digest(space) == space_digest(load_space(path))
    c = Candidate(dtype="fp32", batch_size=1, max_length=64, new_tokens=8)
    assert (c.cache_implementation, c.compile_mode, c.prefill_chunk_size) == (None, None, None)
    assert knobs.load_key_name(c) == "fp32|none|sdpa|False|None"
    assert generate_kwargs(c) == {"do_sample": False, "max_new_tokens": 8}
    assert generate_kwargs(c.model_copy(update={"compile": True})) == {"do_sample": False, "max_new_tokens": 8,
                                                                       "cache_implementation": "static"}


def test_knobs_are_sampled_when_set_and_values_checked(tmp_path: Path) -> None:
    space = _space(tmp_path, compile=[True, False], cache_implementation=["dynamic", "static"],
                   compile_mode=["reduce-overhead", "default"], prefill_chunk_size=[0, 8])
    assert space.knobs[-3:] == ("cache_implementation", "compile_mode", "prefill_chunk_size")
    with pytest.raises(SpaceError, match="cache_implementation.*bogus"):
        _space(tmp_path, cache_implementation=["bogus"])
    with pytest.raises(SpaceError, match="prefill_chunk_size"):
        _space(tmp_path, prefill_chunk_size=[-1])
    with pytest.raises(SpaceError, match="add true to compile"):
        _space(tmp_path, compile_mode=["default"])
    with pytest.raises(SpaceError, match="list reduce-overhead"):
        _space(tmp_path, compile=[True, False], compile_mode=["default"])
    with pytest.raises(ValueError):
        cand(cache_implementation="paged")


# ------------------------------------------------------------------------------ unsupported reasons


@pytest.mark.parametrize("changes, reason", [
    ({"cache_implementation": "offloaded"}, "offloaded KV cache needs an accelerator"),
    ({"cache_implementation": "offloaded_static"}, "needs an accelerator"),
    ({"cache_implementation": "dynamic", "compile": True}, "only with a static KV cache"),
    ({"cache_implementation": "quantized-fp8", "compile": True}, "only with a static KV cache"),
    ({"compile_mode": "default"}, "applies only with compile: true"),
    ({"prefill_chunk_size": 8, "max_pixels": 200704, "images_per_prompt": 1}, "cannot split the raw multimodal inputs"),
    ({"stop_check": "deferred"}, "stop_check deferred: CUDA only"),
])
def test_unsupported_reasons(changes: dict, reason: str) -> None:
    got = kv_cache.unsupported_reason(cand(**changes), "cpu")
    assert got is not None and reason in got


def test_supported_on_cpu() -> None:
    device = _cpu()
    for changes in ({"cache_implementation": "dynamic"}, {"cache_implementation": "static"}, {"prefill_chunk_size": 8},
                    {"compile_mode": "reduce-overhead"}, {"cache_implementation": "static", "prefill_chunk_size": 8},
                    {"prefill_chunk_size": 0, "max_pixels": 200704, "images_per_prompt": 1}):
        assert unsupported_reason(cand(dtype="fp32", **changes), device) is None, changes
    assert "compile" in unsupported_reason(cand(dtype="fp32", compile=True, compile_mode="default"), device)


def test_quantized_backends_are_unsupported_where_missing(monkeypatch) -> None:
    import transformers.cache_utils as cache_utils

    monkeypatch.setattr(kv_cache, "module_installed", lambda module: False)
    hqq = kv_cache.unsupported_reason(cand(cache_implementation="quantized-hqq"), "cuda")
    assert hqq == "cache_implementation quantized-hqq: the hqq package is not installed (pip install hqq)"
    assert "pip install optimum-quanto" in kv_cache.unsupported_reason(cand(cache_implementation="quantized-quanto"), "cuda")
    if hasattr(cache_utils, "Fp8QuantizedLayer"):
        assert kv_cache.unsupported_reason(cand(cache_implementation="quantized-fp8"), "cuda") is None
        monkeypatch.delattr(cache_utils, "Fp8QuantizedLayer")
    assert "(added in 5.24)" in kv_cache.unsupported_reason(cand(cache_implementation="quantized-fp8"), "cuda")


def test_deferred_stop_check_needs_transformers_to_have_it(monkeypatch) -> None:
    from transformers.generation import utils as generation_utils

    assert kv_cache.unsupported_reason(cand(stop_check="deferred"), "cuda") is None
    assert kv_cache.unsupported_reason(cand(stop_check="sync"), "cpu") is None
    monkeypatch.delattr(generation_utils, "DeferredStopCheck")
    assert "has no DeferredStopCheck" in kv_cache.unsupported_reason(cand(stop_check="deferred"), "cuda")


# ------------------------------------------------------------------------------ the stop check


def test_the_stop_check_is_switched_inside_that_models_generate_only() -> None:
    """transformers' DeferredStopCheck.is_supported, asked during decoding: True for CUDA inside
    the generate() of a model loaded with stop_check deferred; False for mps (where transformers
    itself defers) inside a sync model's, so sync stays sync should transformers defer on its own;
    transformers' own answers (CUDA no, mps yes) in a model loaded without the knob and outside
    generate(). (The deferred check itself records device events, which CPUs lack: its run is the
    GPU test below.)"""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation import utils as generation_utils

    from autotune.loading import load_model
    from autotune.models import resolve_model

    class Probe(LogitsProcessor):
        """Asks, during a decode step, what generate() would have asked after the prefill."""

        def __init__(self):
            self.answers = set()

        def __call__(self, input_ids, scores):
            for device in ("cuda", "mps"):
                self.answers.add((device, generation_utils.DeferredStopCheck.is_supported(torch.device(device), None, False, False)))
            return scores

    ref = resolve_model("tiny-qwen2", random_weights=True)
    plain = Candidate(dtype="fp32", batch_size=1, max_length=16, new_tokens=4)
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    answers = {}
    for mode in ("deferred", "sync", None):
        model, _ = load_model(ref, plain.model_copy(update={"stop_check": mode}), "cpu")
        probe = Probe()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
                                 logits_processor=LogitsProcessorList([probe]))
        assert out.shape == (1, 12)
        answers[mode] = dict(probe.answers)
    assert answers == {"deferred": {"cuda": True, "mps": True}, "sync": {"cuda": False, "mps": False},
                       None: {"cuda": False, "mps": True}}
    # outside any generate(): transformers' own answers
    assert generation_utils.DeferredStopCheck.is_supported(torch.device("cuda"), None, False, False) is False
    assert generation_utils.DeferredStopCheck.is_supported(torch.device("mps"), None, False, False) is True
    # transformers' own conditions still hold inside: an assistant model never defers
    with kv_cache.stop_check_mode("deferred"):
        assert generation_utils.DeferredStopCheck.is_supported(torch.device("cuda"), None, False, True) is False
    with pytest.raises(ValueError, match="use one of sync, deferred"):
        with kv_cache.stop_check_mode("later"):
            pass


def test_sync_and_deferred_twins_share_their_quality() -> None:
    """The stop check changes when generate() stops, not which tokens it makes: one quality key."""
    from autotune.study.reference import _quality_key_name

    c = cand()
    assert _quality_key_name(c.model_copy(update={"stop_check": "deferred"})) == _quality_key_name(c)
    assert _quality_key_name(c.model_copy(update={"stop_check": "sync"})) == _quality_key_name(c)
    assert _quality_key_name(c.model_copy(update={"compile_mode": "default"})) != _quality_key_name(c)


def test_stop_check_export() -> None:
    py = export(_config(stop_check="deferred"), "transformers").text
    assert "from autotune.kv_cache import set_stop_check" in py and '    set_stop_check(model, "deferred")' in py
    compile(py, "snippet", "exec")
    sync = export(_config(stop_check="sync"), "transformers").text
    assert "set_stop_check" not in sync and "stop=sync" in sync
    for server in ("vllm", "sglang", "tgi"):
        for mode, how in (("deferred", "one step late"), ("sync", "after every step")):
            text = export(_config(stop_check=mode), server).text
            assert f"reading its stop flag {how}" in text and "nothing to set" in text, (server, mode)
    assert "stop_check" not in export(_config(), "transformers").extra_files[".best.yaml"]


# ------------------------------------------------------------------------------ generate kwargs


def test_generate_kwargs_and_generation_config() -> None:
    c = cand(cache_implementation="static")
    assert generate_kwargs(c) == {"do_sample": False, "max_new_tokens": 64, "cache_implementation": "static",
                                  "disable_compile": True}
    c = cand(compile=True, cache_implementation="offloaded_static", compile_mode="default", prefill_chunk_size=256)
    assert generate_kwargs(c) == {"do_sample": False, "max_new_tokens": 64, "cache_implementation": "offloaded_static",
                                  "prefill_chunk_size": 256}
    assert kv_cache.generation_config_settings(c) == {"compile_config": {"mode": "default"}}
    q = cand(cache_implementation="quantized-hqq", prefill_chunk_size=0)
    assert generate_kwargs(q) == {"do_sample": False, "max_new_tokens": 64, "cache_implementation": "quantized"}
    assert kv_cache.generation_config_settings(q) == {"cache_implementation": "quantized", "cache_config": {"backend": "hqq"}}
    json.dumps(generate_kwargs(c)), json.dumps(kv_cache.generation_config_settings(c))  # best.yaml holds JSON only
    # compile_mode of an uncompiled candidate sets nothing
    assert kv_cache.generation_config_settings(cand(compile_mode="reduce-overhead")) == {}


def test_apply_generation_config_builds_compile_config_and_fresh_dicts() -> None:
    from transformers import CompileConfig, GenerationConfig

    class Model:
        generation_config = GenerationConfig()

    m = Model()
    kv_cache.apply_generation_config(m, cand(compile=True, compile_mode="default", cache_implementation="static"))
    assert isinstance(m.generation_config.compile_config, CompileConfig) and m.generation_config.compile_config.mode == "default"
    m2 = Model()
    m2.generation_config = GenerationConfig()
    kv_cache.apply_generation_config(m2, cand(cache_implementation="quantized-fp8"))
    first = m2.generation_config.cache_config
    kv_cache.apply_generation_config(m2, cand(cache_implementation="quantized-fp8"))
    assert first == m2.generation_config.cache_config == {"backend": "fp8"} and first is not m2.generation_config.cache_config


# ------------------------------------------------------------------------------ memory model


SHAPE = ModelShape(linear_params=6_500_000_000, other_params=1_000_000_000, layers=28, heads=28, kv_heads=4, head_dim=128,
                   hidden=3584, intermediate=18944, vocab=152064)


def test_memory_model_kv_cache_and_chunked_activations() -> None:
    plain = cand(batch_size=64, max_length=8192)
    assert kv_cache_bytes(SHAPE, plain) == 2 * 28 * 4 * 128 * 2 * 64 * 8192
    assert kv_cache_bytes(SHAPE, plain.model_copy(update={"cache_implementation": "offloaded"})) == 0
    assert kv_cache_bytes(SHAPE, plain.model_copy(update={"cache_implementation": "offloaded_static"})) == 0
    assert kv_cache_bytes(SHAPE, plain.model_copy(update={"cache_implementation": "quantized-fp8"})) == kv_cache_bytes(SHAPE, plain) / 2
    assert kv_cache_bytes(SHAPE, plain.model_copy(update={"cache_implementation": "quantized-hqq"})) == kv_cache_bytes(SHAPE, plain) / 4
    assert kv_cache_bytes(SHAPE, plain.model_copy(update={"cache_implementation": "static"})) == kv_cache_bytes(SHAPE, plain)
    # 64 x 8192 tokens of KV (56 GiB) exceed 24 GiB; offloaded, only the weights count on the GPU
    assert predicted_infeasible_reason(SHAPE, plain, 24.0) is not None
    assert predicted_infeasible_reason(SHAPE, plain.model_copy(update={"cache_implementation": "offloaded"}), 24.0) is None
    assert lower_bound_gib(SHAPE, plain.model_copy(update={"cache_implementation": "offloaded"})) < 15
    eager = plain.model_copy(update={"attn_implementation": "eager"})
    chunked = eager.model_copy(update={"prefill_chunk_size": 512})
    assert activation_bytes(SHAPE, chunked) < activation_bytes(SHAPE, eager) / 10
    assert activation_bytes(SHAPE, eager.model_copy(update={"prefill_chunk_size": 0})) == activation_bytes(SHAPE, eager)
    assert activation_bytes(SHAPE, eager.model_copy(update={"prefill_chunk_size": 10**6})) == activation_bytes(SHAPE, eager)


def test_chunk_size_is_not_a_monotone_shape_knob() -> None:
    """0 (no chunking) needs the most memory: the infeasible shortcut compares equal chunk sizes only."""
    assert "prefill_chunk_size" not in knobs.MONOTONE_SHAPE_KNOBS and "prefill_chunk_size" in knobs.FIXED_SHAPE_KNOBS
    a, b = cand(prefill_chunk_size=0), cand(prefill_chunk_size=512)
    assert not knobs.same_load_and_request(a, b)
    assert knobs.boundary_shape(a) != knobs.boundary_shape(b)
    assert knobs.boundary_shape(cand()) == (1024, 64, None, None, None, None, None)


# ------------------------------------------------------------------------------ exports


def _config(**settings):
    base = read_deployment(EXPORT_INPUTS / "text-h100.yaml")
    return base.model_copy(update={"settings": base.settings.model_copy(update=settings),
                                   "generate_kwargs": generate_kwargs(base.settings.model_copy(update=settings))})


def test_exports_of_generate_knobs() -> None:
    cfg = _config(cache_implementation="quantized-fp8", prefill_chunk_size=512)
    vllm = export(cfg, "vllm").text
    assert "kv-cache-dtype: fp8" in vllm and "enable-chunked-prefill: true" in vllm
    assert f"max-num-batched-tokens: {512 * cfg.settings.batch_size}" in vllm
    sglang = export(cfg, "sglang").text
    assert "kv-cache-dtype: fp8_e4m3" in sglang and f"chunked-prefill-size: {512 * cfg.settings.batch_size}" in sglang
    tgi = export(cfg, "tgi").text
    assert "KV_CACHE_DTYPE=fp8_e4m3fn" in tgi and f"MAX_BATCH_PREFILL_TOKENS={512 * cfg.settings.batch_size}" in tgi
    py = export(cfg, "transformers")
    assert '"prefill_chunk_size": 512' in py.text and 'model.generation_config.cache_config = {"backend": "fp8"}' in py.text
    compile(py.text, "snippet", "exec")
    assert "chunked-prefill-size: -1" in export(_config(prefill_chunk_size=0), "sglang").text


def test_compile_mode_export_and_unexportable_caches() -> None:
    cfg = _config(compile=True, compile_mode="default")
    py = export(cfg, "transformers").text
    assert 'CompileConfig(mode="default")' in py and "CompileConfig" in py.split("MODEL =")[0]
    compile(py, "snippet", "exec")
    assert "compile mode default" in export(cfg, "vllm").text
    with pytest.raises(ExportError, match="cache_implementation offloaded cannot be exported to vllm.*allow-approximate"):
        export(_config(cache_implementation="offloaded"), "vllm")
    with pytest.raises(ExportError, match="quantized-hqq cannot be exported to tgi"):
        export(_config(cache_implementation="quantized-hqq"), "tgi")
    assert "kv-cache-dtype: fp8" in export(_config(cache_implementation="quantized-hqq"), "vllm", allow_approximate=True).text


def test_kwargs_file_leaves_unset_knobs_out() -> None:
    text = export(_config(), "transformers").extra_files[".best.yaml"]
    assert "cache_implementation" not in text and "prefill_chunk_size" not in text
    text = export(_config(prefill_chunk_size=512), "transformers").extra_files[".best.yaml"]
    assert "prefill_chunk_size: 512" in yaml.safe_dump(yaml.safe_load(text)["settings"])


# ------------------------------------------------------------------------------ fidelity on CPU (real weights)


def test_chunked_prefill_and_caches_keep_the_greedy_tokens_on_cpu() -> None:
    """The embedded SmolLM2-135M: chunked prefill with a dynamic and a static cache, and the fp8
    quantized cache where transformers has it, generate the unchunked dynamic run's tokens."""
    import torch
    import transformers.cache_utils as cache_utils

    from autotune.loading import load_model
    from autotune.models import resolve_model

    ref = resolve_model(None)
    base = Candidate(dtype="fp32", batch_size=2, max_length=48, new_tokens=8)
    model, _ = load_model(ref, base, "cpu")
    ids = torch.randint(0, 32000, (2, 40), generator=torch.Generator().manual_seed(0))
    pad = model.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    def run(c: Candidate):
        kv_cache.apply_generation_config(model, c)
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, min_new_tokens=8,
                                  **generate_kwargs(c))

    expected = run(base)
    variants = [base.model_copy(update={"prefill_chunk_size": 8}),
                base.model_copy(update={"cache_implementation": "static"}),
                base.model_copy(update={"cache_implementation": "static", "prefill_chunk_size": 8})]
    if hasattr(cache_utils, "Fp8QuantizedLayer"):
        variants.append(base.model_copy(update={"cache_implementation": "quantized-fp8", "prefill_chunk_size": 8}))
    for c in variants:
        assert torch.equal(run(c), expected), c.label()


# ------------------------------------------------------------------------------ a study on CPU


@pytest.mark.slow
def test_cpu_study_with_generate_knobs(tmp_path: Path) -> None:
    import transformers.cache_utils as cache_utils

    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1],
                        cache_implementation=["dynamic", "static", "quantized-fp8", "offloaded"], prefill_chunk_size=[0, 8],
                        stop_check=["sync", "deferred"])
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--space", str(space), "--trials", "16", "--sampler", "grid", "--out", str(out),
                      "--device", "cpu", "--confirm-top", "0"))
    records = [r for r in read_records(out) if r.state != "duplicate"]
    assert len(records) == 16, [(r.state, r.candidate.label()) for r in records]
    for r in records:  # the deferred stop check is answered without a load on CPU
        if r.candidate.stop_check == "deferred":
            assert r.state == "unsupported", r.outcome.reason
            if r.candidate.cache_implementation != "offloaded":  # else the cache's own reason comes first
                assert "stop_check deferred: CUDA only" in r.outcome.reason, r.outcome.reason
    recs = {(r.candidate.cache_implementation, r.candidate.prefill_chunk_size): r for r in records
            if r.candidate.stop_check == "sync"}
    assert len(recs) == 8
    for kind in ("dynamic", "static"):
        for chunk in (0, 8):
            assert recs[(kind, chunk)].state == "measured", recs[(kind, chunk)].outcome.reason
    for chunk in (0, 8):
        assert recs[("offloaded", chunk)].state == "unsupported"
        assert "needs an accelerator" in recs[("offloaded", chunk)].outcome.reason
        fp8 = recs[("quantized-fp8", chunk)]
        if hasattr(cache_utils, "Fp8QuantizedLayer"):
            assert fp8.state == "measured", fp8.outcome.reason
        else:
            assert fp8.state == "unsupported" and "added in 5.24" in fp8.outcome.reason
    best = read_deployment(out / "best.yaml")
    assert best.generate_kwargs == generate_kwargs(best.settings)


# ------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("mode", kv_cache.COMPILE_MODES)
def test_compile_modes_on_gpu(mode: str) -> None:
    """Each compile mode compiles generate() on a tiny random model, with the same tokens as eager."""
    import torch

    from autotune.loading import load_model
    from autotune.models import resolve_model

    ref = resolve_model("tiny-qwen2", random_weights=True)
    eager = Candidate(dtype="bf16", batch_size=2, max_length=48, new_tokens=8, cache_implementation="static")
    compiled = eager.model_copy(update={"compile": True, "compile_mode": mode})
    model, _ = load_model(ref, compiled, "cuda:0")
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0)).to("cuda:0")
    with torch.inference_mode():
        out = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(compiled))
        out = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(compiled))
        ref_out = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(eager))
    assert out.shape == (2, 48)
    assert model.generation_config.compile_config.mode == mode
    assert (out == ref_out).float().mean() > 0.9  # bf16 compiled kernels may flip a near-tie


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["offloaded", "offloaded_static"])
def test_offloaded_caches_on_gpu(kind: str) -> None:
    import torch

    from autotune.loading import load_model
    from autotune.models import resolve_model

    ref = resolve_model("tiny-qwen2", random_weights=True)
    c = Candidate(dtype="bf16", batch_size=2, max_length=48, new_tokens=8, cache_implementation=kind, prefill_chunk_size=16)
    assert unsupported_reason(c, _gpu()) is None
    model, _ = load_model(ref, c, "cuda:0")
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0)).to("cuda:0")
    plain = c.model_copy(update={"cache_implementation": "dynamic", "prefill_chunk_size": 0})
    with torch.inference_mode():
        out = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(c))
        expected = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(plain))
    assert torch.equal(out, expected)


@pytest.mark.gpu
def test_deferred_stop_check_on_gpu(monkeypatch) -> None:
    """Compiled with CUDA graphs, stop_check deferred generates the sync check's tokens, and its
    decode loop goes through transformers' DeferredStopCheck (not the synchronising StopCheck)."""
    import torch
    from transformers.generation import utils as generation_utils

    from autotune.loading import load_model
    from autotune.models import resolve_model

    calls = {"deferred": 0}
    stock_call = generation_utils.DeferredStopCheck.__call__

    def counting_call(self, *args, **kwargs):
        calls["deferred"] += 1
        return stock_call(self, *args, **kwargs)

    monkeypatch.setattr(generation_utils.DeferredStopCheck, "__call__", counting_call)
    ref = resolve_model("tiny-qwen2", random_weights=True)
    sync = Candidate(dtype="bf16", batch_size=2, max_length=48, new_tokens=8, compile=True, stop_check="sync")
    deferred = sync.model_copy(update={"stop_check": "deferred"})
    assert unsupported_reason(deferred, _gpu()) is None
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0)).to("cuda:0")
    outs = {}
    for c in (sync, deferred):
        model, _ = load_model(ref, c, "cuda:0")
        with torch.inference_mode():
            model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(c))  # compiles
            before = calls["deferred"]
            outs[c.stop_check] = model.generate(input_ids=ids, min_new_tokens=8, **generate_kwargs(c))
        assert (calls["deferred"] > before) == (c.stop_check == "deferred")
    assert outs["deferred"].shape == (2, 48)
    assert torch.equal(outs["deferred"], outs["sync"])


def _gpu() -> DeviceInfo:
    from autotune.system import detect_device

    return detect_device("cuda:0")
