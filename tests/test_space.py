"""Search spaces: loading YAML files, error messages, digests, Optuna suggestions, the baseline
and the rules that mark candidates unsupported before anything is loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autotune.errors import SpaceError
from autotune.space import (
    baseline_params,
    builtin_space_path,
    default_space_path,
    load_space,
    space_digest,
    suggest,
    unsupported_reason,
)
from autotune.spec import KNOBS, Candidate, SearchSpace
from autotune.system import DeviceInfo

REPO = Path(__file__).resolve().parent.parent
BUNDLED = ("cpu", "cuda", "llm-7b-24gib", "cpu-quant", "cpu-torchao", "vl-7b-24gib")

CPU = DeviceInfo("cpu", "cpu", "x", 16.0, True)
OLD_GPU = DeviceInfo("cuda:0", "cuda", "H100", 80.0, False)  # a fake GPU that says it lacks bf16
GPU = DeviceInfo("cuda:0", "cuda", "H100", 80.0, True)

SPACE: dict[str, Any] = {
    "dtype": ["fp32", "bf16"],
    "quantization": ["none"],
    "attn_implementation": ["sdpa", "eager"],
    "compile": [False],
    "batch_size": [4, 1, 2],
    "max_length": [64, 32],
    "new_tokens": 8,
    "repeats": 3,
}


def _write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _cand(**kw: Any) -> Candidate:
    base: dict[str, Any] = {"dtype": "fp32", "batch_size": 1, "max_length": 32, "new_tokens": 4}
    return Candidate(**{**base, **kw})


# ------------------------------------------------------------------------------ load_space


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_space_files_validate(name: str) -> None:
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert isinstance(space, SearchSpace)
    assert space.size >= 1
    assert min(space.max_length) > space.new_tokens


@pytest.mark.parametrize("name", BUNDLED)
def test_load_space_by_bundled_name(name: str) -> None:
    """`--space llm-7b-24gib` names a bundled space; it loads the same as the file."""
    assert load_space(Path(name)) == load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert builtin_space_path(name).is_file()


def test_llm_7b_space_contents() -> None:
    space = load_space(Path("llm-7b-24gib"))
    assert space.dtype == ["bf16"]
    assert "bnb-nf4" in space.quantization and 8192 in space.max_length


def test_default_space_path_follows_device() -> None:
    assert default_space_path(CPU).name == "cpu.yaml"
    assert default_space_path(GPU).name == "cuda.yaml"


def test_load_space_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(Path("no-such-bundled-space"))


def test_load_space_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", {**SPACE, "beam_width": [1, 2]})
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert "'beam_width'" in msg and "unknown key" in msg
    assert "allowed keys:" in msg and "batch_size" in msg


def test_load_space_bad_yaml_mentions_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "dtype: [fp32]\nbatch_size: [1]\nmax_length: : [64\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert "line 3" in msg and "not valid YAML" in msg
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_load_space_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", "- fp32\n- bf16\n")
    with pytest.raises(SpaceError, match="must be a mapping"):
        load_space(path)


def test_load_space_unknown_quantization_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", {**SPACE, "quantization": ["none", "bnb-nf5"]})
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert "'quantization" in msg
    assert "unknown quantization 'bnb-nf5'" in msg
    assert "did you mean 'bnb-nf4'?" in msg
    assert not msg.startswith("Value error")


def test_load_space_unknown_attention_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", {**SPACE, "attn_implementation": ["spda"]})
    with pytest.raises(SpaceError, match="did you mean 'sdpa'"):
        load_space(path)


def test_load_space_validation_error_names_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", {**SPACE, "batch_size": [0, 1]})
    with pytest.raises(SpaceError, match="key 'batch_size'.*positive integer"):
        load_space(path)


# ------------------------------------------------------------------------------ space_digest


def test_space_digest_stable_across_key_order(tmp_path: Path) -> None:
    forward = _write(tmp_path / "a.yaml", yaml.safe_dump(SPACE, sort_keys=False))
    backward = _write(tmp_path / "b.yaml", yaml.safe_dump(dict(reversed(list(SPACE.items()))), sort_keys=False))
    assert forward.read_text() != backward.read_text()
    digest = space_digest(load_space(forward))
    assert digest == space_digest(load_space(backward))
    assert len(digest) == 16


def test_space_digest_changes_with_a_value() -> None:
    base = space_digest(SearchSpace.model_validate(SPACE))
    assert space_digest(SearchSpace.model_validate({**SPACE, "new_tokens": 9})) != base
    assert space_digest(SearchSpace.model_validate({**SPACE, "batch_size": [4, 1, 8]})) != base
    assert space_digest(SearchSpace.model_validate({**SPACE, "repeats": 5})) != base


# ------------------------------------------------------------------------------ suggest


def test_suggest_returns_candidates_within_space() -> None:
    space = SearchSpace.model_validate(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        cand = suggest(trial, space)
        assert isinstance(cand, Candidate)
        for knob in KNOBS:
            assert getattr(cand, knob) in getattr(space, knob)
        assert cand.new_tokens == space.new_tokens
        assert trial.params == {knob: getattr(cand, knob) for knob in KNOBS}
        seen.add(cand)
        study.tell(trial, 1.0)
    assert len(seen) > 1


def test_suggest_follows_enqueued_params() -> None:
    space = SearchSpace.model_validate(SPACE)
    params = baseline_params(space, CPU, None)
    study = optuna.create_study()
    study.enqueue_trial(params)
    cand = suggest(study.ask(), space)
    assert cand == Candidate(**params, new_tokens=space.new_tokens)
    assert (cand.dtype, cand.batch_size, cand.max_length, cand.new_tokens) == ("fp32", 1, 32, 8)


# ------------------------------------------------------------------------------ baseline_params


def test_baseline_on_cpu() -> None:
    space = SearchSpace.model_validate(SPACE)
    assert baseline_params(space, CPU, "bf16") == {
        "dtype": "fp32", "quantization": "none", "attn_implementation": "sdpa", "compile": False,
        "batch_size": 1, "max_length": 32,
    }


def test_baseline_falls_back_to_first_choice() -> None:
    space = SearchSpace.model_validate({
        **SPACE, "dtype": ["bf16", "fp16"], "quantization": ["bnb-int8", "bnb-nf4"],
        "attn_implementation": ["eager", "flash_attention_2"], "compile": [True],
    })
    params = baseline_params(space, CPU, None)
    assert params["dtype"] == "bf16"
    assert params["quantization"] == "bnb-int8"
    assert params["attn_implementation"] == "eager"
    assert params["compile"] is True
    assert (params["batch_size"], params["max_length"]) == (1, 32)


@pytest.mark.parametrize("reverse", [False, True])
def test_baseline_prefers_defaults_wherever_they_are_listed(reverse: bool) -> None:
    lists: dict[str, list[Any]] = {
        "dtype": ["bf16", "fp32"], "quantization": ["bnb-nf4", "none"],
        "attn_implementation": ["eager", "sdpa"], "compile": [True, False],
    }
    space = SearchSpace.model_validate({**SPACE, **{k: v[::-1] if reverse else v for k, v in lists.items()}})
    params = baseline_params(space, CPU, None)
    assert (params["dtype"], params["quantization"], params["attn_implementation"], params["compile"]) == (
        "fp32", "none", "sdpa", False
    )


def test_baseline_on_gpu_uses_checkpoint_dtype() -> None:
    space = SearchSpace.model_validate({**SPACE, "dtype": ["fp32", "bf16", "fp16"]})
    assert baseline_params(space, GPU, "fp16")["dtype"] == "fp16"
    assert baseline_params(space, GPU, None)["dtype"] == "bf16"


# ------------------------------------------------------------------------------ unsupported_reason


def test_fp16_on_cpu_unsupported() -> None:
    reason = unsupported_reason(_cand(dtype="fp16"), CPU)
    assert reason is not None and "fp16 on CPU" in reason


def test_flash_attention_on_cpu_unsupported() -> None:
    reason = unsupported_reason(_cand(attn_implementation="flash_attention_2"), CPU)
    assert reason is not None and "needs a CUDA GPU" in reason


def test_compile_on_cpu_unsupported() -> None:
    reason = unsupported_reason(_cand(compile=True), CPU)
    assert reason is not None and "torch.compile" in reason


@pytest.mark.parametrize("cand", [_cand(), _cand(dtype="bf16", attn_implementation="eager", batch_size=8)])
def test_supported_candidate_on_cpu(cand: Candidate) -> None:
    assert unsupported_reason(cand, CPU) is None


def test_compile_with_a_quantization_transformers_cannot_compile_is_answered_before_loading() -> None:
    """transformers' own quantizer says whether generate() compiles with it (bnb: no, as of 5.24);
    the verdict comes from the quantizer object, so a release that can compile it is believed."""
    from transformers.quantizers.auto import AutoHfQuantizer

    from autotune.quant import get_method

    for quant in ("bnb-nf4", "bnb-int8"):
        compileable = AutoHfQuantizer.from_config(get_method(quant).build_config(None)).is_compileable
        reason = unsupported_reason(_cand(quantization=quant, compile=True), GPU)
        assert (reason is None) == compileable
        if reason is not None:
            assert f"{quant} with compile" in reason and "does not compile generate()" in reason
        assert unsupported_reason(_cand(quantization=quant), GPU) is None  # without compile it loads
    assert unsupported_reason(_cand(compile=True), GPU) is None  # nothing to ask without quantization


def test_bf16_unsupported_on_gpu_without_it() -> None:
    reason = unsupported_reason(_cand(dtype="bf16"), OLD_GPU)
    assert reason == "bf16 is not supported by H100"
    assert unsupported_reason(_cand(dtype="bf16"), GPU) is None
    assert unsupported_reason(_cand(dtype="fp16"), OLD_GPU) is None
    assert unsupported_reason(_cand(compile=True), GPU) is None


def _fake_find_spec(present: set[str], absent: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in absent:
            return None
        if name in present:
            return object()
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_flash_attention_on_gpu_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_find_spec(set(), {"flash_attn"}, monkeypatch)
    assert "flash-attn package is not installed" in unsupported_reason(_cand(dtype="bf16", attn_implementation="flash_attention_2"), GPU)
    _fake_find_spec({"flash_attn"}, set(), monkeypatch)
    assert unsupported_reason(_cand(dtype="fp32", attn_implementation="flash_attention_2"), GPU) == (
        "flash_attention_2 runs only in fp16/bf16"
    )
    assert unsupported_reason(_cand(dtype="bf16", attn_implementation="flash_attention_2"), GPU) is None


def test_quantization_without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_find_spec(set(), {"bitsandbytes"}, monkeypatch)
    reason = unsupported_reason(_cand(quantization="bnb-nf4"), CPU)
    assert reason is not None and reason.startswith("bnb-nf4:") and "not installed" in reason
    assert unsupported_reason(_cand(quantization="none"), CPU) is None
