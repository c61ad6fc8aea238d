"""Bad input to the `autotune` CLI ends in one `error:` line on stderr, never a traceback.

Every test runs the real CLI in a subprocess. For user errors it checks a non-zero exit code,
exactly one non-empty stderr line that starts with ``error:`` and names the problem, no Python
traceback, and, where a study already existed in the output directory, that its files are
byte-identical afterwards.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import conftest

STUDY_FILES = ("study.db", "trials.jsonl", "best.yaml")
STUDY_NAME = "tiny-qwen2-cpu"  # default name: <model>-<device>

VALID_SPACE = """\
dtype: [fp32]
quantization: [none]
attn_implementation: [sdpa]
batch_size: [1]
max_length: [16]
new_tokens: 4
repeats: 3
"""


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the CLI in `cwd`, so a default output dir never lands in the repo."""
    return conftest.run_cli(*args, cwd=cwd, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, one non-empty `error:` line naming the problem, no traceback; returns the line."""
    assert result.returncode != 0, f"exit code 0 for a bad input; stdout:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error:") and line.removeprefix("error:").strip(), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in STUDY_FILES}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def valid_space(tmp_path: Path) -> Path:
    return write(tmp_path / "space.yaml", VALID_SPACE)


def tune_args(space: Path, out: Path, *extra: str) -> list[str]:
    """A cheap, otherwise valid `tune` command line (random-weights tiny model on CPU, one trial)."""
    return [
        "tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space),
        "--trials", "1", "--device", "cpu", "--out", str(out), *extra,
    ]


# ------------------------------------------------------------------------------ model


def test_missing_model_path(tmp_path: Path, valid_space: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        ["tune", "--model", "/nonexistent/dir", "--space", str(valid_space), "--device", "cpu", "--out", str(out)],
        tmp_path,
    )
    assert_one_line_error(result, "/nonexistent/dir", "not found")
    assert not out.exists(), "a rejected command created the output directory"


@pytest.mark.parametrize(
    ("config_text", "needle"),
    [
        pytest.param("{bad", "not valid JSON", id="invalid-json"),
        pytest.param("[1, 2, 3]", "no 'model_type'", id="not-a-mapping"),
        pytest.param(json.dumps({"hidden_size": 64}), "no 'model_type'", id="no-model-type"),
    ],
)
def test_unreadable_model_config(tmp_path: Path, valid_space: Path, config_text: str, needle: str) -> None:
    model_dir = tmp_path / "model"
    write(model_dir / "config.json", config_text)
    out = tmp_path / "out"
    result = run_cli(
        ["tune", "--model", str(model_dir), "--random-weights", "--space", str(valid_space),
         "--device", "cpu", "--out", str(out)],
        tmp_path,
    )
    assert_one_line_error(result, "config.json", needle)
    assert not out.exists(), "a rejected command created the output directory"


# ------------------------------------------------------------------------------ search space


@pytest.mark.parametrize(
    ("space_text", "needles"),
    [
        pytest.param("dtype: [fp32\nbatch_size: [1]\n", ("not valid YAML",), id="yaml-syntax"),
        pytest.param(VALID_SPACE + "batchsize: [1]\n", ("'batchsize'", "unknown key"), id="unknown-key"),
        pytest.param(
            VALID_SPACE.replace("quantization: [none]", "quantization: [nf5]"),
            ("'nf5'", "allowed:", "bnb-nf4", "none"),
            id="unknown-quantization",
        ),
        pytest.param(
            VALID_SPACE.replace("attn_implementation: [sdpa]", "attn_implementation: [flash]"),
            ("'flash'", "allowed:", "sdpa", "eager"),
            id="unknown-attention",
        ),
        pytest.param(VALID_SPACE.replace("repeats: 3", "repeats: 1000000000000"),
                     ("key 'repeats'", "upper bound 100", "use at most 100"), id="absurd-repeats"),
        pytest.param(VALID_SPACE.replace("batch_size: [1]", "batch_size: [1, 100000]"),
                     ("key 'batch_size'", "upper bound 65,536", "use at most 65,536"), id="absurd-batch-size"),
    ],
)
def test_malformed_space(tmp_path: Path, space_text: str, needles: tuple[str, ...]) -> None:
    space = write(tmp_path / "bad-space.yaml", space_text)
    out = tmp_path / "out"
    result = run_cli(tune_args(space, out), tmp_path)
    assert_one_line_error(result, "bad-space.yaml", *needles)
    assert result.returncode == 2
    assert not out.exists(), "a rejected command created the output directory"


@pytest.mark.parametrize(("flags", "needles"), [
    (("--trials", "1000000000"), ("--trials", "upper bound 100,000", "use at most 100,000")),
    (("--confirm-repeats", "100000"), ("--confirm-repeats", "upper bound 100", "use at most 100")),
])
def test_absurd_numbers_are_refused_when_read(tmp_path: Path, valid_space: Path, flags: tuple[str, ...],
                                              needles: tuple[str, ...]) -> None:
    """Issue 17: an absurd value of a numeric setting is one `error:` line, exit 2, before anything runs."""
    out = tmp_path / "out"
    args = tune_args(valid_space, out)
    at = args.index(flags[0]) if flags[0] in args else None
    if at is not None:
        del args[at:at + 2]
    result = run_cli([*args, *flags], tmp_path)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert not out.exists()


# ------------------------------------------------------------------------------ device and budget


def test_cuda_without_gpu(tmp_path: Path, valid_space: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --device cuda is valid here")
    out = tmp_path / "out"
    args = tune_args(valid_space, out)
    args[args.index("--device") + 1] = "cuda"
    result = run_cli(args, tmp_path)
    assert_one_line_error(result, "--device cuda", "no CUDA GPU")
    assert not out.exists(), "a rejected command created the output directory"


@pytest.mark.parametrize(
    ("budget", "needles"),
    [
        pytest.param("100000GiB", ("--memory-budget", "more than cpu has"), id="above-device-memory"),
        pytest.param("lots", ("--memory-budget", "'lots'"), id="malformed"),
    ],
)
def test_bad_memory_budget(tmp_path: Path, valid_space: Path, budget: str, needles: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    result = run_cli(tune_args(valid_space, out, "--memory-budget", budget), tmp_path)
    assert_one_line_error(result, *needles)
    assert not out.exists(), "a rejected command created the output directory"


# ------------------------------------------------------------------------------ output directory


def test_output_dir_under_a_file(tmp_path: Path, valid_space: Path) -> None:
    # As root, chmod does not stop writes; a regular file as the parent makes mkdir fail for anyone.
    blocker = write(tmp_path / "file.txt", "not a directory\n")
    out = blocker / "out"
    result = run_cli(tune_args(valid_space, out), tmp_path)
    assert_one_line_error(result, str(out), "not writable")
    assert blocker.read_text() == "not a directory\n"


# ------------------------------------------------------------------------------ existing study


@pytest.fixture(scope="module")
def existing_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-trial study (spawns a worker, ~15 s), created once for the module."""
    root = tmp_path_factory.mktemp("study")
    space = write(root / "space.yaml", VALID_SPACE)
    out = root / "out"
    result = run_cli(tune_args(space, out), root, timeout=600)
    assert result.returncode == 0, f"creating the study failed:\n{result.stdout}\n{result.stderr}"
    for name in STUDY_FILES:
        assert (out / name).is_file(), f"the study run wrote no {name}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("space_text", "extra", "needle"),
    [
        pytest.param(VALID_SPACE.replace("batch_size: [1]", "batch_size: [1, 2]"), (), "space", id="different-space"),
        pytest.param(VALID_SPACE, ("--objective", "latency"), "objective", id="different-objective"),
        pytest.param(VALID_SPACE, ("--slo", "e2e_p95=5s"), "slo", id="different-slo"),
    ],
)
def test_existing_study_with_different_identity(
    existing_study: Path, tmp_path: Path, space_text: str, extra: tuple[str, ...], needle: str
) -> None:
    before = snapshot(existing_study)
    space = write(tmp_path / "other-space.yaml", space_text)
    result = run_cli(tune_args(space, existing_study, *extra), tmp_path)
    assert_one_line_error(result, repr(STUDY_NAME), "different", needle)
    assert snapshot(existing_study) == before, "a refused resume changed the existing study's files"


