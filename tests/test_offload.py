"""cpu_offload_gib (issue 19): the row, the loader's device_map/max_memory, the unsupported
combinations, the memory model, the measured figure, the exporters and the report line. The real
offloaded run is the `gpu` test at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autotune.errors import ExportError
from autotune.export import export
from autotune.knobs import KNOB_TABLE, knob
from autotune.loading import OffloadPlan, offload_plan, offloaded_gib
from autotune.memory_model import ModelShape, gpu_weight_bytes, lower_bound_gib, predicted_infeasible_reason, weight_bytes
from autotune.report import offload_line
from autotune.space import load_space, reference_candidates, space_digest, unsupported_reason
from autotune.spec import Candidate, DeploymentConfig, Measurement, SearchSpace, Stat, TrialOutcome, TrialRecord
from autotune.system import DeviceInfo
from tests.conftest import write_space

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "autotune" / "model_configs"
GIB = 2**30
CUDA = DeviceInfo("cuda:0", "cuda", "NVIDIA H100", 80.0, True)
CPU = DeviceInfo("cpu", "cpu", "cpu", 64.0, True)


def _cand(**kw) -> Candidate:
    return Candidate(**{"dtype": "bf16", "batch_size": 1, "max_length": 1024, "new_tokens": 64, **kw})


def test_the_row_is_a_load_key_placement_knob_added_later() -> None:
    row = knob("cpu_offload_gib")
    assert row is KNOB_TABLE[-1] or KNOB_TABLE.index(row) > [k.name for k in KNOB_TABLE].index("num_gpus")
    assert (row.group, row.load_key, row.added_later, row.default, row.low) == ("placement", True, True, 0, 0)
    assert row.export_rule_keys() == ("cpu_offload_gib>0",)
    # A space without the key keeps its digest (stored studies resume) and samples nothing new.
    plain = load_space(ROOT / "search_spaces" / "llm-7b-24gib.yaml")
    assert "cpu_offload_gib" not in plain.knobs
    assert space_digest(plain) == space_digest(plain.model_copy(update={"cpu_offload_gib": None}))
    space = load_space(ROOT / "search_spaces" / "llm-7b-12gib-offload.yaml")
    assert space.cpu_offload_gib == [0, 4, 8] and "cpu_offload_gib" in space.knobs


def test_negative_offload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="0 or a positive integer"):
        SearchSpace(dtype=["bf16"], batch_size=[1], max_length=[128], cpu_offload_gib=[-1])


@pytest.mark.parametrize("cand, device, words", [
    (_cand(cpu_offload_gib=4), CPU, "needs a CUDA GPU"),
    (_cand(cpu_offload_gib=4, compile=True), CUDA, "does not compile generate()"),
    (_cand(cpu_offload_gib=4, num_gpus=2), CUDA, "num_gpus=2: not supported"),
    (_cand(cpu_offload_gib=4, quantization="bnb-nf4"), CUDA, "llm_int8_enable_fp32_cpu_offload"),
])
def test_unsupported_combinations_say_why(cand: Candidate, device: DeviceInfo, words: str) -> None:
    if cand.quantization != "none" and unsupported_reason(cand.model_copy(update={"cpu_offload_gib": 0}), device):
        pytest.skip("bitsandbytes is not available here")
    reason = unsupported_reason(cand, device)
    assert reason is not None and words in reason and reason.startswith(("cpu_offload_gib=4", "static cache"))


def test_plain_offload_on_one_gpu_is_supported() -> None:
    assert unsupported_reason(_cand(cpu_offload_gib=4), CUDA) is None
    assert unsupported_reason(_cand(cpu_offload_gib=0, compile=True), CUDA) is None


def test_the_quality_reference_tries_less_offload_first() -> None:
    space = SearchSpace(dtype=["bf16"], batch_size=[1], max_length=[128], cpu_offload_gib=[8, 0, 4])
    assert [c.cpu_offload_gib for c in reference_candidates(space, CUDA)] == [0, 4, 8]
    assert [c.cpu_offload_gib for c in reference_candidates(space, CPU)] == [0]
    assert [c.cpu_offload_gib for c in reference_candidates(SearchSpace(dtype=["bf16"], batch_size=[1], max_length=[128]),
                                                            CUDA)] == [0]


# ------------------------------------------------------------------------------ the loader


def test_offload_plan_keeps_n_gib_and_the_largest_layer_in_mind() -> None:
    from transformers import AutoModelForCausalLM

    plan = offload_plan(AutoModelForCausalLM, str(CONFIGS / "qwen2.5-7b-instruct.json"), _cand(cpu_offload_gib=4), "cuda:0")
    assert 14.0 < plan.weights_gib < 14.4  # 7.6 B parameters in bf16
    assert 0.9 < plan.largest_layer_gib < 1.1  # the 152k x 3584 embedding, larger than a decoder layer
    assert plan.gpu_max_memory_gib == pytest.approx(plan.weights_gib - 4 + plan.largest_layer_gib)
    memory = plan.max_memory(64 * GIB)
    assert memory == {0: int(plan.gpu_max_memory_gib * GIB), "cpu": 64 * GIB}
    assert OffloadPlan(10.0, 1.0, 4, gpu_index=1).max_memory(GIB) == {1: 7 * GIB, "cpu": GIB}


def test_offload_plan_refuses_what_cannot_be_offloaded() -> None:
    from transformers import AutoModelForCausalLM

    source = str(CONFIGS / "qwen2.5-7b-instruct.json")
    with pytest.raises(ValueError, match="nothing would stay on the GPU"):
        offload_plan(AutoModelForCausalLM, source, _cand(cpu_offload_gib=15), "cuda:0")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):  # ValueError / NotImplementedError: `unsupported` in the worker
        offload_plan(AutoModelForCausalLM, source, _cand(cpu_offload_gib=4), "cpu")
    with pytest.raises(NotImplementedError, match="does not compile"):
        offload_plan(AutoModelForCausalLM, source, _cand(cpu_offload_gib=4, compile=True), "cuda:0")


def test_offloaded_gib_counts_the_modules_the_device_map_puts_on_the_host() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(CONFIGS / "tiny-qwen2.json"), dtype=torch.float32)
    assert offloaded_gib(model) == 0.0  # no device map: nothing offloaded
    layers = [f"model.layers.{i}" for i in range(len(model.model.layers))]
    model.hf_device_map = {"model.embed_tokens": 0, **{n: "cpu" for n in layers}, "model.norm": 0, "lm_head": 0}
    expected = sum(p.numel() * 4 for n in layers for p in model.get_submodule(n).parameters())
    assert offloaded_gib(model) == pytest.approx(expected / GIB)


# ------------------------------------------------------------------------------ memory model


def test_memory_model_counts_only_the_gpu_share_and_does_not_reject_an_offload_that_fits() -> None:
    shape = ModelShape.from_config(json.loads((CONFIGS / "qwen2.5-7b-instruct.json").read_text()))
    on_gpu, offloaded = _cand(), _cand(cpu_offload_gib=8)
    assert predicted_infeasible_reason(shape, on_gpu, 12.0) is not None  # 14 GiB of bf16 weights on a 12 GiB card
    assert predicted_infeasible_reason(shape, offloaded, 12.0) is None
    assert lower_bound_gib(shape, offloaded) < lower_bound_gib(shape, on_gpu) - 8
    # Never above what the loader leaves on the GPU (weights - N; accelerate may offload up to one layer more).
    assert gpu_weight_bytes(shape, offloaded) <= weight_bytes(shape, offloaded) - 8 * GIB
    reason = predicted_infeasible_reason(shape, _cand(cpu_offload_gib=1), 4.0)
    assert reason is not None and "on the GPU (at most" in reason


# ------------------------------------------------------------------------------ exporters


def _offloaded_config() -> DeploymentConfig:
    config = DeploymentConfig.model_validate(yaml.safe_load((ROOT / "tests/golden/export/inputs/text-h100.yaml").read_text()))
    return config.model_copy(update={
        "settings": config.settings.model_copy(update={"cpu_offload_gib": 8}),
        "measured": config.measured.model_copy(update={"offloaded_gib": 8.46, "offload_gpu_max_memory_gib": 7.2}),
    })


def test_vllm_and_sglang_write_the_measured_offload() -> None:
    config = _offloaded_config()
    vllm = export(config, "vllm")
    assert "cpu-offload-gb: 8.46" in vllm.text and "--cpu-offload-gb 8.46" in vllm.command
    assert any("offloads with its own mechanism" in n for n in vllm.notes)
    sglang = export(config, "sglang")
    assert "cpu-offload-gb: 9" in sglang.text and "rounded up" in sglang.text


def test_tgi_refuses_offload_unless_approximations_are_allowed() -> None:
    config = _offloaded_config()
    with pytest.raises(ExportError, match=r"cpu_offload_gib 8 \(8.46 GiB measured on the host\) cannot be exported to tgi: TGI has no CPU weight offload"):
        export(config, "tgi")
    result = export(config, "tgi", allow_approximate=True)
    assert "8.46 GiB measured on the host" in result.text and "offload" not in result.command


def test_transformers_export_loads_with_the_measured_split() -> None:
    config = _offloaded_config()
    result = export(config, "transformers")
    assert 'device_map="auto",' in result.text
    assert f'max_memory={{0: "7.2GiB", "cpu": "{config.fingerprint.host_memory_gib:.0f}GiB"}},' in result.text
    compile(result.text, "transformers_deploy.py", "exec")
    kwargs = DeploymentConfig.model_validate(yaml.safe_load(result.extra_files[".best.yaml"]))
    assert kwargs.settings.cpu_offload_gib == 8 and kwargs.measured.offloaded_gib == 8.46


def test_an_unoffloaded_export_has_no_offload_fields() -> None:
    config = DeploymentConfig.model_validate(yaml.safe_load((ROOT / "tests/golden/export/inputs/text-h100.yaml").read_text()))
    result = export(config, "transformers")
    assert "offload" not in result.extra_files[".best.yaml"] and "cpu-offload" not in export(config, "vllm").text


# ------------------------------------------------------------------------------ the report line


def _measurement(tok_s: float) -> Measurement:
    s = Stat.of([tok_s] * 3)
    return Measurement(output_tokens_per_s=s, prefill_tokens_per_s=s, decode_tokens_per_s=s, requests_per_s=s, ttft_s=s,
                       tpot_s=s, request_latency_s=Stat.of([1 / tok_s] * 3), peak_memory_gib=1.0, warmup_s=0.1, measure_s=0.1)


def _record(number: int, tok_s: float | None, offload: int) -> TrialRecord:
    outcome = TrialOutcome(status="ok", measurement=_measurement(tok_s)) if tok_s else TrialOutcome(status="oom")
    return TrialRecord(number=number, state="measured" if tok_s else "infeasible", candidate=_cand(cpu_offload_gib=offload),
                       outcome=outcome, objective_value=tok_s, feasible=bool(tok_s))


def _best(rec: TrialRecord) -> DeploymentConfig:
    config = _offloaded_config()
    return config.model_copy(update={"settings": rec.candidate, "objective_value": rec.objective_value})


def test_report_says_how_much_slower_offload_is() -> None:
    recs = [_record(0, 100.0, 0), _record(1, 25.0, 8), _record(2, None, 0)]
    assert offload_line(recs, _best(recs[1]), "throughput") == "offloaded: 4.00× slower than the best config without offload (trial #0)"
    assert offload_line(recs, _best(recs[0]), "throughput") == (
        "offload: the best offloaded config (trial #1, 8 GiB) is 4.00× slower than this one")
    only_offloaded = [_record(1, 25.0, 8), _record(2, None, 0)]
    assert offload_line(only_offloaded, _best(only_offloaded[0]), "throughput") == "offloaded: no config fits without offload"
    assert offload_line([_record(0, 100.0, 0)], _best(recs[0]), "throughput") is None


# ------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_a_model_too_big_for_the_budget_runs_offloaded(tmp_path: Path) -> None:
    """About 1.8 GiB of bf16 weights under a 1.5 GiB budget: without offload it cannot fit; with
    1 GiB offloaded it is measured, records what it offloaded, and load_deployment generates."""
    from autotune import load_deployment
    from tests.conftest import assert_ok, read_records, run_cli

    config = {**json.loads((CONFIGS / "tiny-qwen2.json").read_text()), "hidden_size": 2048, "intermediate_size": 5632,
              "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 32000,
              "tie_word_embeddings": False}
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text(json.dumps(config))
    space = write_space(tmp_path / "space.yaml", dtype=["bf16"], attn_implementation=["sdpa"], batch_size=[1], max_length=[128],
                        new_tokens=8, cpu_offload_gib=[0, 1])
    out = tmp_path / "out"
    result = run_cli("tune", "--model", str(tmp_path / "big"), "--random-weights", "--space", str(space), "--trials", "2",
                     "--memory-budget", "1.5GiB", "--out", str(out), "--device", "cuda:0", "--confirm-top", "0")
    assert_ok(result)
    recs = {r.candidate.cpu_offload_gib: r for r in read_records(out) if r.state != "duplicate"}
    assert recs[0].state == "infeasible", recs[0].outcome.reason
    assert recs[1].state == "measured", recs[1].outcome.reason
    m = recs[1].outcome.measurement
    assert m.offloaded_gib is not None and m.offloaded_gib >= 1.0 and m.peak_memory_gib <= 1.5
    assert m.peak_rss_gib is not None  # host memory is recorded on GPU too
    assert "offloaded: no config fits without offload" in result.stdout
    model, _, kwargs = load_deployment(out / "best.yaml")
    assert "cpu" in set(model.hf_device_map.values())
    import torch

    ids = torch.randint(0, 32000, (1, 16), device="cuda:0")
    assert model.generate(ids, **kwargs).shape[1] == 16 + kwargs["max_new_tokens"]
