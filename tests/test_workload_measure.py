"""Measuring under a workload (issue 20): the batches built from drawn requests (truncation of
over-limit requests, left padding, padding waste), the per-request samples of a measurement on
CPU with the tiny random model, the fixed default's unchanged Measurement, the workload in the
space file, the --workload flag and the study's identity, and a whole CPU study with `show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from autotune.errors import StudyMismatchError
from autotune.measure.throughput import measure_generation
from autotune.measure.traffic import batch_inputs, build_batches, fit_request, measure_workload, padding_share
from autotune.models import BUNDLED_CONFIG_DIR
from autotune.space import load_space, space_digest
from autotune.spec import Candidate, Measurement, Stat, TuneSpec
from autotune.workload import Request, WorkloadError, WorkloadSampler, parse_workload_flag
from tests.conftest import assert_ok, read_records, run_cli, write_space

REPEATS = 3


# ------------------------------------------------------------------------------ batch building


def test_a_request_within_max_length_is_served_as_drawn() -> None:
    assert fit_request(Request(20, 12), 32) == (Request(20, 12), False)
    assert fit_request(Request(28, 4), 32) == (Request(28, 4), False)  # exactly max_length is within it


def test_an_over_limit_request_loses_prompt_first_and_keeps_one_prompt_token() -> None:
    assert fit_request(Request(40, 8), 32) == (Request(24, 8), True)  # prompt cut, output kept
    assert fit_request(Request(10, 50), 32) == (Request(1, 31), True)  # output alone too long: 1 prompt token
    assert fit_request(Request(5, 0), 32) == (Request(5, 1), False)  # a generating request makes a token


def test_batches_pad_to_the_longest_prompt_and_generate_the_longest_output() -> None:
    drawn = [Request(8, 2), Request(20, 6), Request(40, 3), Request(4, 4), Request(9, 9)]
    batches = build_batches(drawn, batch_size=2, max_length=32)
    assert len(batches) == 2  # the fifth request would make a partial batch: dropped
    first, second = batches
    assert first.requests == (Request(8, 2), Request(20, 6)) and first.truncated == 0
    assert (first.prompt_length, first.new_tokens, first.left_padding()) == (20, 6, [12, 0])
    assert second.requests == (Request(29, 3), Request(4, 4)) and second.truncated == 1
    assert (second.prompt_length, second.new_tokens, second.left_padding()) == (29, 4, [0, 25])
    # Every row is P + G long: 2 x 26 and 2 x 33 processed, 36 and 40 of them the requests' own.
    assert first.processed_tokens == 52 and first.useful_tokens == 36
    assert padding_share(batches) == pytest.approx(1 - (36 + 40) / (52 + 66))
    assert padding_share(build_batches([Request(10, 4)] * 4, 2, 32)) == 0.0  # equal lengths: no waste


def test_batch_inputs_are_left_padded_with_a_zero_mask() -> None:
    batch = build_batches([Request(3, 2), Request(7, 5)], 2, 32)[0]
    input_ids, mask = batch_inputs(batch, vocab_size=1024, pad_id=999, seed=0)
    assert input_ids.shape == mask.shape == (2, 7)
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7]
    assert input_ids[0, :4].tolist() == [999] * 4
    assert bool((input_ids[mask.bool()] < 1024).all())
    again, _ = batch_inputs(batch, vocab_size=1024, pad_id=999, seed=0)
    assert torch.equal(input_ids, again)  # seeded


def test_drawn_batches_count_over_limit_requests_and_never_drop_them() -> None:
    sampler = WorkloadSampler(parse_workload_flag("prompt=8-60,output=2-6"), new_tokens=4)
    requests = sampler.draw(REPEATS * 4, seed=0, max_length=32)
    batches = build_batches(requests, 4, 32)
    over = sum(1 for r in requests if r.total > 32)
    assert over > 0 and sum(b.truncated for b in batches) == over
    assert sum(len(b.requests) for b in batches) == len(requests)  # every drawn request is measured
    assert all(r.total <= 32 and r.prompt_tokens >= 1 for b in batches for r in b.requests)
    count, share = sampler.over_limit(32)
    assert 0 < share < 1 and count == round(share * sampler.population)


class WordTokenizer:
    """One token per word; no chat template (the Prompter joins the messages)."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [len(w) for w in text.split()]}


