"""torchao weight quantization (torchao-int8wo, torchao-fp8, torchao-int4wo): what each method says
about this machine before loading (faked versions and GPUs), the loader's error when the weights
cannot be converted, the exports, and (slow) a CPU study of the embedded model through the real
worker with the int8 quality against the reference. Tests that load need torchao (skipped without)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from autotune import quant
from autotune.errors import ExportError
from autotune.export import export
from autotune.quant import QUANTIZATION_METHODS, get_method
from autotune.space import unsupported_reason
from autotune.spec import Candidate
from autotune.system import DeviceInfo
from tests.conftest import assert_ok, read_records, run_cli, write_space

TORCHAO = ("torchao-int8wo", "torchao-fp8", "torchao-int4wo")
HAS_TORCHAO = quant.torchao_reason() is None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason=f"torchao unusable here: {quant.torchao_reason()}")

CPU = DeviceInfo("cpu", "cpu", "x", 16.0, True)
A100 = DeviceInfo("cuda:0", "cuda", "A100", 80.0, True, (8, 0))
T4 = DeviceInfo("cuda:0", "cuda", "T4", 16.0, False, (7, 5))
H200 = DeviceInfo("cuda:0", "cuda", "H200", 141.0, True, (9, 0))
UNKNOWN_GPU = DeviceInfo("cuda:0", "cuda", "?", 80.0, True)  # e.g. a study reopened from its fingerprint


def _cand(**kw) -> Candidate:
    return Candidate(**{"dtype": "bf16", "batch_size": 1, "max_length": 32, "new_tokens": 4, **kw})


@pytest.fixture
def versions(monkeypatch: pytest.MonkeyPatch):
    """Fake the installed torchao and torch versions (None: not installed)."""
    def set_versions(torchao: str | None, torch: str = "2.13.0+cpu") -> None:
        installed = {"torchao": torchao, "torch": torch}
        monkeypatch.setattr(quant, "_installed", lambda package: installed.get(package))
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **k: (object() if torchao else None) if name == "torchao" else real(name, *a, **k))
    return set_versions


# ------------------------------------------------------------------------------ registry facts


def test_registry_facts() -> None:
    ranks = sorted(QUANTIZATION_METHODS, key=lambda name: QUANTIZATION_METHODS[name].precision_rank)
    assert ranks == ["none", "torchao-int8wo", "bnb-int8", "torchao-fp8", "bnb-nf4", "torchao-int4wo", "bnb-fp4"]
    assert [get_method(n).bytes_per_weight for n in TORCHAO] == [1.0, 1.0, 0.5]
    assert not any(get_method(n).cache_prequantized for n in TORCHAO)
    assert get_method("torchao-int4wo").config_source("torch.bfloat16") == (
        'TorchAoConfig(Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d", set_inductor_config=False))')
    assert get_method("torchao-fp8").config_import_lines == (
        "from torchao.quantization import Float8DynamicActivationFloat8WeightConfig",)


def test_memory_model_uses_the_registrys_bytes_per_weight() -> None:
    from autotune.memory_model import ModelShape, weight_bytes

    shape = ModelShape(linear_params=1000, other_params=10, layers=2, heads=2, kv_heads=2, head_dim=64, hidden=128,
                       intermediate=256, vocab=100)
    for quantization, linear in (("torchao-int8wo", 1.0), ("torchao-fp8", 1.0), ("torchao-int4wo", 0.5)):
        assert weight_bytes(shape, _cand(quantization=quantization)) == 1000 * linear + 10 * 2


# ------------------------------------------------------------------------------ unavailable_reason (faked)


def test_torchao_missing_too_old_or_too_new_for_torch(versions) -> None:
    versions(None)
    for name in TORCHAO:
        assert get_method(name).unavailable_reason("cpu") == "torchao is not installed (pip install torchao)"
    assert unsupported_reason(_cand(quantization="torchao-int8wo"), CPU) == (
        "torchao-int8wo: torchao is not installed (pip install torchao)")
    versions("0.14.1")
    assert "older than transformers accepts (>= 0.15" in get_method("torchao-int8wo").unavailable_reason("cpu")
    versions("0.18.0", torch="2.10.0+cu128")
    reason = get_method("torchao-int8wo").unavailable_reason("cuda", (9, 0), "bf16")
    assert reason.startswith("torchao 0.18.0 needs torch >= 2.11 (this is torch 2.10.0+cu128)") and "0.16 for torch 2.10" in reason
    versions("0.16.0", torch="2.10.0")
    assert get_method("torchao-int8wo").unavailable_reason("cpu") is None
    versions("0.18.0", torch="2.11.0+cu130")
    assert get_method("torchao-int8wo").unavailable_reason("cuda", (9, 0), "bf16") is None


def test_device_rules(versions) -> None:
    versions("0.18.0")
    int8, fp8, int4 = (get_method(n) for n in TORCHAO)
    assert int8.unavailable_reason("cpu") is None and int8.unavailable_reason("cuda", (7, 5), "fp16") is None
    assert int4.unavailable_reason("cpu", None, "bf16") == (
        "int4 weight-only (tinygemm, tile_packed_to_4d) runs on CUDA GPUs only (compute capability >= 8.0, Ampere or newer)")
    assert int4.unavailable_reason("cuda", (7, 5), "bf16").endswith("needs compute capability >= 8.0 (Ampere or newer); this GPU has 7.5")
    assert int4.unavailable_reason("cuda", (8, 0), "bf16") is None
    assert int4.unavailable_reason("cuda", (9, 0), "fp16") == "int4 weight-only (tinygemm) computes in bf16 only, not fp16"
    assert "runs on CUDA GPUs only (compute capability >= 8.9" in fp8.unavailable_reason("cpu")
    assert fp8.unavailable_reason("cuda", (8, 6), "bf16").endswith(">= 8.9 (Ada/Hopper or newer); this GPU has 8.6")
    assert fp8.unavailable_reason("cuda", (8, 9), "bf16") is None and fp8.unavailable_reason("cuda", (9, 0), "fp16") is None
    # Through the space's rules, with the device's capability and the candidate's dtype:
    assert "this GPU has 8.0" in unsupported_reason(_cand(quantization="torchao-fp8"), A100)
    assert "this GPU has 7.5" in unsupported_reason(_cand(dtype="fp16", quantization="torchao-int4wo"), T4)
    assert unsupported_reason(_cand(quantization="torchao-int4wo"), A100) is None
    assert unsupported_reason(_cand(quantization="torchao-int4wo", dtype="fp32"), A100).startswith("torchao-int4wo: ")
    assert unsupported_reason(_cand(quantization="torchao-fp8"), UNKNOWN_GPU) is None  # unknown: the load decides
    assert unsupported_reason(_cand(quantization="torchao-int4wo"), CPU).startswith("torchao-int4wo: int4 weight-only")


@needs_torchao
def test_torchao_compiles_so_compile_is_a_real_combination() -> None:
    for name in TORCHAO:
        assert get_method(name).compile_unsupported_reason() is None
        assert unsupported_reason(_cand(quantization=name, compile=True), H200) is None


def test_detected_gpu_carries_its_capability() -> None:
    import torch

    from autotune.system import detect_device

    if not torch.cuda.is_available():
        assert detect_device("cpu").capability is None
    else:
        assert detect_device("cuda:0").capability == torch.cuda.get_device_capability(0)


# ------------------------------------------------------------------------------ load errors


REPORT = """\x1b[1mQwen2ForCausalLM LOAD REPORT\x1b[0m from: /tmp/tiny
Key                                      | Status     |
model.layers.{0, 1}.mlp.down_proj.weight | CONVERSION |

Traceback (most recent call last):
  File "/x/torch/cuda/__init__.py", line 522, in _lazy_init
    raise AssertionError("Torch not compiled with CUDA enabled")
AssertionError: Torch not compiled with CUDA enabled
Torch not compiled with CUDA enabled
Error: TorchAoQuantize on tensors destined for model.layers.1.mlp.down_proj.weight. Ckpt contains: 1
"""


def test_conversion_cause_is_read_from_transformers_load_report() -> None:
    from autotune.loading import conversion_cause

    assert conversion_cause([REPORT]) == "AssertionError: Torch not compiled with CUDA enabled"
    assert conversion_cause(["Error: TorchAoQuantize on tensors destined for x"]) is None
    assert conversion_cause(["ImportError: Requires mslk >= 1.0.0"]) == "ImportError: Requires mslk >= 1.0.0"


@needs_torchao
@pytest.mark.parametrize("name, cause", [("torchao-int4wo", "AssertionError: Torch not compiled with CUDA enabled"),
                                         ("torchao-fp8", "Float8 dynamic quantization requires CUDA compute capability")])
def test_a_load_the_quantizer_refuses_is_unsupported_with_its_cause(name: str, cause: str) -> None:
    """Past the space's rules (a study reopened without the device's facts): transformers hides
    torchao's error behind a generic RuntimeError; the loader raises it as unsupported with the cause."""
    import torch

    from autotune.loading import QuantizationLoadError, load_model
    from autotune.models import resolve_model
    from autotune.worker.process import _UNSUPPORTED_AT_LOAD

    if torch.cuda.is_available():
        pytest.skip("the CPU refusal is what this checks")
    with pytest.raises(QuantizationLoadError) as e:
        load_model(resolve_model("tiny-qwen2", random_weights=True), _cand(quantization=name), "cpu")
    assert str(e.value).startswith(f"{name}: the weights could not be quantized here: ") and cause in str(e.value)
    assert isinstance(e.value, _UNSUPPORTED_AT_LOAD)


@needs_torchao
def test_int8_weight_only_loads_on_cpu_with_int8_weights() -> None:
    from autotune.loading import load_model
    from autotune.models import resolve_model

    model, _ = load_model(resolve_model("tiny-qwen2", random_weights=True), _cand(dtype="fp32", quantization="torchao-int8wo"), "cpu")
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"
    assert type(model.lm_head.weight).__name__ != "Int8Tensor"  # embeddings and lm_head stay (TorchAoConfig's default)


def _inductor_config_under_torchaos_settings() -> dict:
    """The whole inductor config as autotune measures int8wo under (the load's scope)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(dict(quant.TORCHAO_RECOMMENDED_INDUCTOR)):
        return inductor_config.get_config_copy()


@needs_torchao
def test_int8wo_inductor_settings_are_torchaos_recommended_ones() -> None:
    """The settings autotune scopes around generate() are exactly what torchao's
    set_inductor_config=True would set process-wide (a newer torchao that changes them fails here)."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.utils import recommended_inductor_config_setter

    assert get_method("torchao-int8wo").inductor_settings == quant.TORCHAO_RECOMMENDED_INDUCTOR
    assert not get_method("torchao-fp8").inductor_settings and not get_method("none").inductor_settings
    before = inductor_config.get_config_copy()
    ours = _inductor_config_under_torchaos_settings()
    try:
        recommended_inductor_config_setter()
        torchaos = inductor_config.get_config_copy()
    finally:
        inductor_config.load_config(before)
    assert ours == torchaos != before
    assert inductor_config.get_config_copy() == before


@needs_torchao
def test_int8wo_generate_runs_inside_the_inductor_settings_and_leaves_them() -> None:
    """A real int8 weight-only load on CPU: every forward of generate() sees torchao's settings, and
    the process's inductor config is as before once generate() returns; an unquantized load is not
    wrapped."""
    import torch
    import torch._inductor.config as inductor_config

    from autotune.loading import generate_kwargs, load_model
    from autotune.models import resolve_model

    ref = resolve_model("tiny-qwen2", random_weights=True)
    cand = _cand(dtype="fp32", quantization="torchao-int8wo")
    model, _ = load_model(ref, cand, "cpu")
    seen: list[tuple[bool, bool]] = []
    model.model.register_forward_pre_hook(
        lambda module, args: seen.append((inductor_config.coordinate_descent_tuning, inductor_config.force_fuse_int_mm_with_mul)))
    before = inductor_config.get_config_copy()
    assert not before["coordinate_descent_tuning"]
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    model.generate(ids, attention_mask=torch.ones_like(ids), **{**generate_kwargs(cand), "min_new_tokens": 4})
    assert seen == [(True, True)] * 4  # the prefill and three decode steps
    assert inductor_config.get_config_copy() == before
    plain, _ = load_model(ref, _cand(dtype="fp32"), "cpu")
    assert "generate" not in plain.__dict__


# ------------------------------------------------------------------------------ exports


def _config(quantization: str):
    from autotune import read_deployment

    config = read_deployment(Path(__file__).parent / "golden" / "export" / "inputs" / "text-int8.yaml")
    return config.model_copy(update={"settings": config.settings.model_copy(update={"quantization": quantization})})


@pytest.mark.parametrize("name", TORCHAO)
def test_transformers_export_writes_the_torchao_config(name: str) -> None:
    result = export(_config(name), "transformers")
    method = get_method(name)
    assert f"quantization_config={method.config_source('torch.bfloat16')}," in result.text
    assert f"from torchao.quantization import {method.ao_class}\n" in result.text and "TorchAoConfig" in result.text
    compile(result.text, "transformers_deploy.py", "exec")
    assert not [n for n in result.notes if "approximate" in n and name in n]


@needs_torchao
def test_transformers_export_sets_int8wo_inductor_settings_when_compiled() -> None:
    """The script of a compiled int8 weight-only config sets torchao's inductor settings (real
    names: executing its lines gives the config autotune measured under); without compile, or
    for fp8, it sets none."""
    import torch._inductor.config as inductor_config

    def script(name: str, compiled: bool) -> str:
        config = _config(name)
        settings = config.settings.model_copy(update={"compile": compiled, "compile_mode": "reduce-overhead" if compiled else None})
        return export(config.model_copy(update={"settings": settings}), "transformers").text

    text = script("torchao-int8wo", True)
    compile(text, "transformers_deploy.py", "exec")
    assignments = [line.strip() for line in text.splitlines() if line.strip().startswith("torch._inductor.config.")]
    assert len(assignments) == len(quant.TORCHAO_RECOMMENDED_INDUCTOR) and "\nimport torch._inductor.config\n" in text
    before = inductor_config.get_config_copy()
    measured = _inductor_config_under_torchaos_settings()
    try:
        import torch

        exec("\n".join(assignments), {"torch": torch})
        assert inductor_config.get_config_copy() == measured
    finally:
        inductor_config.load_config(before)
    for name, compiled in (("torchao-int8wo", False), ("torchao-fp8", True)):
        assert "torch._inductor.config" not in script(name, compiled)


@pytest.mark.parametrize("target, text", [("vllm", "quantization: fp8_per_tensor"), ("sglang", "quantization: fp8"),
                                          ("tgi", "QUANTIZE=fp8\n")])
def test_fp8_exports_to_the_servers_own_fp8_as_approximate(target: str, text: str) -> None:
    result = export(_config("torchao-fp8"), target)
    assert text in result.text and "another fp8 recipe" in result.text
    assert any("another fp8 recipe" in note for note in result.notes)


@pytest.mark.parametrize("target, alternative", [("vllm", "fp8_per_tensor"), ("sglang", "fp8"), ("tgi", "bitsandbytes")])
@pytest.mark.parametrize("name", ["torchao-int8wo", "torchao-int4wo"])
def test_torchao_int_methods_do_not_export_to_servers(target: str, alternative: str, name: str) -> None:
    with pytest.raises(ExportError) as e:
        export(_config(name), target)
    message = str(e.value)
    if (target, name) == ("sglang", "torchao-int4wo"):
        alternative = "bitsandbytes"  # SGLang's in-flight 4-bit (nf4)
    assert f"quantization {name} cannot be exported to {target}" in message and alternative in message
    assert "--allow-approximate" in message and "\n" not in message
    result = export(_config(name), target, allow_approximate=True)
    assert f"quantization {name} has no equivalent" in result.text
    if target != "tgi":
        assert yaml.safe_load(result.text)["quantization"] == alternative


# ------------------------------------------------------------------------------ CPU study (slow)


@pytest.fixture(scope="module")
def torchao_study(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M (real weights) on CPU over none / the three torchao methods, with
    quality against the reference (fp32, none) on the bundled text set and a 0.98 floor."""
    out = tmp_path_factory.mktemp("torchao")
    space = write_space(out.parent / "torchao-space.yaml", dtype=["fp32"], quantization=["none", *TORCHAO],
                        attn_implementation=["sdpa"], batch_size=[1], max_length=[128], new_tokens=16)
    # 40 of the 168 questions: each quality run takes minutes on 2 shared cores.
    assert_ok(run_cli("tune", "--space", str(space), "--trials", "4", "--min-quality", "0.98", "--quality-examples", "40",
                      "--trial-timeout", "1800", "--out", str(out), "--device", "cpu", timeout=3000))
    return out


@needs_torchao
@pytest.mark.slow
def test_int8_weight_only_measures_on_cpu_and_keeps_quality(torchao_study: Path) -> None:
    recs = {r.candidate.quantization: r for r in read_records(torchao_study) if r.state != "duplicate"}
    assert set(recs) == {"none", *TORCHAO}
    assert recs["none"].state == "measured" and recs["torchao-int8wo"].state == "measured", recs["torchao-int8wo"].outcome.reason
    int8, reference = recs["torchao-int8wo"].outcome, recs["none"].outcome
    assert int8.reloaded and int8.measurement.throughput.median > 0
    assert int8.quality.score >= 0.98 * reference.quality.score  # the floor held
    assert int8.quality.top1_agreement is None or int8.quality.top1_agreement > 0.9
    for name in ("torchao-int4wo", "torchao-fp8"):  # refused before loading, with the reason
        assert recs[name].state == "unsupported" and "CUDA GPUs only" in recs[name].outcome.reason


@needs_torchao
@pytest.mark.slow
def test_load_deployment_reproduces_torchao_int8(torchao_study: Path, tmp_path: Path) -> None:
    from autotune import load_deployment

    raw = yaml.safe_load((torchao_study / "best.yaml").read_text())
    raw["settings"]["quantization"] = "torchao-int8wo"
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(raw))
    model, tokenizer, generate_kwargs = load_deployment(path)
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, **{**generate_kwargs, "max_new_tokens": 8})
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------------------ GPU (pytest -m gpu)


def _int4_sized(tmp_path: Path) -> Path:
    """tiny-qwen2 with every linear input a multiple of 128 (int4wo's group size; at 64 torchao
    leaves every layer unquantized, which the loader refuses), and no 128x128 weight: torchao 0.18
    reads a per-tensor fp8 scale of a 128x128 weight as a 128x128 block scale and its matmul then
    asserts (H100, 2026-12-06), which a real model's larger layers never meet."""
    import json

    from autotune.models import BUNDLED_CONFIG_DIR

    config = {**json.loads((BUNDLED_CONFIG_DIR / "tiny-qwen2.json").read_text()), "hidden_size": 256, "intermediate_size": 512}
    folder = tmp_path / "tiny-qwen2-128"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@needs_torchao
@pytest.mark.gpu
@pytest.mark.parametrize("name, tensor", [("torchao-int8wo", "Int8Tensor"), ("torchao-fp8", "Float8Tensor"),
                                          ("torchao-int4wo", "Int4TilePackedTo4dTensor")])
def test_each_method_loads_on_cuda_and_generate_compiles(name: str, tensor: str, tmp_path: Path) -> None:
    """A tiny random Qwen2 quantized while loading onto cuda:0 (bf16), then generate() with the
    static cache the compile knob sets: transformers compiles it (torchao's quantizer is
    compileable) and the compiled tokens equal the eager ones."""
    import torch

    from autotune.loading import generate_kwargs, load_model
    from autotune.models import resolve_model
    from autotune.system import detect_device

    cand = _cand(quantization=name, compile=True, new_tokens=8)
    reason = unsupported_reason(cand, detect_device("cuda:0"))
    if reason is not None:
        pytest.skip(reason)  # e.g. fp8 on a GPU older than SM 8.9
    model, _ = load_model(resolve_model(str(_int4_sized(tmp_path)), random_weights=True), cand, "cuda:0")
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == tensor
    assert model.hf_quantizer.is_compileable
    ids = torch.randint(0, model.config.vocab_size, (2, 16), device="cuda:0")
    kwargs = {**generate_kwargs(cand), "min_new_tokens": 8}
    assert kwargs["cache_implementation"] == "static"
    scored = {**kwargs, "return_dict_in_generate": True, "output_logits": True}
    compiled = [model.generate(ids, **scored) for _ in range(2)]  # the second call runs the compiled graph
    eager = model.generate(ids, **scored, disable_compile=True)
    assert compiled[0].sequences.shape == (2, 24) and torch.equal(compiled[0].sequences, compiled[1].sequences)
    # Compiled kernels round differently (fp8's fused activation quantization most), and on a
    # random model's near-flat logits one flipped token changes every greedy token after it (the
    # H100, 2026-12-06: 5 of 16 fp8 tokens differed). So the first step is compared, where both
    # see the same prompt: the same token, and logits that point the same way.
    first_compiled, first_eager = compiled[1].logits[0].float(), eager.logits[0].float()
    assert torch.equal(compiled[1].sequences[:, 16], eager.sequences[:, 16])
    assert torch.nn.functional.cosine_similarity(first_compiled, first_eager, dim=-1).min() > 0.99


@needs_torchao
@pytest.mark.gpu
def test_gpu_study_with_torchao_and_compile(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], quantization=["none", *TORCHAO], attn_implementation=["sdpa"],
                        compile=[False, True], batch_size=[1, 8], max_length=[64])
    out = tmp_path / "out"
    assert_ok(run_cli("tune", "--model", str(_int4_sized(tmp_path)), "--random-weights", "--space", str(space), "--trials", "16",
                      "--memory-budget", "8GiB", "--out", str(out), "--device", "cuda:0", "--sampler", "grid"))
    recs = [r for r in read_records(out) if r.state != "duplicate"]
    by_load = {(r.candidate.quantization, r.candidate.compile): r for r in recs}
    import torch

    fp8_runs = torch.cuda.get_device_capability(0) >= (8, 9)
    for name in TORCHAO:
        for compiled in (False, True):
            r = by_load.get((name, compiled))
            if r is None:
                continue
            if name == "torchao-fp8" and not fp8_runs:
                assert r.state == "unsupported" and ">= 8.9" in r.outcome.reason
            else:
                assert r.state == "measured", (name, compiled, r.outcome.reason)


@needs_torchao
@pytest.mark.gpu
def test_the_cpu_simulation_of_int4_and_fp8_numerics_matches_torchao_on_the_gpu() -> None:
    """bench/quant_numerics_quality.py applies int4 (tinygemm) and fp8 numerics on CPU (BENCHMARKS
    §15): its dequantized weights equal what torchao's GPU tensors hold. int4: the weight read back
    through the tinygemm kernel itself (an identity input); fp8: Float8Tensor.dequantize()."""
    import importlib.util as iu

    import torch
    from torchao.quantization import quantize_

    from autotune.system import detect_device

    spec = iu.spec_from_file_location("qnq", Path(__file__).parents[1] / "bench" / "quant_numerics_quality.py")
    qnq = iu.module_from_spec(spec)
    spec.loader.exec_module(qnq)
    torch.manual_seed(0)
    weight = torch.randn(256, 576, dtype=torch.bfloat16)  # 576 inputs: from_hp pads them to 1024
    for name in ("torchao-int4wo", "torchao-fp8"):
        if unsupported_reason(_cand(quantization=name), detect_device("cuda:0")) is not None:
            continue  # fp8 needs SM 8.9
        simulated = torch.nn.Sequential(torch.nn.Linear(576, 256, bias=False, dtype=torch.bfloat16))
        simulated[0].weight.data = weight.clone()
        if name == "torchao-int4wo":
            qnq.int_weights(simulated, 4)
        else:
            qnq.fp8_dynamic(simulated)
        real = torch.nn.Sequential(torch.nn.Linear(576, 256, bias=False, dtype=torch.bfloat16, device="cuda:0"))
        real[0].weight.data = weight.to("cuda:0")
        quantize_(real, get_method(name).ao_config())
        if name == "torchao-int4wo":
            eye = torch.eye(576, dtype=torch.bfloat16, device="cuda:0")
            read_back = torch.nn.functional.linear(eye, real[0].weight).t().cpu()
        else:
            read_back = real[0].weight.dequantize(torch.bfloat16).cpu()
        assert torch.allclose(read_back.float(), simulated[0].weight.float(), rtol=1e-2, atol=1e-3), name
