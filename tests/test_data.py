"""The validation-set format: what users write by hand, and one error naming file and line for each mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from autotune.data import load_validation_set
from autotune.data.schema import DataError


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_every_kind_of_example(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "white").save(tmp_path / "cat.png")
    path = write(
        tmp_path,
        {"prompt": "2+2?", "answer": "4", "source": "mine"},
        {"messages": [{"role": "user", "content": "Capital of France?"}], "answers": ["Paris", "paris, france"]},
        {"prompt": "Pick", "choices": ["A", "B"], "answer": "B"},
        {"prompt": "What animal?", "images": ["cat.png"], "answer": "cat"},
        {"query": "q", "documents": ["d1", "d2"], "relevance": [2, 0]},
        "",
        {"prompt": "unlabelled"},
    )
    examples = load_validation_set(path)
    assert [e.kind for e in examples] == ["generate", "generate", "choice", "generate", "rerank", "generate"]
    assert examples[0].model_extra == {"source": "mine"}  # unknown fields are kept and ignored
    assert examples[1].accepted_answers == ["Paris", "paris, france"]
    assert [e.labelled for e in examples] == [True, True, True, True, True, False]


@pytest.mark.parametrize(
    "lines, needle",
    [
        ((), "is empty"),
        (({"prompt": "ok"}, "{bad json"), "val.jsonl:2: invalid JSON"),
        (({"answer": "4"},), "val.jsonl:1: give exactly one of 'prompt'"),
        (({"prompt": "x", "messages": []},), "exactly one of 'prompt'"),
        (({"prompt": "x", "answer": "a", "answers": ["a"]},), "not both"),
        (({"prompt": "x", "choices": ["A", "B"], "answer": "C"},), "equal to one of 'choices'"),
        (({"query": "q", "documents": ["a", "b"], "relevance": [1]},), "1 labels for 2 documents"),
        (({"prompt": "x", "images": ["missing.png"]},), "val.jsonl:1: file 'missing.png' does not exist"),
        (([1, 2],), "expected a JSON object"),
        (({"prompt": 5},), "val.jsonl:1: prompt"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, lines: tuple, needle: str) -> None:
    path = write(tmp_path, *lines) if lines else tmp_path / "val.jsonl"
    if not lines:
        path.write_text("\n\n")
    with pytest.raises(DataError, match=None) as info:
        load_validation_set(path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read validation set"):
        load_validation_set(tmp_path / "nope.jsonl")


# A table has the same columns in every row: missing values are nulls (Dataset.from_list takes its
# columns from the first row, so every row names every column).
ROWS = [
    {"prompt": "2+2?", "answers": ["4", "four"], "choices": None, "answer": None},
    {"prompt": "Pick", "answers": None, "choices": ["A", "B"], "answer": "B"},
]


@pytest.mark.parametrize("suffix", [".parquet", ".json"])
def test_datasets_files_load_row_by_row(tmp_path: Path, suffix: str) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / f"val{suffix}"
    table = datasets.Dataset.from_list(ROWS)
    table.to_parquet(str(path)) if suffix == ".parquet" else table.to_json(str(path))
    examples = load_validation_set(path)
    assert [e.kind for e in examples] == ["generate", "choice"]
    assert examples[0].accepted_answers == ["4", "four"]


def test_datasets_row_errors_name_the_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "val.parquet"
    datasets.Dataset.from_list([{"prompt": "ok", "answer": "x"}, {"prompt": None, "answer": "y"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"val.parquet:2: give exactly one of 'prompt'"):
        load_validation_set(path)


def test_datasets_file_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"needs the datasets package \(pip install datasets\)"):
        load_validation_set(tmp_path / "val.parquet")


# ------------------------------------------------------------------------------ visual inputs


def _write_lines(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_image_that_cannot_be_decoded_names_file_and_line(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    data = _write_lines(tmp_path / "set.jsonl", {"prompt": "a", "images": ["ok.png"], "answer": "x"},
                        {"prompt": "b", "images": ["broken.png"], "answer": "y"})
    with pytest.raises(DataError) as e:
        load_validation_set(data)
    message = str(e.value)
    assert "set.jsonl:2:" in message and "broken.png" in message and "\n" not in message


def test_a_video_without_frames_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clip").mkdir()
    data = _write_lines(tmp_path / "set.jsonl", {"prompt": "which way?", "video": "clip", "answer": "left"})
    with pytest.raises(DataError, match=r"set.jsonl:1: video clip: no frames"):
        load_validation_set(data)


def test_more_images_than_the_space_allows(tmp_path: Path) -> None:
    from autotune.data.schema import check_images_per_request

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), "blue").save(tmp_path / name)
    data = _write_lines(tmp_path / "set.jsonl", {"prompt": "one", "images": ["a.png"], "answer": "x"},
                        {"prompt": "three", "images": ["a.png", "b.png", "c.png"], "answer": "y"})
    examples = load_validation_set(data)
    check_images_per_request(data, examples, [1, 3])  # the largest choice covers it
    with pytest.raises(DataError, match=r"set.jsonl:2: 3 images in one request, but the search space allows at most 2"):
        check_images_per_request(data, examples, [1, 2])