def test_the_worker_counts_a_file_workloads_prompts_with_the_loaded_tokenizer(tmp_path: Path) -> None:
    from autotune.models import resolve_model
    from autotune.space import workload_section
    from autotune.workload import parse_workload
    from autotune.worker.process import _Worker

    (tmp_path / "traffic.jsonl").write_text('{"prompt": "one two three"}\n{"prompt": "a b c d e f g", "answer": "yes it is"}\n')
    section = workload_section(parse_workload({"file": "traffic.jsonl", "output_tokens": 5}, tmp_path))
    worker = _Worker(resolve_model("tiny-qwen2", True), "cpu", None)
    with pytest.raises(ValueError, match="tokenizer"):
        worker._sampler(section, new_tokens=4)  # a shape-only model has none
    worker.tokenizer = WordTokenizer()
    sampler = worker._sampler(section, new_tokens=4)
    assert sorted(sampler.draw(2, seed=0)) == [Request(3, 5), Request(7, 3)]  # unlabelled: output_tokens; labelled: its answer
    assert sampler.over_limit(8) == (1, 0.5)
    assert worker._sampler(section, new_tokens=4) is sampler  # kept for the load


# ------------------------------------------------------------------------------ measurement on CPU


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(BUNDLED_CONFIG_DIR / "tiny-qwen2.json")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _measure(model, cand: Candidate, flag: str, repeats: int = REPEATS) -> Measurement:
    workload = parse_workload_flag(flag)
    sampler = WorkloadSampler(workload, new_tokens=cand.new_tokens)
    batches = build_batches(sampler.draw(repeats * cand.batch_size, 0, cand.max_length), cand.batch_size, cand.max_length)
    return measure_workload(model, cand, "cpu", batches, 1024, workload=workload.model_dump(mode="json", exclude_none=True),
                            over_limit_share=sampler.over_limit(cand.max_length)[1])


def test_a_workload_records_one_latency_sample_per_request(tiny_model) -> None:
    cand = Candidate(dtype="fp32", batch_size=4, max_length=32, new_tokens=4)
    calls = []
    workload = parse_workload_flag("prompt=8-60,output=1-6")
    sampler = WorkloadSampler(workload, new_tokens=4)
    requests = sampler.draw(REPEATS * 4, 0, 32)
    batches = build_batches(requests, 4, 32)
    m = measure_workload(tiny_model, cand, "cpu", batches, 1024, workload={"kind": "distribution"},
                         over_limit_share=0.25, before_each_run=lambda: calls.append(1))
    requests_timed = REPEATS * cand.batch_size
    assert len(m.ttft_s.samples) == len(m.request_latency_s.samples) == requests_timed
    served = [r for b in batches for r in b.requests]
    assert len(m.tpot_s.samples) == sum(1 for r in served if r.output_tokens > 1)  # one-token requests have no TPOT
    for stat in (m.output_tokens_per_s, m.prefill_tokens_per_s, m.requests_per_s):
        assert len(stat.samples) == REPEATS  # throughput: one sample per batch
    # Per request: the batch's TTFT and whole time; throughput counts only the requests' own tokens.
    for i, batch in enumerate(batches):
        ttft, e2e = m.ttft_s.samples[4 * i], m.request_latency_s.samples[4 * i]
        assert m.ttft_s.samples[4 * i:4 * i + 4] == [ttft] * 4 and m.request_latency_s.samples[4 * i:4 * i + 4] == [e2e] * 4
        assert m.output_tokens_per_s.samples[i] == pytest.approx(sum(r.output_tokens for r in batch.requests) / e2e)
        assert m.prefill_tokens_per_s.samples[i] == pytest.approx(sum(r.prompt_tokens for r in batch.requests) / ttft)
    assert m.workload == {"kind": "distribution"} and m.workload_over_limit_share == 0.25
    assert m.workload_truncated == sum(1 for r in requests if r.total > 32) > 0
    assert m.padding_share == pytest.approx(padding_share(batches)) and 0 < m.padding_share < 1
    assert m.peak_memory_gib > 0 and m.warmup_s > 0 and m.measure_s > 0
    # The worst case and the first batch untimed, then one generate() per batch (its first token
    # timed inside it, as a server runs it).
    assert len(calls) == 2 + len(batches)


def test_short_prompts_run_faster_than_the_fixed_worst_case(tiny_model) -> None:
    """16-token prompts against the fixed shape's 512 of the same candidate, 4 new tokens each."""
    cand = Candidate(dtype="fp32", batch_size=2, max_length=516, new_tokens=4)
    fixed = measure_generation(tiny_model, cand, "cpu", repeats=REPEATS, vocab_size=1024)
    short = _measure(tiny_model, cand, "prompt=16,output=4")
    assert len(short.ttft_s.samples) == REPEATS * 2 and len(fixed.ttft_s.samples) == REPEATS
    assert short.padding_share == 0.0 and short.workload_truncated == 0 and short.workload_over_limit_share == 0.0
    assert short.ttft_s.median < fixed.ttft_s.median / 2, (short.ttft_s, fixed.ttft_s)
    assert short.request_latency_s.median < fixed.request_latency_s.median, (short.request_latency_s, fixed.request_latency_s)
    # The worst case still ran first: the peak covers the 512-token batch.
    assert short.peak_memory_gib > 0


