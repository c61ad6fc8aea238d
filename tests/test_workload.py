"""Workloads (issue 20): each kind parses from a space's `workload:` section and from --workload,
draws are seeded and bounded, over-limit requests are counted (never dropped), and every bad
workload is one line naming the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autotune.data.schema import Example
from autotune.errors import SpaceError
from autotune.spec import Candidate
from autotune.workload import (MAX_TOKENS, OVER_LIMIT_DRAWS, LogNormal, Percentiles, Request, Uniform, Workload,
                               WorkloadError, WorkloadSampler, parse_workload, parse_workload_flag, workload_flag_to_dict)

BUNDLED_TEXT = Path(__file__).resolve().parent.parent / "autotune" / "data" / "bundled" / "text.jsonl"


def words(example: Example) -> int:
    """A fake tokenizer: one token a word of the prompt (or of the chat messages; or a reranking
    request's query and longest document)."""
    if example.documents is not None:
        return len(example.query.split()) + max(len(d.split()) for d in example.documents)
    if example.prompt is not None:
        return len(example.prompt.split())
    return sum(len(str(m.content).split()) for m in example.messages or [])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error(raw, base: Path | str = ".") -> str:
    with pytest.raises(WorkloadError) as info:
        parse_workload(raw, base)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert isinstance(info.value, SpaceError)  # the CLI's one-line handling of a space applies
    return message


def flag_error(text: str, base: Path | str | None = None) -> str:
    with pytest.raises(WorkloadError) as info:
        parse_workload_flag(text, base)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--workload")
    return message


# ------------------------------------------------------------------------------ parsing


def test_the_default_is_todays_fixed_shape():
    for raw in (None, {}, {"kind": "fixed"}):
        workload = parse_workload(raw, ".")
        assert workload.kind == "fixed" and workload.is_default
    sampler = WorkloadSampler(parse_workload(None, "."), new_tokens=16)
    candidate = Candidate(dtype="fp32", batch_size=1, max_length=128, new_tokens=16)
    requests = sampler.draw(5, seed=3, max_length=candidate.max_length)
    assert requests == [Request(candidate.prompt_tokens, candidate.new_tokens)] * 5  # the throughput protocol's shape
    assert sampler.over_limit(128) == (0, 0.0)
    assert sampler.lengths_summary(max_length=128)["prompt_tokens"] == {"p50": 112, "p90": 112, "p95": 112, "p99": 112, "max": 112}
    with pytest.raises(ValueError, match="pass the config's max_length"):
        sampler.draw(1, seed=0)


def test_each_length_shape_parses_from_yaml():
    section = yaml.safe_load("""
workload:
  kind: distribution
  prompt_tokens: {mean: 900, stdev: 600, min: 16, max: 8192}
  output_tokens: {p50: 120, p90: 400, p99: 900, max: 2048}
""")["workload"]
    workload = parse_workload(section, ".")
    assert isinstance(workload.prompt_tokens, LogNormal) and isinstance(workload.output_tokens, Percentiles)
    assert workload.output_tokens.min == 1  # percentiles' min defaults to 1
    uniform = parse_workload({"prompt_tokens": {"min": 64, "max": 2048}, "output_tokens": 128}, ".")
    assert uniform.kind == "distribution"  # told by its keys
    assert isinstance(uniform.prompt_tokens, Uniform) and uniform.output_tokens.value == 128
    named = parse_workload({"prompt_tokens": {"shape": "uniform", "min": 1, "max": 2}}, ".")
    assert isinstance(named.prompt_tokens, Uniform)
    # What a study stores validates back to the same workload.
    assert Workload.model_validate(workload.model_dump(mode="json")) == workload


def test_the_flag_and_the_section_describe_the_same_workloads(tmp_path):
    assert workload_flag_to_dict("prompt=64-2048,output=16-512") == {
        "prompt_tokens": {"min": 64, "max": 2048}, "output_tokens": {"min": 16, "max": 512}}
    assert parse_workload_flag("prompt=64-2048,output=16-512") == parse_workload(
        {"prompt_tokens": {"min": 64, "max": 2048}, "output_tokens": {"min": 16, "max": 512}}, ".")
    flag = parse_workload_flag("prompt=mean:900/stdev:600/min:16/max:8192, output=p50:120/p90:400/p99:900/max:2048")
    assert flag.prompt_tokens == LogNormal(mean=900, stdev=600, min=16, max=8192)
    assert flag.output_tokens == Percentiles(p50=120, p90=400, p99=900, max=2048)
    assert parse_workload_flag("fixed").is_default and parse_workload_flag("kind=fixed").is_default
    assert parse_workload_flag("prompt=300").prompt_tokens.value == 300
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a b c"}])
    from_flag = parse_workload_flag("file=t.jsonl,output=8-16", base_dir=tmp_path)
    assert from_flag.kind == "file" and from_flag.file == tmp_path / "t.jsonl"


def test_a_relative_file_resolves_against_the_space_folder(tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    write_jsonl(tmp_path / "spaces" / "traffic.jsonl", [{"prompt": "one two"}])
    monkeypatch.chdir(tmp_path)  # not the current folder
    workload = parse_workload({"file": "traffic.jsonl"}, tmp_path / "spaces")
    assert workload.kind == "file" and workload.file == tmp_path / "spaces" / "traffic.jsonl"
    assert "traffic.jsonl does not exist (relative paths are read from" in error({"file": "traffic.jsonl"}, tmp_path)


# ------------------------------------------------------------------------------ draws


def test_draws_are_deterministic_and_within_bounds():
    workload = parse_workload({"prompt_tokens": {"mean": 300, "stdev": 400, "min": 32, "max": 1000},
                               "output_tokens": {"min": 4, "max": 9}}, ".")
    sampler = WorkloadSampler(workload, new_tokens=64)
    first = sampler.draw(2000, seed=7)
    assert first == WorkloadSampler(workload, new_tokens=64).draw(2000, seed=7)
    assert first != sampler.draw(2000, seed=8)
    assert all(32 <= r.prompt_tokens <= 1000 and 4 <= r.output_tokens <= 9 for r in first)
    assert {r.output_tokens for r in first} == set(range(4, 10))  # uniform reaches both ends
    assert max(r.prompt_tokens for r in first) == 1000  # the clipped tail lands at max, not redrawn
    assert sampler.draw(0, seed=1) == []
    # Without output_tokens every output is new_tokens.
    assert {r.output_tokens for r in WorkloadSampler(parse_workload({"prompt_tokens": 5}, "."), new_tokens=12).draw(50, 0)} == {12}


def test_a_large_draw_reproduces_the_percentiles():
    workload = parse_workload_flag("prompt=min:16/p50:512/p90:1500/p99:3000/max:4096,output=mean:200/stdev:150/min:1/max:4000")
    sampler = WorkloadSampler(workload, new_tokens=64)
    prompts = sorted(r.prompt_tokens for r in sampler.draw(50_000, seed=1))
    for q, expected in ((0.5, 512), (0.9, 1500), (0.99, 3000)):
        assert prompts[int(q * len(prompts))] == pytest.approx(expected, rel=0.05)
    assert prompts[0] >= 16 and prompts[-1] <= 4096
    outputs = [r.output_tokens for r in sampler.draw(50_000, seed=2)]
    mean = sum(outputs) / len(outputs)
    stdev = (sum((x - mean) ** 2 for x in outputs) / len(outputs)) ** 0.5
    assert mean == pytest.approx(200, rel=0.05) and stdev == pytest.approx(150, rel=0.1)  # the lognormal's moments
    summary = sampler.lengths_summary()
    assert summary["prompt_tokens"] == {"p50": 512, "p90": 1500, "p95": 2333, "p99": 3000, "max": 4096}  # p95: 1500 + 1500 x 5/9, on the line
    assert summary["output_tokens"]["max"] == 4000


def test_over_limit_of_a_distribution_counts_its_tail():
    sampler = WorkloadSampler(parse_workload_flag("prompt=1-1000,output=100"), new_tokens=64)
    count, share = sampler.over_limit(600)  # prompt > 500: half the uniform 1..1000
    assert sampler.population == OVER_LIMIT_DRAWS and count == round(share * OVER_LIMIT_DRAWS)
    assert share == pytest.approx(0.5, abs=0.01)
    assert sampler.over_limit(1100) == (0, 0.0) and sampler.over_limit(100)[1] == 1.0


# ------------------------------------------------------------------------------ files


def test_a_file_workload_counts_over_limit_requests_exactly(tmp_path):
    path = write_jsonl(tmp_path / "traffic.jsonl", [
        {"prompt": "one two three", "answer": "a b"},  # 3 + 2
        {"prompt": "one two three four five six", "answers": ["x", "x y z"]},  # 6 + 3 (the longest answer)
        {"messages": [{"role": "user", "content": "w w w w w w w w"}]},  # 8 + output_tokens
        {"prompt": "p " * 20},  # 20 + output_tokens
        {"query": "q q", "documents": ["d d d"], "relevance": [1]},  # a reranker: 2 + 3, + 0 output
    ])
    workload = parse_workload({"file": path.name, "output_tokens": 4}, tmp_path)
    sampler = WorkloadSampler(workload, new_tokens=64, count_tokens=words,
                              count_answer_tokens=lambda text: len(text.split()))
    assert sorted(sampler.draw(5, seed=0)) == sorted([Request(3, 2), Request(6, 3), Request(8, 4), Request(20, 4), Request(5, 0)])
    assert sampler.population == 5
    assert sampler.over_limit(9) == (2, 0.4)  # 12 and 24 tokens; 9 fits exactly
    assert sampler.over_limit(8) == (3, 0.6)
    assert sampler.over_limit(24) == (0, 0.0)
    summary = sampler.lengths_summary()
    assert summary["prompt_tokens"] == {"p50": 6, "p90": 20, "p95": 20, "p99": 20, "max": 20}
    assert summary["output_tokens"]["max"] == 4
    # Unlabelled examples without output_tokens generate new_tokens.
    bare = WorkloadSampler(parse_workload({"file": str(path)}, "."), new_tokens=64, count_tokens=words)
    assert sorted(r.output_tokens for r in bare.draw(5, seed=0))[-2:] == [64, 64]


def test_file_draws_cycle_through_every_request_in_a_seeded_order(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "w " * n} for n in range(1, 8)])
    sampler = WorkloadSampler(parse_workload({"file": str(path)}, "."), new_tokens=5, count_tokens=words)
    draw = sampler.draw(14, seed=3)
    assert draw == sampler.draw(14, seed=3) and draw != sampler.draw(14, seed=4)
    assert sorted(r.prompt_tokens for r in draw[:7]) == list(range(1, 8)) == sorted(r.prompt_tokens for r in draw[7:])


