"""Issue 17, items 4 and 5: a validation set's images and videos stay inside its folder (one
message for every refused path, whether or not it exists; --allow-data-outside opts out, and
reaches the worker that re-reads the set), and its size is bounded: the file, each line, each
prompt (against the space's max_length at read time, in tokens where the worker tokenizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from autotune.data import load_validation_set
from autotune.data.schema import (
    MAX_DATA_FILE_BYTES,
    MAX_LINE_BYTES,
    PROMPT_CHARS_PER_TOKEN,
    DataError,
    Example,
    check_prompt_lengths,
)
from tests.test_cli_errors import VALID_SPACE, assert_one_line_error, run_cli, write


def dataset(folder: Path, *rows: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path)
    return path


def refused(path: Path, name: str, line: int = 2, what: str = "image") -> str:
    return (f"{path}:{line}: {what} path {name!r} is outside the data file's folder; copy it next to {path.name} "
            f"or pass --allow-data-outside")


FINE = {"prompt": "fine", "images": ["ok.png"], "answer": "x"}


# ------------------------------------------------------------------------------ item 4: confinement


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    image(data / "ok.png")
    secret = image(tmp_path / "secret" / "cat.png")
    return {"data": data, "secret": secret}


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "dotdot-inside-first", "symlink"])
def test_paths_outside_the_folder_are_refused_with_one_message(layout: dict[str, Path], kind: str) -> None:
    data, secret = layout["data"], layout["secret"]
    if kind == "symlink":
        (data / "link.png").symlink_to(secret)
    name = {"absolute": str(secret), "dotdot": "../secret/cat.png", "dotdot-inside-first": "sub/../../secret/cat.png",
            "symlink": "link.png"}[kind]
    path = dataset(data, FINE, {"prompt": "q", "images": [name], "answer": "x"})
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    assert str(info.value) == refused(path, name)


def test_the_message_does_not_say_whether_the_file_exists(layout: dict[str, Path]) -> None:
    data = layout["data"]
    messages = []
    for name in ("../secret/cat.png", "../secret/dog.png", "/etc/shadow", "/nonexistent/x.png"):
        path = dataset(data, FINE, {"prompt": "q", "images": [name], "answer": "x"})
        with pytest.raises(DataError) as info:
            load_validation_set(path)
        messages.append(str(info.value).replace(repr(name), "NAME"))
    assert len(set(messages)) == 1, messages


def test_videos_documents_and_video_frames_are_confined_too(layout: dict[str, Path], tmp_path: Path) -> None:
    data, secret = layout["data"], layout["secret"]
    clip = data / "clip"
    clip.mkdir()
    image(clip / "0.png")
    path = dataset(data, FINE, {"prompt": "q", "video": "../secret", "answer": "x"})
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    assert str(info.value) == refused(path, "../secret", what="video")
    path = dataset(data, FINE, {"query": "q", "documents": ["ok.png", str(secret)], "document_type": "image"})
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    assert str(info.value) == refused(path, str(secret))
    (clip / "1.png").symlink_to(secret)  # a frame of a video folder inside, linked outside
    path = dataset(data, FINE, {"prompt": "q", "video": "clip", "answer": "x"})
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    assert str(info.value) == refused(path, "clip/1.png", what="video frame")


def test_inside_paths_and_the_opt_in_still_load(layout: dict[str, Path]) -> None:
    data, secret = layout["data"], layout["secret"]
    image(data / "sub" / "dog.png")
    (data / "inner-link.png").symlink_to(data / "sub" / "dog.png")
    path = dataset(data, FINE, {"prompt": "q", "images": ["sub/../sub/dog.png", "inner-link.png"], "answer": "x"})
    assert [e.images for e in load_validation_set(path)][1] == ["sub/../sub/dog.png", "inner-link.png"]
    path = dataset(data, FINE, {"prompt": "q", "images": ["../secret/cat.png", str(secret)], "answer": "x"})
    assert load_validation_set(path, allow_outside=True)[1].images == ["../secret/cat.png", str(secret)]


def test_cli_refuses_outside_images_and_allow_data_outside_reaches_the_quality_setup(layout: dict[str, Path],
                                                                                    tmp_path: Path) -> None:
    data = layout["data"]
    path = dataset(data, FINE, {"prompt": "q", "images": ["../secret/cat.png"], "answer": "x"})
    space = write(tmp_path / "space.yaml", VALID_SPACE)
    common = ["tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--data", str(path), "--out", "out"]
    assert_one_line_error(run_cli(common, tmp_path), refused(path, "../secret/cat.png"))
    # With the opt-in the set is read, and the next problem is the model's (a text-only model).
    assert_one_line_error(run_cli([*common, "--allow-data-outside"], tmp_path), "images or video", "text-only")
    assert not (tmp_path / "out" / "study.db").exists()


def test_the_opt_in_travels_to_the_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The worker re-reads the set: the study's request carries the opt-in, and measure_quality
    passes it to load_validation_set."""
    import autotune.data
    from autotune.spec import Candidate, TuneSpec
    from autotune.study import QualitySetup
    from autotune.worker.process import measure_quality

    assert TuneSpec(allow_data_outside=True).allow_data_outside
    setup = QualitySetup(tmp_path / "val.jsonl", "contains", None, None, tmp_path / "ref.pt", None, allow_data_outside=True,
                         max_prompt_tokens=960)
    request = setup.request(Candidate(dtype="fp32", batch_size=1, max_length=1024, new_tokens=64))
    assert request.allow_data_outside and request.max_prompt_tokens == 960
    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs, path=path)
        raise RuntimeError("stop here")

    monkeypatch.setattr(autotune.data, "load_validation_set", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        measure_quality(None, None, request, "cpu")
    assert seen == {"path": str(tmp_path / "val.jsonl"), "allow_outside": True}


# ------------------------------------------------------------------------------ item 5: size bounds


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "val.jsonl"
    with path.open("wb") as f:  # sparse: no disk, no reading
        f.truncate(MAX_DATA_FILE_BYTES + 1)
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    message = str(info.value)
    assert str(path) in message and "256 MiB" in message and "\n" not in message


def test_a_line_over_the_limit_is_refused_naming_file_line_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "val.jsonl"
    big = json.dumps({"prompt": "x" * (MAX_LINE_BYTES + 10)})
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + big + "\n")
    with pytest.raises(DataError) as info:
        load_validation_set(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and "1 MiB" in message and "\n" not in message, message


def test_a_huge_prompt_in_a_table_row_is_refused(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "val.parquet"
    datasets.Dataset.from_list([{"prompt": "fine"}, {"prompt": "y" * (MAX_LINE_BYTES + 1)}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"val\.parquet:2: .*1 MiB"):
        load_validation_set(path)


def test_prompts_that_cannot_fit_max_length_are_refused_at_read_time(tmp_path: Path) -> None:
    limit = 16 * PROMPT_CHARS_PER_TOKEN
    examples = [Example(prompt="fine"), Example(messages=[{"role": "user", "content": "z" * (limit + 1)}]),
                Example(query="q", documents=["short", "d" * limit])]
    for i, e in enumerate(examples, start=1):
        e._line = i
    with pytest.raises(DataError) as info:
        check_prompt_lengths(tmp_path / "val.jsonl", examples, 16)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'val.jsonl'}:2: ") and "max_length 16" in message, message
    check_prompt_lengths(tmp_path / "val.jsonl", examples[:1], 16)


def test_cli_refuses_a_prompt_longer_than_the_space_allows(tmp_path: Path) -> None:
    path = dataset(tmp_path / "data", {"prompt": "fine", "answer": "x"}, {"prompt": "w " * 5000, "answer": "x"})
    space = write(tmp_path / "space.yaml", VALID_SPACE)  # max_length 16
    result = run_cli(["tune", "--model", "tiny-qwen2", "--random-weights", "--space", str(space), "--data", str(path),
                      "--out", "out"], tmp_path)
    assert_one_line_error(result, f"{path}:2:", "max_length 16")
    assert result.returncode == 2
    assert not (tmp_path / "out" / "study.db").exists()


class WordTokenizer:
    """One token per word; no chat template (the Prompter joins the messages)."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [len(w) for w in text.split()]}


def test_prompts_over_the_token_limit_are_truncated_with_a_note(capsys: pytest.CaptureFixture) -> None:
    from autotune.measure.prompting import Prompter

    prompter = Prompter(WordTokenizer(), max_prompt_tokens=10)
    long = Example(prompt=" ".join(["aa"] * 50) + " end")
    long._line = 7
    ids = prompter.example(long).ids
    assert len(ids) == 10 and ids[-1] == 3  # the end of the prompt (the question, the generation prompt) is kept
    note = capsys.readouterr().out
    assert "line 7" in note and "51 tokens" in note and "10" in note and note.count("\n") == 1
    assert len(prompter.example(Example(prompt="short one")).ids) == 2
    assert len(prompter.rerank("q", " ".join(["d"] * 40)).ids) == 10


def test_a_long_rerank_document_is_cut_and_the_query_kept(capsys: pytest.CaptureFixture) -> None:
    """Cutting a rerank prompt at its start (as a generate prompt is cut) would drop the instruction
    and the query, and rank every document against nothing: the CI run of 2026-12-02 saw the
    embedded reranker's NDCG fall from >0.8 to 0.71 that way. The document's end is cut instead."""
    from autotune.loading import load_tokenizer
    from autotune.measure.prompting import Prompter
    from autotune.models import materialize, resolve_model

    ref = resolve_model(None)
    tokenizer = load_tokenizer(ref, materialize(ref))
    query = "How long should I boil an egg for a hard yolk?"
    document = " ".join(f"sentence {i} about rivers and routers." for i in range(60))
    full = Prompter(tokenizer).rerank(query, document).ids
    cut = Prompter(tokenizer, max_prompt_tokens=120).rerank(query, document, line=3).ids
    assert len(full) > 300 and 110 <= len(cut) <= 120
    text = tokenizer.decode(cut)
    assert query in text and "sentence 0 about" in text and "sentence 59" not in text
    assert cut[-5:] == full[-5:]  # the chat template's end (the generation prompt) is kept
    note = capsys.readouterr().out
    assert "line 3" in note and "document was cut" in note and note.count("\n") == 1