def test_the_fixed_default_measures_todays_shape(tiny_model) -> None:
    cand = Candidate(dtype="fp32", batch_size=2, max_length=24, new_tokens=4)
    m = measure_generation(tiny_model, cand, "cpu", repeats=REPEATS, vocab_size=1024)
    stats = {name: getattr(m, name) for name in Measurement.model_fields if isinstance(getattr(m, name), Stat)}
    assert len(stats) == 7 and all(len(s.samples) == REPEATS for s in stats.values())
    assert (m.workload, m.workload_over_limit_share, m.workload_truncated, m.padding_share) == (None,) * 4
    # A trials.jsonl written before workloads existed (no such keys) still loads.
    old = m.model_dump(mode="json", exclude={"workload", "workload_over_limit_share", "workload_truncated", "padding_share"})
    assert Measurement.model_validate(old) == m


# ------------------------------------------------------------------------------ space, flag, identity


def test_the_space_section_is_resolved_and_the_fixed_default_leaves_the_digest_alone(tmp_path: Path) -> None:
    (tmp_path / "traffic.jsonl").write_text('{"prompt": "hello there"}\n')
    plain = load_space(write_space(tmp_path / "plain.yaml"))
    fixed = load_space(write_space(tmp_path / "fixed.yaml", workload={"kind": "fixed"}))
    mixed = load_space(write_space(tmp_path / "mixed.yaml", workload={"prompt_tokens": {"min": 8, "max": 24}}))
    from_file = load_space(write_space(tmp_path / "file.yaml", workload={"file": "traffic.jsonl"}))
    assert plain.workload is None and fixed.workload is None
    assert mixed.workload == {"kind": "distribution", "prompt_tokens": {"shape": "uniform", "min": 8, "max": 24}}
    assert from_file.workload["file"] == str((tmp_path / "traffic.jsonl").resolve())
    assert space_digest(plain) == space_digest(fixed) == space_digest(mixed)  # the workload is its own identity part


def test_a_bad_space_section_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", workload={"prompt_tokens": {"min": 30, "max": 8}})
    with pytest.raises(WorkloadError) as err:
        load_space(path)
    assert str(err.value).startswith(f"search space {path}: workload.prompt_tokens") and "\n" not in str(err.value)


def _open(tmp_path: Path, out: Path, space: Path, **spec):
    from autotune.study import open_study

    return open_study(TuneSpec(model="tiny-qwen2", random_weights=True, space=space, trials=1, out=out, device="cpu", **spec))


