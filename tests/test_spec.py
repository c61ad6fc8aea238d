"""The typed models in autotune.spec: memory sizes, statistics, search-space validation,
candidates and the deployment file's schema version."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from autotune.models import ModelRef
from autotune.spec import (
    SCHEMA_VERSION,
    Candidate,
    DeploymentConfig,
    Fingerprint,
    Measurement,
    SearchSpace,
    Stat,
    TuneSpec,
    parse_memory,
)

# ------------------------------------------------------------------------------ parse_memory


@pytest.mark.parametrize(
    ("text", "gib"),
    [
        ("24GiB", 24.0),
        ("24GB", 24e9 / 2**30),
        ("512MiB", 0.5),
        ("24", 24.0),
        ("1.5", 1.5),
        (" 2 gib ", 2.0),
        ("1TiB", 1024.0),
        ("500MB", 500e6 / 2**30),
        (8, 8.0),
        (0.25, 0.25),
    ],
)
def test_parse_memory_units(text: str | float, gib: float) -> None:
    """Binary and decimal units convert to GiB; a bare number is GiB already."""
    assert parse_memory(text) == pytest.approx(gib)


@pytest.mark.parametrize("text", ["garbage", "", "24 parsecs", "GiB", "-1GiB", "1,5GiB"])
def test_parse_memory_rejects_garbage(text: str) -> None:
    """Anything that is not a size is a ValueError that shows how to write one."""
    with pytest.raises(ValueError, match="cannot read memory size"):
        parse_memory(text)


def test_tune_spec_parses_budget_string() -> None:
    """TuneSpec reads the --memory-budget string through parse_memory."""
    assert TuneSpec(memory_budget_gib="512MiB").memory_budget_gib == pytest.approx(0.5)
    assert TuneSpec().memory_budget_gib is None


# ------------------------------------------------------------------------------ Stat


def test_stat_of_by_hand() -> None:
    """[1, 2, 4]: median 2, min 1, max 4, spread (4 - 1) / 2 = 150 %."""
    s = Stat.of([1.0, 2.0, 4.0])
    assert (s.median, s.min, s.max) == (2.0, 1.0, 4.0)
    assert s.spread_pct == pytest.approx(150.0)
    assert s.samples == [1.0, 2.0, 4.0]


def test_stat_of_even_count_and_order() -> None:
    """An even count takes the mean of the middle two; input order is kept in samples."""
    s = Stat.of([4.0, 1.0, 3.0, 2.0])
    assert s.median == pytest.approx(2.5)
    assert s.spread_pct == pytest.approx(3.0 / 2.5 * 100)
    assert s.samples == [4.0, 1.0, 3.0, 2.0]


def test_stat_of_identical_samples_has_no_spread() -> None:
    s = Stat.of([0.5, 0.5, 0.5])
    assert s.median == 0.5 and s.spread_pct == 0.0


def test_stat_of_zero_median_is_infinite_spread() -> None:
    s = Stat.of([0.0, 0.0, 1.0])
    assert s.median == 0.0 and math.isinf(s.spread_pct)


# ------------------------------------------------------------------------------ SearchSpace


def _space(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dtype": ["fp32", "bf16"],
        "quantization": ["none"],
        "attn_implementation": ["sdpa", "eager"],
        "compile": [False],
        "batch_size": [1, 2, 4],
        "max_length": [32, 64],
        "new_tokens": 8,
        "repeats": 3,
    }
    base.update(overrides)
    return base


def test_search_space_valid_and_size() -> None:
    """size is the product of the number of choices of every knob."""
    space = SearchSpace.model_validate(_space())
    assert space.size == 2 * 1 * 2 * 1 * 3 * 2
    bigger = SearchSpace.model_validate(_space(compile=[False, True], quantization=["none", "bnb-nf4"]))
    assert bigger.size == 2 * 2 * 2 * 2 * 3 * 2


def test_search_space_defaults() -> None:
    space = SearchSpace.model_validate({"dtype": ["fp32"], "batch_size": [1], "max_length": [128]})
    assert space.quantization == ["none"] and space.attn_implementation == ["sdpa"] and space.compile == [False]
    assert space.new_tokens == 64 and space.repeats == 3
    assert space.size == 1


@pytest.mark.parametrize(
    "override",
    [
        {"dtype": ["fp32", "fp32"]},
        {"batch_size": [1, 2, 2]},
        {"max_length": [32, 32]},
        {"attn_implementation": ["sdpa", "sdpa"]},
        {"compile": [False, False]},
        {"quantization": ["none", "none"]},
    ],
)
def test_search_space_rejects_duplicates(override: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="values must be unique"):
        SearchSpace.model_validate(_space(**override))


@pytest.mark.parametrize("override", [{"batch_size": [0, 1]}, {"batch_size": [-4]}, {"max_length": [0, 64]}])
def test_search_space_rejects_non_positive(override: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="positive integer"):
        SearchSpace.model_validate(_space(**override))


@pytest.mark.parametrize("max_length", [[8, 64], [4]])
def test_search_space_needs_room_for_prompt(max_length: list[int]) -> None:
    """max_length <= new_tokens leaves no prompt token."""
    with pytest.raises(ValidationError, match="leaves no prompt token"):
        SearchSpace.model_validate(_space(max_length=max_length, new_tokens=8))
    # One more token is a one-token prompt: accepted.
    SearchSpace.model_validate(_space(max_length=[9], new_tokens=8))


@pytest.mark.parametrize("repeats", [0, 1, 2])
def test_search_space_rejects_few_repeats(repeats: int) -> None:
    with pytest.raises(ValidationError, match="repeats"):
        SearchSpace.model_validate(_space(repeats=repeats))


def test_search_space_rejects_empty_list_unknown_key_and_dtype() -> None:
    with pytest.raises(ValidationError):
        SearchSpace.model_validate(_space(batch_size=[]))
    with pytest.raises(ValidationError, match="Extra inputs"):
        SearchSpace.model_validate(_space(beam_width=[1]))
    with pytest.raises(ValidationError):
        SearchSpace.model_validate(_space(dtype=["fp8"]))


# ------------------------------------------------------------------------------ Candidate


def test_candidate_prompt_tokens_and_load_key() -> None:
    c = Candidate(dtype="bf16", quantization="bnb-nf4", attn_implementation="eager", compile=True,
                  batch_size=4, max_length=128, new_tokens=16)
    assert c.prompt_tokens == 112
    assert c.load_key == ("bf16", "bnb-nf4", "eager", True, None, 1, None, None, 0, None)  # no vision tower kernel; 1 GPU; no KV cache or compile mode set


def test_candidate_load_key_ignores_shape() -> None:
    """Batch size, max length and new tokens need no reload: they are not in the load key."""
    a = Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4)
    b = Candidate(dtype="fp32", batch_size=8, max_length=64, new_tokens=8, max_pixels=50176, images_per_prompt=2)
    c = Candidate(dtype="bf16", batch_size=1, max_length=32, new_tokens=4)
    d = Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4, vision_attn_implementation="eager")
    # Image resolution and count change the inputs, not the model; the vision tower's kernel does.
    assert a.load_key == b.load_key == ("fp32", "none", "sdpa", False, None, 1, None, None, 0, None)
    assert a.load_key != c.load_key and a.load_key != d.load_key


def test_candidate_is_frozen_and_strict() -> None:
    c = Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4)
    with pytest.raises(ValidationError):
        c.batch_size = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Candidate(dtype="fp32", batch_size=0, max_length=32, new_tokens=4)
    with pytest.raises(ValidationError):
        Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4, beams=2)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------ DeploymentConfig


def _stat(value: float) -> Stat:
    return Stat.of([value, value, value])


def _deployment(**overrides: Any) -> dict[str, Any]:
    measurement = Measurement(
        output_tokens_per_s=_stat(100.0), prefill_tokens_per_s=_stat(1000.0), decode_tokens_per_s=_stat(90.0),
        requests_per_s=_stat(2.0), ttft_s=_stat(0.05), tpot_s=_stat(0.01), request_latency_s=_stat(0.5),
        peak_memory_gib=1.0, warmup_s=0.1, measure_s=1.0,
    )
    fp = Fingerprint(device="cpu", device_name="x", device_memory_gib=16.0, cpu="x", cpu_cores=2, host_memory_gib=16.0,
                     python="3", torch="2", transformers="5", optuna="5", autotune="dev")
    data: dict[str, Any] = {
        "model": ModelRef(kind="embedded", name="m").model_dump(mode="json"),
        "device": "cpu",
        "settings": Candidate(dtype="fp32", batch_size=1, max_length=32, new_tokens=4).model_dump(mode="json"),
        "generate_kwargs": {"do_sample": False},
        "measured": measurement.model_dump(mode="json"),
        "objective": "throughput",
        "objective_value": 100.0,
        "fingerprint": fp.model_dump(mode="json"),
        "study_name": "s",
        "storage": "sqlite:///x.db",
        "trial_number": 0,
        "created_at": "2024-01-01T00:00:00+00:00",
    }
    data.update(overrides)
    return data


def test_deployment_config_accepts_current_and_older_schema() -> None:
    assert DeploymentConfig.model_validate(_deployment()).schema_version == SCHEMA_VERSION
    assert DeploymentConfig.model_validate(_deployment(schema_version=SCHEMA_VERSION)).schema_version == SCHEMA_VERSION


def test_deployment_config_refuses_newer_schema() -> None:
    with pytest.raises(ValidationError, match="newer than this autotune understands"):
        DeploymentConfig.model_validate(_deployment(schema_version=SCHEMA_VERSION + 1))
