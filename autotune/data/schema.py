"""The validation-set format (JSON lines, one example per line).

Fields users write by hand:
- `prompt` (a string) or `messages` (chat messages: [{"role": ..., "content": ...}]) — one of them;
- `answer` (a string) or `answers` (accepted strings), optional;
- `choices` (strings) with `answer` the correct choice, for multiple choice;
- `images` / `video` (paths relative to the file), for vision models;
- `query` + `documents` + `relevance` (graded labels, one per document), for reranking.
Unknown extra fields are kept and ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from autotune.errors import AutotuneError


class DataError(AutotuneError):
    pass


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list


class Example(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str | None = None
    messages: list[Message] | None = None
    answer: str | None = None
    answers: list[str] | None = None
    choices: list[str] | None = None
    images: list[str] = Field(default_factory=list)
    video: str | None = None
    query: str | None = None
    documents: list[str] | None = None
    relevance: list[float] | None = None
    document_type: str = Field(default="text", pattern="^(text|image)$", description="'image': documents are image paths")
    _line: int = PrivateAttr(default=0)  # where it was read, for errors found later (e.g. too many images)

    @property
    def line(self) -> int:
        return self._line

    @model_validator(mode="after")
    def _one_task(self) -> Example:
        if self.query is not None or self.documents is not None:
            if self.query is None or not self.documents:
                raise ValueError("a reranking example needs both 'query' and a non-empty 'documents' list")
            if self.relevance is not None and len(self.relevance) != len(self.documents):
                raise ValueError(f"'relevance' has {len(self.relevance)} labels for {len(self.documents)} documents")
            return self
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (chat messages)")
        if self.answer is not None and self.answers is not None:
            raise ValueError("give 'answer' or 'answers', not both")
        if self.choices is not None:
            if len(self.choices) < 2:
                raise ValueError("'choices' needs at least two options")
            if self.answer is None or self.answer not in self.choices:
                raise ValueError("multiple choice needs 'answer' equal to one of 'choices'")
        return self

    @property
    def kind(self) -> str:
        if self.documents is not None:
            return "rerank"
        return "choice" if self.choices is not None else "generate"

    @property
    def accepted_answers(self) -> list[str]:
        """Every accepted reference answer (empty when the example is unlabelled)."""
        if self.answers is not None:
            return list(self.answers)
        return [self.answer] if self.answer is not None else []

    @property
    def labelled(self) -> bool:
        return bool(self.accepted_answers) or self.relevance is not None


def _rows_from_datasets_file(path: Path) -> list[tuple[int, object]]:
    """A Hugging Face `datasets` Parquet or JSON file, read with the datasets package."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading {path.name} needs the datasets package (pip install datasets), or convert it to JSON lines") from None
    if not path.is_file():
        raise DataError(f"cannot read validation set {path}: no such file; pass an existing file")
    try:
        table = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
    except Exception as e:  # pyarrow/datasets raise many types for unreadable files
        raise DataError(f"datasets could not read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    # "Lines" of a table are its rows, counted from 1 like the lines of a JSON-lines file.
    return [(number, {k: v for k, v in row.items() if v is not None}) for number, row in enumerate(table, start=1)]


def load_validation_set(path: str | Path) -> list[Example]:
    """Read and validate a JSON-lines file (or a `datasets` Parquet/JSON file, row by row); any
    problem is one error naming the file and the line (row)."""
    path = Path(path)
    if path.suffix in (".parquet", ".json"):
        return _validated(path, _rows_from_datasets_file(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read validation set {path}: {e.strerror}; pass an existing .jsonl file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"validation set {path} is not UTF-8 text; save it as UTF-8 JSON lines") from e
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno}); one JSON object per line") from e
    return _validated(path, rows)


def _validated(path: Path, rows: list[tuple[int, object]]) -> list[Example]:
    examples = []
    for number, raw in rows:
        if not isinstance(raw, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(raw).__name__}")
        try:
            example = Example.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise DataError(f"{path}:{number}: {where + ': ' if where else ''}{msg}") from e
        example._line = number
        _check_visual_files(path, number, example)
        examples.append(example)
    if not examples:
        raise DataError(f"validation set {path} is empty; add one JSON object per line")
    return examples


def _check_visual_files(path: Path, number: int, example: Example) -> None:
    """Every image decodes and every video has frames, checked when the set is read: a broken file
    is a one-line error naming the file and the line, never a crash in the middle of a study."""
    from autotune.data.synthetic_images import load_image, load_video_frames

    images = [*example.images, *(example.documents if example.document_type == "image" and example.documents else [])]
    for image in [*images, *([example.video] if example.video else [])]:
        if not (path.parent / image).exists():
            raise DataError(f"{path}:{number}: file {image!r} does not exist (paths are relative to {path.parent})")
    for image in images:
        load_image(path.parent / image, str(path), number)
    if example.video:
        load_video_frames(path.parent / example.video, str(path), number)


def check_images_per_request(path: Path, examples: list[Example], images_per_prompt: list[int] | None) -> None:
    """A validation example may not carry more images than any candidate of the space claims to serve."""
    allowed = max(images_per_prompt) if images_per_prompt else 0
    for example in examples:
        if len(example.images) > allowed:
            raise DataError(
                f"{path}:{example.line}: {len(example.images)} images in one request, but the search space allows at most "
                f"{allowed} (images_per_prompt); raise images_per_prompt or use fewer images per example"
            )


def check_video_frames(path: Path, examples: list[Example], video_frames: list[int] | None) -> None:
    """An example with a video needs candidates whose requests carry video frames."""
    if video_frames and max(video_frames) > 0:
        return
    example = next(e for e in examples if e.video)
    raise DataError(
        f"{path}:{example.line}: the example has a video, but the search space sends no video frames "
        "(video_frames); add video_frames: [8] to the space or drop the video examples"
    )