def test_the_flag_replaces_the_section_and_is_part_of_the_identity(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", workload={"prompt_tokens": 12})
    out = tmp_path / "out"
    ctx = _open(tmp_path, out, space, workload="prompt=8-24,output=2-6")
    assert ctx.space.workload["prompt_tokens"] == {"shape": "uniform", "min": 8, "max": 24}
    assert json.loads(ctx.study.user_attrs["workload"]) == ctx.space.workload
    _open(tmp_path, out, space, workload="prompt=8-24,output=2-6")  # the same workload resumes
    with pytest.raises(StudyMismatchError, match="different workload"):
        _open(tmp_path, out, space)  # the section's workload (prompt 12) is another


def test_a_study_without_a_workload_stays_resumable_and_refuses_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autotune.study.setup as setup

    space = write_space(tmp_path / "space.yaml")
    ctx = _open(tmp_path, tmp_path / "new", space)
    assert ctx.study.user_attrs["workload"] == "" and ctx.space.workload is None
    # A study stored by an autotune before workloads has no "workload" attribute at all.
    identity = setup._identity
    with monkeypatch.context() as patch:
        patch.setattr(setup, "_identity", lambda *a: {k: v for k, v in identity(*a).items() if k != "workload"})
        old = _open(tmp_path, tmp_path / "old", space)
    assert "workload" not in old.study.user_attrs
    _open(tmp_path, tmp_path / "old", space)
    _open(tmp_path, tmp_path / "old", space, workload="fixed")  # the fixed default is what it measured
    with pytest.raises(StudyMismatchError, match="different workload"):
        _open(tmp_path, tmp_path / "old", space, workload="prompt=8-24")


@pytest.mark.parametrize("flag, needle", [
    ("prompt=30-8", "--workload prompt: min 30 is above max 8"),
    ("prompt=8-24,tokens=3", "--workload: unknown key 'tokens'"),
])
def test_cli_refuses_a_bad_workload_with_one_line_and_no_output(tmp_path: Path, flag: str, needle: str) -> None:
    out = tmp_path / "out"
    result = run_cli("tune", "--model", "tiny-qwen2", "--random-weights", "--workload", flag, "--out", str(out), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: " + needle), result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_study_under_a_workload_records_per_request_samples_and_show_prints_it(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", dtype=["fp32"], attn_implementation=["sdpa"], batch_size=[1, 2],
                        max_length=[32], new_tokens=4)
    out = tmp_path / "out"
    result = run_cli("tune", "--space", str(space), "--workload", "prompt=8-24,output=2-6", "--trials", "2", "--device", "cpu",
                     "--confirm-top", "0", "--out", str(out))
    assert_ok(result)
    recs = [r for r in read_records(out) if r.state == "measured"]
    assert {r.candidate.batch_size for r in recs} == {1, 2}
    for r in recs:
        m = r.outcome.measurement
        n = REPEATS * r.candidate.batch_size
        assert len(m.ttft_s.samples) == len(m.tpot_s.samples) == len(m.request_latency_s.samples) == n
        assert len(m.output_tokens_per_s.samples) == REPEATS
        assert m.workload["prompt_tokens"] == {"shape": "uniform", "min": 8, "max": 24}
        assert m.workload_over_limit_share == 0.0 and m.workload_truncated == 0  # 24 + 6 <= 32
        assert 0 <= m.padding_share < 1
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["measured"]["workload"]["output_tokens"] == {"shape": "uniform", "min": 2, "max": 6}
    shown = run_cli("show", str(out))
    assert_ok(shown)
    line = next(line for line in shown.stdout.splitlines() if line.startswith("workload: "))
    assert "prompt tokens uniform 8-24; output tokens uniform 2-6" in line
    assert "0.0% of requests over max_length" in line and "p50/p95/p99 TTFT" in line


def test_compiled_candidates_count_only_graphs_compiled_inside_the_timed_runs(tiny_model, monkeypatch) -> None:
    """Each batch's shape is compiled by an untimed run before its timed one: graphs compiled then
    are expected, graphs compiled inside a timed run are not (their compile time is in the figure)."""
    import autotune.measure.traffic as traffic

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    real = traffic.timed_batch_generate
    shapes = iter(range(2, 1000))

    def compiling(*args, **kwargs):
        compiled(torch.ones(next(shapes)))  # a new shape on every call: one graph each
        return real(*args, **kwargs)

    monkeypatch.setattr(traffic, "timed_batch_generate", compiling)
    cand = Candidate(dtype="fp32", batch_size=2, max_length=32, new_tokens=4, compile=True)
    m = _measure(tiny_model, cand, "prompt=8-20,output=2-4")
    batches = REPEATS
    # calls: the first batch untimed, then per batch an untimed compile run and the timed run
    assert m.compile_stats is not None and m.compile_stats.graphs == 1 + 2 * batches
    assert m.compile_stats.graphs_while_timed == batches
    assert _measure(tiny_model, cand.model_copy(update={"compile": False}), "prompt=8-20,output=2-4").compile_stats is None


def test_with_the_cache_length_fixed_each_batch_is_timed_cold(tiny_model, monkeypatch) -> None:
    """rewarm_each_batch=False (the capacity check, after fixing the cache length): no untimed re-run
    of a batch's own inputs before its timed run, the first batch's included (the padded path is
    warmed by a worst-case batch of its own), so the timed run meets its shape as a server does."""
    import autotune.measure.traffic as traffic

    runs: list[int] = []
    real = traffic.timed_batch_generate

    def counting(model, input_ids, *args, **kwargs):
        runs.append(int(input_ids[0, -1]))  # the batch's inputs, by a token of its first row
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(traffic, "timed_batch_generate", counting)
    cand = Candidate(dtype="fp32", batch_size=2, max_length=32, new_tokens=4, compile=True)
    workload = parse_workload_flag("prompt=8-20,output=2-4")
    sampler = WorkloadSampler(workload, new_tokens=cand.new_tokens)
    batches = build_batches(sampler.draw(REPEATS * 2, 0, cand.max_length), 2, cand.max_length)
    for rewarm, expected in ((None, 1 + 2 * REPEATS), (False, 1 + REPEATS)):
        runs.clear()
        measure_workload(tiny_model, cand, "cpu", batches, 1024, workload={}, over_limit_share=0.0, rewarm_each_batch=rewarm)
        assert len(runs) == expected  # the padded path warmed once, then each batch once or twice
        assert (len(set(runs)) < len(runs)) == (rewarm is None)  # twice: the same inputs back to back