def test_the_bundled_text_set_as_a_workload():
    workload = parse_workload({"file": str(BUNDLED_TEXT), "output_tokens": {"min": 16, "max": 64}}, ".")
    sampler = WorkloadSampler(workload, new_tokens=32, count_tokens=words)
    lines = [json.loads(line) for line in BUNDLED_TEXT.read_text().splitlines() if line.strip()]
    assert sampler.population == len(lines) == len(sampler.draw(len(lines), seed=0))
    summary = sampler.lengths_summary()
    assert summary["prompt_tokens"]["max"] == max(len(r["prompt"].split()) for r in lines if "prompt" in r)
    assert 1 <= summary["output_tokens"]["p50"] <= summary["output_tokens"]["max"] <= 64
    longest = max(r.total for r in sampler.draw(len(lines), seed=0))
    assert sampler.over_limit(longest) == (0, 0.0)
    count, share = sampler.over_limit(longest - 1)
    assert count >= 1 and share == count / len(lines)
    assert "file" in workload.describe() and f"{len(lines)} requests" in workload.describe()


def test_a_file_workload_needs_a_token_counter(tmp_path):
    workload = parse_workload({"file": str(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a"}]))}, ".")
    with pytest.raises(ValueError, match="count_tokens"):
        WorkloadSampler(workload, new_tokens=4)


# ------------------------------------------------------------------------------ bad workloads, one line each


@pytest.mark.parametrize("raw, expected", [
    ({"kind": "poisson"}, "workload.kind: unknown workload kind 'poisson'; allowed: distribution, file, fixed"),
    ({"kind": "fle", "file": "x"}, "did you mean 'file'?"),
    ({"prompt_tokens": 0}, "workload.prompt_tokens: 0 is below the lower bound 1; use at least 1"),
    ({"prompt_tokens": {"min": -3, "max": 10}}, "workload.prompt_tokens.min: -3 is below the lower bound 1"),
    ({"prompt_tokens": 10, "output_tokens": {"min": 0, "max": 4}}, "workload.output_tokens.min: 0 is below the lower bound 1"),
    ({"prompt_tokens": {"min": 900, "max": 100}}, "workload.prompt_tokens: min 900 is above max 100; make min <= max"),
    ({"prompt_tokens": {"p50": 600, "p90": 500, "max": 4096}},
     "workload.prompt_tokens: percentiles must not decrease: p90 500 is below p50 600; give p90 >= p50"),
    ({"prompt_tokens": {"p50": 600, "max": 500}}, "max 500 is below p50 600"),
    ({"prompt_tokens": {"min": 700, "p50": 600, "max": 5000}}, "p50 600 is below min 700"),
    ({"prompt_tokens": {"mean": 5000, "stdev": 10, "min": 1, "max": 100}},
     "workload.prompt_tokens: mean 5000 is outside [min, max] = [1, 100]; give a mean between min and max"),
    ({"prompt_tokens": {"mean": 50, "stdev": -1, "min": 1, "max": 100}}, "workload.prompt_tokens.stdev: -1 is below the lower bound 0"),
    ({"prompt_tokens": {"min": 1, "max": 2_000_000}},
     f"workload.prompt_tokens.max: 2000000 is above the upper bound {MAX_TOKENS:,}; use at most {MAX_TOKENS:,}"),
    ({"prompt_tokens": 10**9}, "is above the upper bound 1,048,576"),
    ({"prompt_tokens": {"mean": 50, "min": 1, "max": 100}}, "workload.prompt_tokens.stdev is missing; a lognormal length needs"),
    ({"prompt_tokens": {"p90": 50}}, "workload.prompt_tokens.max is missing; a percentiles length needs max, p50"),
    ({"prompt_tokens": {"mean": 50, "stdev": 1, "p50": 40, "max": 100}}, "mixes mean, stdev (lognormal) with p50 (percentiles)"),
    ({"prompt_tokens": {"min": 1, "max": 5, "avg": 3}}, "workload.prompt_tokens.avg: unknown key for a uniform length; allowed: min, max"),
    ({"prompt_tokens": {"shape": "gamma", "min": 1}}, "unknown length shape 'gamma'"),
    ({"prompt_tokens": "long"}, "workload.prompt_tokens: 'long' is not a length; give a number of tokens"),
    ({"prompt_tokens": True}, "True is not a length"),
    ({"prompt_tokens": {}}, "workload.prompt_tokens: is empty"),
    ({"prompt_tokens": {"min": 1.5, "max": 4}}, "workload.prompt_tokens.min: 1.5 is not a whole number of tokens"),
    ({"prompt_token": 5}, "workload.prompt_token: unknown key for a workload; allowed: kind, prompt_tokens, output_tokens, file"),
    ({"kind": "distribution"}, "workload: kind distribution needs prompt_tokens"),
    ({"kind": "fixed", "prompt_tokens": 5}, "workload: kind fixed takes no prompt_tokens"),
    ({"kind": "file"}, "workload: kind file needs file"),
    ("prompts please", "workload must be a mapping"),
])
def test_bad_workloads_are_one_line_naming_the_problem(raw, expected):
    assert expected in error(raw)


def test_bad_workload_files_are_one_line(tmp_path):
    assert "workload.file: " in error({"file": "missing.jsonl"}, tmp_path)
    assert "missing.jsonl does not exist" in error({"file": "missing.jsonl"}, tmp_path)
    assert "is not a file" in error({"file": "."}, tmp_path)
    (tmp_path / "table.csv").write_text("prompt,answer\nhello,world\n")
    message = error({"file": "table.csv"}, tmp_path)
    assert message.startswith("workload.file: ") and "table.csv:1: invalid JSON" in message and "one JSON object per line" in message
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "is empty" in error({"file": "empty.jsonl"}, tmp_path)
    write_jsonl(tmp_path / "noprompt.jsonl", [{"prompt": "ok"}, {"answer": "no prompt"}])
    assert "noprompt.jsonl:2" in error({"file": "noprompt.jsonl"}, tmp_path)
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a"}])
    assert "kind file takes no prompt_tokens" in error({"file": "t.jsonl", "prompt_tokens": 5}, tmp_path)
    assert "kind distribution takes no file" in error({"kind": "distribution", "prompt_tokens": 5, "file": "t.jsonl"}, tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("", "--workload is empty"),
    ("prompt", "--workload: 'prompt' is not key=value"),
    ("prmpt=5", "--workload: unknown key 'prmpt' (did you mean 'prompt'?); allowed: file, kind, output, prompt"),
    ("prompt=64..2048", "--workload prompt: '64..2048' is not a length; write N, MIN-MAX, or key:value"),
    ("prompt=mean:x/stdev:1/min:1/max:9", "--workload prompt.mean: 'x' is not a number"),
    ("prompt=avg:3", "--workload prompt: unknown length key 'avg'"),
    ("prompt=p50:5/p50:6", "--workload prompt: p50 is given twice"),
    ("prompt=5,prompt=6", "--workload: prompt is given twice"),
    ("prompt=", "--workload prompt: no value after '='"),
    ("prompt=2048-64", "--workload prompt: min 2048 is above max 64; make min <= max"),
    ("prompt=0-64", "--workload prompt.min: 0 is below the lower bound 1"),
    ("prompt=-5", "--workload prompt: -5 is below the lower bound 1"),
    ("prompt=1-2000000", "--workload prompt.max: 2000000 is above the upper bound 1,048,576"),
    ("prompt=p50:900/p90:100/max:2000", "--workload prompt: percentiles must not decrease"),
    ("prompt=mean:5000/stdev:1/min:1/max:100", "--workload prompt: mean 5000 is outside [min, max]"),
    ("output=5", "--workload: kind distribution needs prompt=MIN-MAX, e.g. prompt=64-2048"),
    ("kind=poisson", "--workload kind: unknown workload kind 'poisson'"),
    ("file=nothing.jsonl", "--workload file: "),
])
def test_bad_workload_flags_are_one_line(text, expected, tmp_path):
    assert expected in flag_error(text, tmp_path)