# ------------------------------------------------------------------------------ usage and `show`


def test_unknown_option(tmp_path: Path) -> None:
    result = run_cli(["tune", "--frobnicate"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "No such option" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "missing-dir"])
def test_show_without_trials(tmp_path: Path, exists: bool) -> None:
    target = tmp_path / "not-a-run"
    if exists:
        target.mkdir()
    result = run_cli(["show", str(target)], tmp_path)
    assert_one_line_error(result, str(target), "trials.jsonl")


@pytest.mark.parametrize("url, needle", [("foo://x", "foo://x"), ("postgresql://u@127.0.0.1:1/db", "postgresql")])
def test_unusable_storage(tmp_path: Path, valid_space: Path, url: str, needle: str) -> None:
    result = run_cli(tune_args(valid_space, tmp_path / "out", "--storage", url), tmp_path)
    assert_one_line_error(result, "cannot open --storage", needle)


# ------------------------------------------------------------------------------ vision and rerankers

VISION_SPACE = VALID_SPACE.replace("max_length: [16]", "max_length: [256]") + "max_pixels: [50176]\nimages_per_prompt: [1]\n"


def test_vision_knob_on_a_text_only_model(tmp_path: Path) -> None:
    space = write(tmp_path / "space.yaml", VISION_SPACE)
    result = run_cli(["tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--out", "out"], tmp_path)
    assert_one_line_error(result, "vision knobs", "max_pixels", "text-only")
    assert not (tmp_path / "out" / "study.db").exists()


