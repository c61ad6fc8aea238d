"""The table of knobs (autotune/knobs.py) against everything that restates it: the pydantic models,
the registries, the stored identities (load-key, request shape, space digest, cache names) that
existing studies resume by, and every exporter's rules (the coverage contract).

What a new knob touches: a row in autotune/knobs.py, a field on SearchSpace and Candidate (the
model tests below fail until both exist), and a rule per exporter (the coverage test fails until
each has one, see test_a_new_knob_fails_the_coverage_test_until_every_exporter_has_a_rule)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from autotune import knobs
from autotune.deploy import read_deployment
from autotune.dtypes import DTYPES, dtype_from_torch_name
from autotune.errors import ExportError, SpaceError
from autotune.export import EXPORTERS, RULES, export
from autotune.export.base import uncovered_rules
from autotune.knobs import KNOB_TABLE, Knob
from autotune.quant import QUANTIZATION_METHODS
from autotune.space import load_space, space_digest
from autotune.attention import ATTENTION_KINDS
from autotune.spec import Candidate, DType, SearchSpace, TuneSpec

ROOT = Path(__file__).resolve().parent.parent
EXPORT_INPUTS = Path(__file__).parent / "golden" / "export" / "inputs"
# Settings that are not knobs: the space's measurement protocol, not a candidate's.
SPACE_ONLY_SETTINGS = {"repeats", "workload"}  # the workload: autotune/workload.py


# ------------------------------------------------------------------------------ table <-> models


def test_every_row_is_a_field_of_both_models_and_every_field_a_row() -> None:
    rows = {k.name for k in KNOB_TABLE}
    assert len(rows) == len(KNOB_TABLE), "two rows share a name"
    assert rows == set(Candidate.model_fields), (
        f"Candidate fields without a row: {sorted(set(Candidate.model_fields) - rows)}; "
        f"rows without a Candidate field: {sorted(rows - set(Candidate.model_fields))}")
    assert rows == set(SearchSpace.model_fields) - SPACE_ONLY_SETTINGS, (
        f"SearchSpace fields without a row: {sorted(set(SearchSpace.model_fields) - SPACE_ONLY_SETTINGS - rows)}; "
        f"rows without a SearchSpace field: {sorted(rows - set(SearchSpace.model_fields))}")


def test_every_list_field_of_the_space_is_a_sampled_row_and_the_rest_one_value() -> None:
    for name, field in SearchSpace.model_fields.items():
        if name in SPACE_ONLY_SETTINGS:
            continue
        is_list = typing.get_origin(field.annotation) is list or "list[" in str(field.annotation)
        assert is_list == knobs.knob(name).sampled, f"{name}: a list in the space is exactly a sampled knob"


def test_defaults_and_help_agree_with_the_models() -> None:
    for k in KNOB_TABLE:
        space_field, cand_field = SearchSpace.model_fields[k.name], Candidate.model_fields[k.name]
        assert space_field.description == k.help, k.name
        if k.sampled:
            if k.optional:
                assert space_field.default is None, f"{k.name}: an optional knob is left out of a space by default"
            elif k.default is not None:
                assert space_field.default == [k.default], k.name
            else:
                assert space_field.is_required(), k.name
        else:
            assert space_field.default == k.space_default, k.name
        if not cand_field.is_required():
            assert cand_field.default == k.default, f"{k.name}: the candidate's default is the row's"


def test_every_row_is_complete() -> None:
    for k in KNOB_TABLE:
        assert k.group in ("load", "request", "vision", "placement"), k.name
        assert k.type in (str, int, bool), k.name
        assert k.help, k.name
        if k.type is int:
            assert k.low is not None and k.high is not None, f"{k.name}: a numeric knob has bounds"
        if k.sampled:
            assert k.baseline in ("prefer", "min", "max"), f"{k.name}: the baseline picks one value"
        assert k.reference in ("prefer", "min", "max", "space", "default", "most_faithful", "first_supported", "ascending"), k.name
        if k.reference == "most_faithful":
            assert k.rank is not None and k.choices is not None, k.name
            ranks = [k.rank(v) for v in k.values()]
            assert len(set(ranks)) == len(ranks), f"{k.name}: precision ranks are distinct"
        if k.grows_memory:
            assert not k.load_key and k.type is int, k.name
        if k.carried_with is not None:
            assert not k.sampled and knobs.knob(k.carried_with).sampled, k.name


def test_registries_agree_with_the_types() -> None:
    import torch._inductor.config as inductor_config

    assert set(typing.get_args(DType)) == set(DTYPES)
    assert knobs.knob("dtype").values() == tuple(DTYPES)
    assert knobs.knob("quantization").values() == tuple(QUANTIZATION_METHODS)
    assert knobs.knob("attn_implementation").values() == tuple(ATTENTION_KINDS)
    for method in QUANTIZATION_METHODS.values():
        assert method.bytes_per_weight is None or 0 < method.bytes_per_weight < 4, method.name
        if method.name != "none":
            assert method.config_source("torch.bfloat16"), f"{method.name}: the transformers export writes its config"
        # every inductor setting a method asks for is a real one (the load patches them around generate())
        assert set(method.inductor_settings) <= set(inductor_config.get_config_copy()), method.name
    assert min(QUANTIZATION_METHODS.values(), key=lambda m: m.precision_rank).name == "none"
    assert min(DTYPES.values(), key=lambda d: d.precision_rank).name == "fp32"
    assert [dtype_from_torch_name(d.torch_name) for d in DTYPES.values()] == list(DTYPES)


# ------------------------------------------------------------------------------ stored identities


FULL = Candidate(dtype="bf16", quantization="bnb-nf4", attn_implementation="eager", compile=True, batch_size=8, max_length=2048,
                 new_tokens=64, max_pixels=200704, images_per_prompt=2, video_frames=8, vision_attn_implementation="sdpa",
                 image_size="1280x720", video_size="640x360", num_gpus=2)


def test_load_key_request_shape_and_label_are_as_before_the_table() -> None:
    # Values written by the code before the table (commit 6cbaf21): studies store them. The
    # tuples (in memory only) end with the generate-time knobs of issue 19 (None: left out); the
    # names studies store (load-key name, boundary key) leave them out at their default.
    assert FULL.load_key == ("bf16", "bnb-nf4", "eager", True, "sdpa", 2, None, None, 0, None)
    assert FULL.request_shape == (8, 2048, 64, 200704, 2, 8, "1280x720", "640x360", None)
    assert knobs.boundary_shape(FULL) == (2048, 64, 200704, 2, 8, "1280x720", "640x360")
    assert FULL.label() == "bf16 bnb-nf4 eager vit=sdpa compile gpus=2 b=8 len=2048 img=2x200704px video=8f"
    assert knobs.load_key_name(FULL) == "bf16|bnb-nf4|eager|True|sdpa|2"
    assert knobs.load_key_name(FULL.model_copy(update={"num_gpus": 1})) == "bf16|bnb-nf4|eager|True|sdpa"
    assert knobs.load_key_name(FULL.model_copy(update={"num_gpus": 1, "cpu_offload_gib": 8})) == "bf16|bnb-nf4|eager|True|sdpa|8"
    assert FULL.model_copy(update={"num_gpus": 1, "cpu_offload_gib": 8}).label().startswith("bf16 bnb-nf4 eager vit=sdpa compile offload=8GiB b=8")
    assert knobs.MONOTONE_SHAPE_KNOBS == ("batch_size", "max_length", "max_pixels", "images_per_prompt", "video_frames")
    assert set(knobs.LOAD_KEY_KNOBS) | set(knobs.REQUEST_SHAPE_KNOBS) == set(Candidate.model_fields)


# vl-7b-24gib was c6be374e924914be and llm-7b-24gib b3c8a4378c719c36 until issue 19 added the
# generate-time knobs to them (a study of the old space is refused, not mixed); a space without
# those knobs keeps its digest (cpu, scaleout below; tests/test_generate_knobs.py).
@pytest.mark.parametrize("name, digest", [("cpu", "5895c66d84148b02"), ("vl-7b-24gib", "1c0050f6b1b843b9"),
                                          ("scaleout-7b-12gib", "433e087f80053068"), ("llm-7b-24gib", "8a4a1f1636c32db1")])
def test_space_digests_are_as_before_the_table(name: str, digest: str) -> None:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    # The files as they were before issue 19 added the torchao methods to the GPU spaces (and
    # compile with its mode and the static cache it needs to llm-7b-24gib, where torchao makes
    # compile x quantization a real pair, sdpa_gqa to the attention kernels, and the stop check).
    space = space.model_copy(update={"quantization": [q for q in space.quantization if not q.startswith("torchao-")],
                                     "attn_implementation": [a for a in space.attn_implementation if a != "sdpa_gqa"],
                                     "compile": [c for c in space.compile if c is False], "compile_mode": None,
                                     "stop_check": None,
                                     "cache_implementation": [c for c in space.cache_implementation or [] if c != "static"] or None})
    assert space_digest(space) == digest


def test_optuna_parameters_are_in_table_order() -> None:
    space = load_space(ROOT / "search_spaces" / "vl-7b-24gib.yaml")
    assert space.knobs == tuple(n for n in knobs.SAMPLED if getattr(space, n) is not None)
    assert space.knobs[:6] == ("dtype", "quantization", "attn_implementation", "compile", "batch_size", "max_length")


# ------------------------------------------------------------------------------ bounds


SPACE = {"dtype": ["fp32"], "batch_size": [1], "max_length": [64], "new_tokens": 8}


@pytest.mark.parametrize("key, value, bound", [
    ("repeats", 10**12, "100"), ("new_tokens", 100_000, "65,536"), ("batch_size", [1, 65_537], "65,536"),
    ("max_length", [2**21], "1,048,576"), ("max_pixels", [10**10], "1,000,000,000"), ("images_per_prompt", [65], "64"),
    ("video_frames", [1025], "1,024"), ("num_gpus", [65], "64"), ("image_size", "20000x10", "16,384"),
    ("video_size", "10x16385", "16,384"),
])
def test_absurd_values_are_refused_naming_the_key_the_bound_and_the_fix(tmp_path: Path, key: str, value, bound: str) -> None:
    raw = {**SPACE, "max_pixels": [200704], **{key: value}}
    if key in ("video_size", "video_frames"):
        raw.setdefault("video_frames", [1])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpaceError) as e:
        load_space(path)
    message = str(e.value)
    assert f"key {key!r}" in message and bound in message and "\n" not in message
    assert "use at most" in message or "use e.g." in message


def test_an_empty_list_of_an_optional_knob_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "num_gpus": []}))
    with pytest.raises(SpaceError, match="key 'num_gpus'.*at least one value"):
        load_space(path)


@pytest.mark.parametrize("field, value", [("trials", 10**9), ("timeout_s", 1e12), ("trial_timeout_s", 1e9), ("heartbeat_s", 10**6),
                                          ("confirm_top", 1000), ("confirm_repeats", 10**6), ("quality_examples", 10**9),
                                          ("seed", 2**40), ("seed", -1)])
def test_tune_spec_refuses_absurd_numbers(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        TuneSpec(**{field: value})


# ------------------------------------------------------------------------------ exporter coverage


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_every_exporter_has_a_rule_for_every_knob_and_value(target: str) -> None:
    missing = uncovered_rules(RULES[target])
    assert not missing, f"the {target} exporter has no rule for {missing}: add one to RULES in autotune/export/{target}.py"


def test_a_new_knob_fails_the_coverage_test_until_every_exporter_has_a_rule(monkeypatch) -> None:
    """The demonstration of what a new knob touches: a row alone leaves every exporter uncovered."""
    row = Knob("kv_cache_dtype", "load", str, "dtype of the KV cache", default="auto", choices=lambda: ("auto", "fp8"),
               baseline="prefer", preferred="auto", reference="prefer", load_key=True)
    monkeypatch.setattr(knobs, "KNOB_TABLE", (*KNOB_TABLE, row))
    for target in EXPORTERS:
        assert uncovered_rules(RULES[target]) == ["kv_cache_dtype=auto", "kv_cache_dtype=fp8"], target
    monkeypatch.setitem(RULES["vllm"], "kv_cache_dtype=auto", RULES["vllm"]["dtype=bf16"])
    assert uncovered_rules(RULES["vllm"]) == ["kv_cache_dtype=fp8"]
    # A new value of an existing knob (a quantization method) is the same: one rule per exporter.
    monkeypatch.setattr(knobs, "KNOB_TABLE", KNOB_TABLE)
    monkeypatch.setitem(QUANTIZATION_METHODS, "awq", QUANTIZATION_METHODS["bnb-nf4"])
    assert all(uncovered_rules(RULES[t]) == ["quantization=awq"] for t in EXPORTERS)
    # With a rule but no flag value for it, writing it fails loudly (test_every_exporter_writes_or_refuses_every_value
    # runs over every registered method), never a config that silently drops the quantization.
    base = read_deployment(EXPORT_INPUTS / "text-h100.yaml")
    config = base.model_copy(update={"settings": base.settings.model_copy(update={"quantization": "awq"})})
    for target in ("vllm", "sglang", "tgi"):
        monkeypatch.setitem(RULES[target], "quantization=awq", RULES[target]["quantization=none"])
        with pytest.raises(KeyError, match="awq"):
            export(config, target)


def _exportable_values() -> list[tuple[str, str, object]]:
    cases = []
    for k in KNOB_TABLE:
        for value in k.values():
            cases += [(target, k.name, value) for target in sorted(EXPORTERS)]
    return cases


@pytest.mark.parametrize("target, name, value", _exportable_values())
def test_every_exporter_writes_or_refuses_every_value(target: str, name: str, value: object) -> None:
    """Every value of every enumerated knob exports (with --allow-approximate) or is refused with a
    one-line ExportError: never a KeyError from a map that lacks it."""
    base = read_deployment(EXPORT_INPUTS / ("vision-nf4-h100.yaml" if knobs.knob(name).group == "vision" else "text-h100.yaml"))
    config = base.model_copy(update={"settings": base.settings.model_copy(update={name: value})})
    try:
        result = export(config, target, allow_approximate=True)
    except ExportError as e:
        assert "\n" not in str(e)
        return
    assert result.text


def test_rows_are_plain_frozen_dataclasses() -> None:
    assert dataclasses.is_dataclass(Knob) and Knob.__dataclass_params__.frozen
