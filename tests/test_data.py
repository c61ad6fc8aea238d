"""The validation-set format: what users write by hand, and one error naming file and line for each mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.data import load_validation_set
from autotune.data.schema import DataError


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_every_kind_of_example(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"png")
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