def _vision_data(tmp_path: Path, rows: list[dict]) -> Path:
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), "green").save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "empty_clip").mkdir(exist_ok=True)
    (tmp_path / "clip").mkdir(exist_ok=True)
    for i in range(2):
        Image.new("RGB", (32, 32), "red").save(tmp_path / "clip" / f"{i}.png")
    return write(tmp_path / "vision.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
@pytest.mark.parametrize("row, needles", [
    ({"prompt": "q", "images": ["broken.png"], "answer": "x"}, ("vision.jsonl:2:", "cannot decode image broken.png")),
    ({"prompt": "q", "video": "empty_clip", "answer": "x"}, ("vision.jsonl:2:", "video empty_clip: no frames")),
    ({"prompt": "q", "images": ["a.png", "b.png"], "answer": "x"}, ("vision.jsonl:2:", "2 images", "at most 1")),
    ({"prompt": "q", "video": "clip", "answer": "x"}, ("vision.jsonl:2:", "has a video", "video_frames")),
])
def test_bad_vision_data_is_one_line_and_keeps_the_study(tmp_path: Path, row: dict, needles: tuple[str, ...]) -> None:
    space = write(tmp_path / "space.yaml", VISION_SPACE)
    out = tmp_path / "out"
    common = ["tune", "--model", "tiny-qwen2-vl", "--random-weights", "--space", str(space), "--out", str(out), "--device", "cpu"]
    conftest.assert_ok(run_cli([*common, "--trials", "1"], tmp_path, timeout=600))
    before = {name: (out / name).read_bytes() for name in ("study.db", "trials.jsonl")}
    data = _vision_data(tmp_path, [{"prompt": "fine", "images": ["a.png"], "answer": "x"}, row])
    assert_one_line_error(run_cli([*common, "--trials", "2", "--data", str(data)], tmp_path), *needles)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_image_data_for_a_text_only_model(tmp_path: Path) -> None:
    data = _vision_data(tmp_path, [{"prompt": "fine", "images": ["a.png"], "answer": "x"}])
    space = write(tmp_path / "space.yaml", VALID_SPACE)
    result = run_cli(["tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--data", str(data),
                      "--out", "out"], tmp_path)
    assert_one_line_error(result, "images or video", "text-only")


def test_reranker_without_yes_no_tokens(tmp_path: Path) -> None:
    """A checkpoint whose tokenizer has no 'yes'/'no' token cannot score relevance."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from autotune.models import bundled_configs

    ckpt = tmp_path / "no-yes-no"
    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "maybe": 4}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(ckpt)
    config = AutoConfig.from_pretrained(bundled_configs()["tiny-qwen2"])
    AutoModelForCausalLM.from_config(config).save_pretrained(ckpt)
    space = write(tmp_path / "space.yaml", VALID_SPACE)
    result = run_cli(["tune", "--model", str(ckpt), "--kind", "reranker", "--space", str(space), "--out", "out"], tmp_path)
    assert_one_line_error(result, "'yes'", "reranker")


def test_unknown_kind_names_the_allowed_ones(tmp_path: Path) -> None:
    result = run_cli(["tune", "--kind", "embedder", "--out", "out"], tmp_path)
    assert_one_line_error(result, "unknown kind 'embedder'", "causal-lm", "reranker")


# ------------------------------------------------------------------------------ issue 17: bad input before any file


@pytest.mark.parametrize(
    ("floor", "needle"),
    [
        pytest.param("98", "--min-quality 98 is a fraction of the reference's score; did you mean 0.98?", id="percent"),
        pytest.param("1.5", "--min-quality 1.5 is a fraction of the reference's score; did you mean 0.015?", id="above-one"),
        pytest.param("250", "--min-quality 250 is a fraction of the reference's score; it must be ≤ 1", id="above-100"),
        pytest.param("abs:60", "did you mean abs:0.6?", id="absolute-percent"),
    ],
)
def test_relative_floor_above_one_is_refused_before_any_file(tmp_path: Path, valid_space: Path, floor: str,
                                                             needle: str) -> None:
    """A floor no candidate can meet (a relative floor > 1, the likely typo 98 for 98%) is refused at
    once: nothing is resolved, no output directory is created."""
    out = tmp_path / "out"
    result = run_cli(tune_args(valid_space, out, "--min-quality", floor), tmp_path)
    line = assert_one_line_error(result, needle)
    assert "--min-quality: --min-quality" not in line
    assert not out.exists(), "a refused --min-quality created the output directory"


@pytest.mark.slow
def test_relative_floor_above_one_keeps_an_existing_study(existing_study: Path, tmp_path: Path) -> None:
    before = snapshot(existing_study)
    mtimes = {p.name: p.stat().st_mtime_ns for p in existing_study.iterdir()}
    result = run_cli(tune_args(write(tmp_path / "space.yaml", VALID_SPACE), existing_study, "--min-quality", "98"), tmp_path)
    assert_one_line_error(result, "did you mean 0.98?")
    assert snapshot(existing_study) == before
    assert {p.name: p.stat().st_mtime_ns for p in existing_study.iterdir()} == mtimes


def test_relative_floor_bounds_in_the_spec() -> None:
    from pydantic import ValidationError

    from autotune.spec import TuneSpec, parse_min_quality

    assert parse_min_quality("1") == ("relative", 1.0)  # "no worse than the reference" stays allowed
    assert parse_min_quality("0.98") == ("relative", 0.98)
    assert parse_min_quality("abs:1") == ("absolute", 1.0)
    for bad in ("1.5", "1.0001", "98", "abs:1.5"):
        with pytest.raises(ValidationError):
            TuneSpec(min_quality=bad)


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        pytest.param("bogus://x", ("cannot open --storage", "bogus://x", "unknown storage scheme"), id="unknown-scheme"),
        pytest.param("postgresql+pg8000://u:s3cr3t@127.0.0.1/db", ("cannot open --storage", "driver is missing"),
                     id="missing-driver"),
        pytest.param("postgresql//u:s3cr3t@127.0.0.1/db", ("cannot open --storage",), id="no-scheme-separator"),
        # A well-formed URL whose server is not there (port 1): refused only when connecting.
        pytest.param("postgresql://u:s3cr3t@127.0.0.1:1/db", ("cannot open --storage",), id="no-server"),
    ],
)
def test_bad_storage_url_creates_no_output_dir(tmp_path: Path, valid_space: Path, url: str, needles: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    result = run_cli(tune_args(valid_space, out, "--storage", url), tmp_path)
    line = assert_one_line_error(result, *needles)
    assert "s3cr3t" not in result.stderr + result.stdout, line
    assert not out.exists(), "a refused --storage left an (empty) output directory behind"


def test_bad_storage_url_for_a_worker_creates_no_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "worker-out"
    result = run_cli(["worker", "--storage", "bogus://x", "--study", "s", "--device", "cpu", "--out", str(out)], tmp_path)
    assert_one_line_error(result, "cannot open --storage", "unknown storage scheme")
    assert not out.exists()
