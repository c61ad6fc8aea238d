"""autotune export: golden files for every exporter over a set of configs, the compatibility rules,
the memory arithmetic, and bad input (one-line errors from the CLI). No model is loaded.

Golden files live in tests/golden/export/<case>/: the files `autotune export` writes for each
target (or `<name>.error` holding the one-line error). Rewrite them after an intended change with

    AUTOTUNE_UPDATE_GOLDEN=1 python -m pytest tests/test_export.py

and review the diff. The inputs are in tests/golden/export/inputs/ (copies of real best.yaml files
from bench/results, and edited copies for quantized and video cases).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from autotune.deploy import read_deployment
from autotune.errors import ExportError
from autotune.export import EXPORTERS, RULES, export, write_export
from autotune.export import sglang as sglang_exporter
from autotune.export import tgi as tgi_exporter
from autotune.export import transformers as transformers_exporter
from autotune.export import vllm as vllm_exporter
from autotune.export.base import ExportOptions, memory_plan, uncovered_rules
from autotune.kinds import MODEL_KINDS
from autotune.spec import DeploymentConfig
from tests import conftest
from tests.test_cli_errors import assert_one_line_error

GOLDEN = Path(__file__).parent / "golden" / "export"
INPUTS = GOLDEN / "inputs"
UPDATE = os.environ.get("AUTOTUNE_UPDATE_GOLDEN") == "1"
FILENAMES = {m.NAME: m.FILENAME for m in (vllm_exporter, sglang_exporter, tgi_exporter, transformers_exporter)}

# case -> (input file, export options). Every case is exported to every target.
CASES: dict[str, tuple[str, dict]] = {
    "text": ("text-h100.yaml", {}),  # real H100 study: bf16, eager, 24 GiB budget
    "text-tp2": ("text-h100.yaml", {"tensor_parallel_size": 2}),  # multi-GPU
    "text-2gpu": ("text-h100-2gpu.yaml", {}),  # measured on 2 GPUs (num_gpus: 2): served on 2 by default
    "cpu": ("cpu-default.yaml", {}),  # real CPU study of the embedded model
    "text-capacity": ("text-capacity.yaml", {}),  # the H100 study's best with --slo and its simulated capacity
    "nf4": ("text-nf4.yaml", {}),  # vLLM has no bitsandbytes: error
    "nf4-approx": ("text-nf4.yaml", {"allow_approximate": True}),
    "int8": ("text-int8.yaml", {}),  # vLLM and SGLang cannot quantize to int8 in flight: errors
    "int8-approx": ("text-int8.yaml", {"allow_approximate": True}),
    "vision": ("vision-nf4-h100.yaml", {"allow_approximate": True}),  # real H100 VL study (nf4, 1 image)
    "vision-video-tp2": ("vision-video-fp16.yaml", {"tensor_parallel_size": 2, "gpu_memory_gib": 141}),  # TGI: fp32, video
}


def config_of(name: str) -> DeploymentConfig:
    return read_deployment(INPUTS / name)


def exported_files(case: str, target: str, tmp_path: Path) -> dict[str, str]:
    """What `autotune export` writes for this case and target (or the error it reports)."""
    input_name, options = CASES[case]
    stem = Path(FILENAMES[target]).stem
    try:
        result = export(config_of(input_name), target, **options)
    except ExportError as e:
        return {f"{stem}.error": str(e) + "\n"}
    out = tmp_path / case / target
    out.mkdir(parents=True)
    return {p.name: p.read_text() for p in write_export(result, out)}


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, target: str, tmp_path: Path) -> None:
    got = exported_files(case, target, tmp_path)
    golden_dir = GOLDEN / case
    stem = Path(FILENAMES[target]).stem
    if UPDATE:
        golden_dir.mkdir(parents=True, exist_ok=True)
        for old in golden_dir.glob(f"{stem}.*"):
            old.unlink()
        for name, text in got.items():
            (golden_dir / name).write_text(text)
    want = {p.name: p.read_text() for p in sorted(golden_dir.glob(f"{stem}.*"))}
    assert sorted(got) == sorted(want), f"files differ for {case}/{target}; AUTOTUNE_UPDATE_GOLDEN=1 rewrites them"
    for name in got:
        assert got[name] == want[name], f"{case}/{name} differs from the golden file; AUTOTUNE_UPDATE_GOLDEN=1 rewrites it"


def test_golden_cases_cover_text_vision_quantized_multi_gpu_and_errors() -> None:
    errors = {p.parent.name + "/" + p.name for p in GOLDEN.glob("*/*.error")}
    assert {"nf4/vllm.error", "int8/vllm.error", "int8/sglang.error", "vision-video-tp2/tgi.error"} <= errors
    assert "vision/vllm.yaml" in {p.parent.name + "/" + p.name for p in GOLDEN.glob("*/*")}
    assert (GOLDEN / "text-tp2" / "vllm.yaml").read_text().count("tensor-parallel-size: 2") == 1
    assert (GOLDEN / "text-2gpu" / "vllm.yaml").read_text().count("tensor-parallel-size: 2") == 1


def test_capacity_is_carried_where_the_server_has_a_setting_and_noted_elsewhere() -> None:
    """TGI refuses requests over max-concurrent-requests: it gets the simulated concurrency at the
    capacity (at least the batch); vLLM, SGLang and transformers get the figure as a note."""
    config = config_of("text-capacity.yaml")
    concurrency = max(config.settings.batch_size, math.ceil(config.capacity.concurrency))
    assert f"MAX_CONCURRENT_REQUESTS={concurrency}" in (GOLDEN / "text-capacity" / "tgi.env").read_text()
    for name in ("vllm.yaml", "sglang.yaml", "transformers_deploy.py"):
        text = (GOLDEN / "text-capacity" / name).read_text()
        assert f"capacity: {config.capacity.rate_rps:.3g} requests/s within ttft_p95" in text, name
    assert "capacity" not in (GOLDEN / "text" / "vllm.yaml").read_text()  # no --slo study, no capacity: nothing


# ------------------------------------------------------------------------------ the rules


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_every_setting_value_has_a_rule(target: str) -> None:
    """A new knob or value (the knob table: quantization method, attention kernel, dtype, ...) or a
    new model kind must get a rule in every exporter (tests/test_knobs.py checks the knobs too)."""
    rules = RULES[target]
    assert not uncovered_rules(rules), f"{target} lacks rules for knobs/values {uncovered_rules(rules)}"
    needed = {f"model_kind={k}" for k in MODEL_KINDS}
    needed |= {"capacity", "device=cpu", "tensor_parallel_size>1", "tensor_parallel_size>num_gpus", "tensor_parallel_size<num_gpus"}
    assert needed <= set(rules), f"{target} lacks rules for {sorted(needed - set(rules))}"
    for key, rule in rules.items():
        assert rule.kind in ("exact", "approximate", "unexportable"), key
        if rule.kind != "exact":
            assert rule.note, f"{target} {key}: an approximate or unexportable rule says why"


def test_bnb_int8_to_vllm_names_the_setting_and_the_nearest_alternative() -> None:
    with pytest.raises(ExportError) as e:
        export(config_of("text-int8.yaml"), "vllm")
    message = str(e.value)
    assert "quantization bnb-int8" in message and "fp8_per_tensor" in message and "--allow-approximate" in message
    assert "\n" not in message


def test_allow_approximate_writes_the_alternative_with_a_comment() -> None:
    result = export(config_of("text-int8.yaml"), "vllm", allow_approximate=True)
    data = yaml.safe_load(result.text)
    assert data["quantization"] == "fp8_per_tensor"
    assert "# approximate (quantization bnb-int8 has no equivalent)" in result.text
    assert any("bnb-int8" in note for note in result.notes)


def test_sglang_exports_nf4_in_flight_but_refuses_fp4_and_int8() -> None:
    nf4 = yaml.safe_load(export(config_of("text-nf4.yaml"), "sglang").text)
    assert nf4["quantization"] == "bitsandbytes" and nf4["load-format"] == "bitsandbytes"
    fp4 = config_of("text-nf4.yaml")
    fp4 = fp4.model_copy(update={"settings": fp4.settings.model_copy(update={"quantization": "bnb-fp4"})})
    with pytest.raises(ExportError, match="quantization bnb-fp4 cannot be exported to sglang"):
        export(fp4, "sglang")


def test_tgi_maps_every_bitsandbytes_method_and_says_it_is_in_maintenance() -> None:
    for quant, value in (("bnb-int8", "bitsandbytes"), ("bnb-nf4", "bitsandbytes-nf4"), ("bnb-fp4", "bitsandbytes-fp4")):
        config = config_of("text-int8.yaml")
        config = config.model_copy(update={"settings": config.settings.model_copy(update={"quantization": quant})})
        result = export(config, "tgi")
        assert f"QUANTIZE={value}\n" in result.text and "DTYPE=" not in result.text  # TGI refuses --dtype with --quantize
        assert "maintenance mode" in result.text and any("maintenance mode" in n for n in result.notes)


def test_several_unexportable_settings_are_named_in_one_line() -> None:
    config = config_of("vision-video-fp16.yaml")
    config = config.model_copy(update={"settings": config.settings.model_copy(update={"dtype": "fp32"})})
    with pytest.raises(ExportError) as e:
        export(config, "tgi")
    assert "dtype fp32" in str(e.value) and "video_frames 8" in str(e.value) and "\n" not in str(e.value)


def test_vllm_vision_flags() -> None:
    data = yaml.safe_load(export(config_of("vision-video-fp16.yaml"), "vllm").text)
    assert yaml.safe_load(data["limit-mm-per-prompt"]) == {"image": 1, "video": 1}
    assert yaml.safe_load(data["mm-processor-kwargs"]) == {"size": {"shortest_edge": 3136, "longest_edge": 200704}}
    assert yaml.safe_load(data["media-io-kwargs"]) == {"video": {"num_frames": 8}}
    assert data["mm-encoder-attn-backend"] == "FLASH_ATTN" and data["dtype"] == "float16"


def test_a_reranker_cannot_be_served_even_approximately_but_exports_to_transformers() -> None:
    config = config_of("text-h100.yaml")
    config = config.model_copy(update={"model": config.model.model_copy(update={"model_kind": "reranker"})})
    for target in ("vllm", "sglang", "tgi"):
        with pytest.raises(ExportError, match="export --to transformers"):
            export(config, target, allow_approximate=True)
    assert "AutoModelForCausalLM" in export(config, "transformers").text


# ------------------------------------------------------------------------------ memory


def test_memory_fraction_is_the_peak_plus_headroom_capped_at_the_budget() -> None:
    config = config_of("text-h100.yaml")  # NVML peak 22.41 GiB, budget 24 GiB, H100 79.18 GiB
    plan = memory_plan(config, ExportOptions(), "f")
    assert plan.fraction == 0.30  # 22.41 x 1.1 = 24.65 > 24 -> 24 GiB / 79.18 = 0.303, rounded down under the budget
    assert "24.65 GiB" in plan.arithmetic and "capped at the 24 GiB budget" in plan.arithmetic
    no_budget = config.model_copy(update={"memory_budget_gib": None})
    assert memory_plan(no_budget, ExportOptions(), "f").fraction == 0.32  # 24.65 / 79.18 = 0.311, rounded up
    assert memory_plan(no_budget, ExportOptions(headroom=0.0), "f").fraction == 0.29  # 22.41 / 79.18 = 0.283


def test_memory_that_does_not_fit_the_serving_gpu_is_an_error() -> None:
    with pytest.raises(ExportError, match="--gpu-memory-gib"):
        memory_plan(config_of("text-h100.yaml"), ExportOptions(gpu_memory_gib=23.0), "f")


def test_a_cpu_tuned_config_sets_no_gpu_fraction_and_says_it_is_approximate() -> None:
    result = export(config_of("cpu-default.yaml"), "vllm")
    assert "gpu-memory-utilization" not in yaml.safe_load(result.text)
    assert "tuned on CPU" in result.text


# ------------------------------------------------------------------------------ multi-GPU measurements (num_gpus)

TP_KEYS = {"vllm": "tensor-parallel-size", "sglang": "tp-size"}


def served_size(result, target: str) -> int:
    """The GPU count an export serves on, read back from what it wrote."""
    if target in TP_KEYS:
        return yaml.safe_load(result.text)[TP_KEYS[target]]
    if target == "tgi":
        return int(re.search(r"^NUM_SHARD=(\d+)$", result.text, re.M).group(1))
    max_memory = re.search(r"^ +max_memory=(\{.*\}),$", result.text, re.M)
    return len(eval(max_memory.group(1))) if max_memory else 1  # noqa: S307 (our own snippet's literal)


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_num_gpus_is_the_default_tensor_parallel_size(target: str) -> None:
    result = export(config_of("text-h100-2gpu.yaml"), target)
    assert served_size(result, target) == 2
    assert served_size(export(config_of("text-h100.yaml"), target), target) == 1  # num_gpus 1: as before
    assert served_size(export(config_of("text-h100-2gpu.yaml"), target, tensor_parallel_size=2), target) == 2


@pytest.mark.parametrize("target", ["vllm", "sglang", "tgi"])
def test_a_server_says_it_splits_each_layer_where_autotune_measured_a_layer_split(target: str) -> None:
    result = export(config_of("text-h100-2gpu.yaml"), target)
    text = result.text.replace("\n# ", " ")  # comments unwrapped
    assert "device_map splitting the layers over the GPUs" in text and "every layer over them (tensor parallel)" in text
    assert any("num_gpus is written as" in note for note in result.notes)
    # The memory fraction is per GPU, from the per-GPU peak of the layer split: 14.41 GiB (NVML) x 1.1 / 79.18 GiB.
    assert "(of each GPU) = (14.41 GiB measured per-GPU peak" in text
    assert "2-GPU layer split with device_map, not of a tensor-parallel shard" in text


def test_per_gpu_memory_plan_of_a_two_gpu_measurement() -> None:
    config = config_of("text-h100-2gpu.yaml")  # per GPU: NVML 14.41 GiB, torch reserved 13.19 GiB; budget 24 GiB per GPU
    plan = memory_plan(config, ExportOptions(), "f")
    assert plan.fraction == 0.21  # 14.41 x 1.1 = 15.85 / 79.18 = 0.200, rounded up
    assert "GiB per GPU" in plan.arithmetic and "layer split" in plan.arithmetic
    # NVML sampled one GPU: where the fullest GPU's torch peak is larger, that one is taken.
    fuller = config.model_copy(update={"measured": config.measured.model_copy(update={"peak_reserved_gib": 20.0})})
    assert memory_plan(fuller, ExportOptions(), "f").arithmetic.startswith("f (of each GPU) = (20.00 GiB")
    # On 4 GPUs the per-GPU peak of 2 is kept (it over-reserves); on 1 (approximate) it is scaled by 2/1.
    assert memory_plan(config, ExportOptions(tensor_parallel_size=4), "f").fraction == 0.21
    fewer = memory_plan(config, ExportOptions(tensor_parallel_size=1, allow_approximate=True), "f")
    assert fewer.fraction == 0.41 and "x 2/1 GPUs = 28.81 GiB (an estimate, not measured)" in fewer.arithmetic


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_fewer_gpus_than_measured_is_an_error_naming_the_fix(target: str) -> None:
    with pytest.raises(ExportError) as e:
        export(config_of("text-h100-2gpu.yaml"), target, tensor_parallel_size=1)
    message = str(e.value)
    assert "\n" not in message
    assert f"tensor-parallel-size 1 with num_gpus 2 cannot be exported to {target}" in message
    assert "leave --tensor-parallel-size out" in message and "--allow-approximate" in message
    # --allow-approximate writes the asked size, its memory estimated from the measured GPUs' total.
    result = export(config_of("text-h100-2gpu.yaml"), target, tensor_parallel_size=1, allow_approximate=True)
    assert served_size(result, target) == 1
    assert any("tensor-parallel-size 1 with num_gpus 2" in note for note in result.notes)
    assert "2/1 GPUs" in result.text


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_more_gpus_than_measured_is_approximate(target: str) -> None:
    result = export(config_of("text-h100-2gpu.yaml"), target, tensor_parallel_size=4)
    assert served_size(result, target) == 4
    assert any("more GPUs than best.yaml was measured on" in note for note in result.notes)


def test_a_one_gpu_measurement_served_on_more_gpus_keeps_its_note() -> None:
    """num_gpus 1 with --tensor-parallel-size 2: approximate, no flag needed, as before num_gpus existed."""
    result = export(config_of("text-h100.yaml"), "vllm", tensor_parallel_size=2)
    assert yaml.safe_load(result.text)["tensor-parallel-size"] == 2
    assert any(note.startswith("best.yaml holds a one-GPU measurement") for note in result.notes)


def test_transformers_spreads_a_two_gpu_measurement_with_max_memory(tmp_path: Path) -> None:
    result = export(config_of("text-h100-2gpu.yaml"), "transformers")
    assert 'device_map="auto",\n        max_memory={0: "24GiB", 1: "24GiB"},' in result.text  # the per-GPU budget
    paths = write_export(result, tmp_path)
    compile(paths[0].read_text(), str(paths[0]), "exec")
    assert read_deployment(tmp_path / "transformers_deploy.best.yaml").settings.num_gpus == 2
    one_gpu = export(config_of("text-h100.yaml"), "transformers").extra_files[".best.yaml"]
    assert "num_gpus" not in one_gpu  # the default is left out: older autotune versions read the file


def test_cli_tensor_parallel_size_defaults_to_num_gpus(tmp_path: Path) -> None:
    result = run_export(str(INPUTS / "text-h100-2gpu.yaml"), "--to", "sglang", cwd=tmp_path)
    conftest.assert_ok(result)
    assert yaml.safe_load(result.stdout)["tp-size"] == 2
    assert_one_line_error(run_export(str(INPUTS / "text-h100-2gpu.yaml"), "--to", "sglang", "--tensor-parallel-size", "1",
                                     cwd=tmp_path), "tensor-parallel-size 1 with num_gpus 2", "leave --tensor-parallel-size out")


# ------------------------------------------------------------------------------ model and options


def test_a_random_weight_config_without_a_known_checkpoint_needs_model() -> None:
    config = config_of("text-h100.yaml")
    config = config.model_copy(update={"model": config.model.model_copy(update={"name": "my-shape"})})
    with pytest.raises(ExportError, match="pass --model"):
        export(config, "vllm")
    assert yaml.safe_load(export(config, "vllm", model="/models/mine").text)["model"] == "/models/mine"


@pytest.mark.parametrize("options, needle", [({"tensor_parallel_size": 0}, "--tensor-parallel-size"),
                                             ({"headroom": 2.0}, "--headroom"), ({"gpu_memory_gib": -1.0}, "--gpu-memory-gib")])
def test_bad_options(options: dict, needle: str) -> None:
    with pytest.raises(ExportError, match=needle):
        export(config_of("text-h100.yaml"), "vllm", **options)


def test_unknown_target_lists_the_allowed_names() -> None:
    message = "unknown export target 'vlm' (did you mean 'vllm'?); allowed: sglang, tgi, transformers, vllm"
    with pytest.raises(ExportError, match=re.escape(message)):
        export(config_of("text-h100.yaml"), "vlm")


# ------------------------------------------------------------------------------ files


def test_write_export_names_files_after_out_and_makes_the_script_executable(tmp_path: Path) -> None:
    paths = write_export(export(config_of("text-h100.yaml"), "vllm"), tmp_path / "deploy" / "serve.yaml")
    assert [p.name for p in paths] == ["serve.yaml", "serve.sh"]
    assert paths[1].stat().st_mode & stat.S_IXUSR
    assert "exec vllm serve Qwen/Qwen2.5-7B-Instruct" in paths[1].read_text()
    with pytest.raises(ExportError, match="only from a .yaml or .yml file"):
        write_export(export(config_of("text-h100.yaml"), "vllm"), tmp_path / "serve.txt")


def test_transformers_kwargs_file_is_a_deployment_config_load_deployment_reads(tmp_path: Path) -> None:
    paths = write_export(export(config_of("vision-nf4-h100.yaml"), "transformers"), tmp_path)
    kwargs_file = tmp_path / "transformers_deploy.best.yaml"
    assert kwargs_file in paths
    config = read_deployment(kwargs_file)
    assert config.model.kind == "pretrained" and config.model.source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config.settings == config_of("vision-nf4-h100.yaml").settings
    compile(paths[0].read_text(), str(paths[0]), "exec")  # the snippet is valid Python


# ------------------------------------------------------------------------------ CLI


def run_export(*args: str, cwd: Path):
    return conftest.run_cli("export", *args, cwd=cwd, timeout=60)


def test_cli_prints_the_file_and_the_command_line(tmp_path: Path) -> None:
    result = run_export(str(INPUTS / "text-h100.yaml"), "--to", "vllm", cwd=tmp_path)
    conftest.assert_ok(result)
    assert yaml.safe_load(result.stdout)["max-num-seqs"] == 16  # stdout is the YAML file itself
    assert "# vllm serve Qwen/Qwen2.5-7B-Instruct \\" in result.stdout
    assert not list(tmp_path.iterdir())


def test_cli_out_writes_the_files(tmp_path: Path) -> None:
    result = run_export(str(INPUTS / "text-int8.yaml"), "--to", "tgi", "--out", str(tmp_path / "tgi.env"),
                        "--tensor-parallel-size", "2", cwd=tmp_path)
    conftest.assert_ok(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tgi.env", "tgi.sh"]
    assert "NUM_SHARD=2\n" in (tmp_path / "tgi.env").read_text()
    assert "approximate: TGI is in maintenance mode" in result.stdout


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    not_config = tmp_path / "space.yaml"
    not_config.write_text("dtype: [fp32]\n")
    future = tmp_path / "future.yaml"
    raw = yaml.safe_load((INPUTS / "text-h100.yaml").read_text())
    future.write_text(yaml.safe_dump({**raw, "schema_version": 99, "new_field": 1}))
    cases = [
        ((str(not_config), "--to", "vllm"), ("not an autotune DeploymentConfig",)),
        ((str(future), "--to", "vllm"), ("schema_version 99 is newer than this autotune",)),
        ((str(INPUTS / "text-h100.yaml"), "--to", "vlm"), ("unknown export target 'vlm'", "allowed: sglang, tgi, transformers, vllm")),
        ((str(INPUTS / "text-int8.yaml"), "--to", "vllm"), ("quantization bnb-int8 cannot be exported to vllm", "fp8_per_tensor",
                                                            "--allow-approximate")),
        ((str(tmp_path / "missing.yaml"), "--to", "vllm"), ("cannot read",)),
        ((str(INPUTS / "text-h100.yaml"), "--to", "vllm", "--out", str(tmp_path / "x.json")), ("only from a .yaml or .yml file",)),
    ]
    for args, needles in cases:
        assert_one_line_error(run_export(*args, cwd=tmp_path), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.yaml", "space.yaml"]  # nothing written


def test_golden_inputs_are_unchanged_copies_where_they_say_so() -> None:
    """The real examples stay byte-equal to bench/results (apart from the first comment line)."""
    bench = Path(__file__).parents[1] / "bench" / "results"
    for name, src in (("text-h100.yaml", "h100-qwen25-7b-24gib-v3"), ("vision-nf4-h100.yaml", "h100-qwen25-vl-7b-24gib"),
                      ("cpu-default.yaml", "cpu-default")):
        copy = (INPUTS / name).read_text().split("\n", 1)[1]
        assert copy == (bench / src / "best.yaml").read_text(), name


@pytest.fixture(autouse=True, scope="module")
def _no_stray_golden_dirs():
    yield
    for d in GOLDEN.iterdir():
        if d.is_dir() and d.name not in CASES and d.name != "inputs":
            if UPDATE:
                shutil.rmtree(d)
            else:
                raise AssertionError(f"stray golden directory {d} (no case); AUTOTUNE_UPDATE_GOLDEN=1 removes it")
