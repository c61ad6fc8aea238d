"""The validation-set format (JSON lines, one example per line).

Fields users write by hand:
- `prompt` (a string) or `messages` (chat messages: [{"role": ..., "content": ...}]) — one of them;
- `answer` (a string) or `answers` (accepted strings), optional;
- `choices` (strings) with `answer` the correct choice, for multiple choice;
- `images` / `video` (paths relative to the file, inside its folder), for vision models;
- `query` + `documents` + `relevance` (graded labels, one per document), for reranking.
Unknown extra fields are kept and ignored.

Bounds: a file of at most MAX_DATA_FILE_BYTES, a line (a table row's prompt text) of at most
MAX_LINE_BYTES, and, against the space's max_length, at most PROMPT_CHARS_PER_TOKEN characters per
token (check_prompt_lengths; the worker truncates what is still too long in tokens). Image and video
paths resolve (symlinks included) inside the data file's folder unless `allow_outside` (the
`--allow-data-outside` flag): anything else is refused with one message, whether or not it exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from autotune.errors import DataError  # defined in errors (synthetic_images raises it too); still importable from here

MAX_DATA_FILE_BYTES = 256 * 2**20  # a validation set is read whole, and by every worker
MAX_LINE_BYTES = 2**20  # one example: a line of JSON, or a table row's prompt text
# No tokenizer makes fewer than one token of 64 characters of text: a prompt longer than
# max_length x 64 characters cannot fit any candidate, whatever the model.
PROMPT_CHARS_PER_TOKEN = 64
ALLOW_OUTSIDE_FLAG = "--allow-data-outside"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


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


def prompt_chars(example: Example) -> int:
    """Characters of text one request of this example sends (for a reranking example, the query
    with its longest text document; image documents count as nothing here)."""
    if example.documents is not None:
        documents = example.documents if example.document_type == "text" else []
        return len(example.query or "") + max((len(d) for d in documents), default=0)
    if example.messages is not None:
        return sum(len(m.content) if isinstance(m.content, str) else len(json.dumps(m.content)) for m in example.messages)
    return len(example.prompt or "") + max((len(c) for c in example.choices or []), default=0)


def _check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        return  # the read that follows names the problem
    if size > MAX_DATA_FILE_BYTES:
        raise DataError(f"validation set {path} is {_mib(size)}, more than the {_mib(MAX_DATA_FILE_BYTES)} a validation set "
                        f"may hold; use fewer or shorter examples (--quality-examples reads only the first N of a file within the limit)")


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


def load_validation_set(path: str | Path, allow_outside: bool = False) -> list[Example]:
    """Read and validate a JSON-lines file (or a `datasets` Parquet/JSON file, row by row); any
    problem is one error naming the file and the line (row). `allow_outside`: image and video paths
    may be absolute or lead out of the file's folder (--allow-data-outside)."""
    path = Path(path)
    _check_size(path)
    if path.suffix in (".parquet", ".json"):
        return _validated(path, _rows_from_datasets_file(path), allow_outside)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read validation set {path}: {e.strerror}; pass an existing .jsonl file") from e
    rows = []
    # JSON lines end in "\n" only (a JSON string may hold U+2028 or a form feed raw).
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if len(raw_line) > MAX_LINE_BYTES:
            raise DataError(f"{path}:{number}: the line is {_mib(len(raw_line))}, more than the {_mib(MAX_LINE_BYTES)} one "
                            "example may hold; shorten the prompt (it could not fit any max_length autotune measures)")
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"validation set {path} is not UTF-8 text (line {number}); save it as UTF-8 JSON lines") from e
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno}); one JSON object per line") from e
    return _validated(path, rows, allow_outside)


def _validated(path: Path, rows: list[tuple[int, object]], allow_outside: bool = False) -> list[Example]:
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
        if prompt_chars(example) > MAX_LINE_BYTES:  # a table row is not bounded by its line
            raise DataError(f"{path}:{number}: the prompt has {prompt_chars(example)} characters, more than the "
                            f"{_mib(MAX_LINE_BYTES)} one example may hold; shorten it")
        _check_visual_files(path, number, example, allow_outside)
        examples.append(example)
    if not examples:
        raise DataError(f"validation set {path} is empty; add one JSON object per line")
    return examples


def resolve_data_path(path: Path, number: int, name: str, what: str, allow_outside: bool) -> Path:
    """Where an image/video path of line `number` of data file `path` points. Unless
    `allow_outside`, it must be relative and resolve (symlinks followed) inside the data file's
    folder; anything else is refused with the same message whether or not the file exists, so a
    data file cannot probe the file system."""
    target = path.parent / name
    if allow_outside:
        return target
    folder = path.parent.resolve()
    if Path(name).is_absolute() or not target.resolve().is_relative_to(folder):
        raise DataError(f"{path}:{number}: {what} path {name!r} is outside the data file's folder; copy it next to "
                        f"{path.name} or pass {ALLOW_OUTSIDE_FLAG}")
    return target


def _check_visual_files(path: Path, number: int, example: Example, allow_outside: bool = False) -> None:
    """Every image decodes and every video has frames, checked when the set is read: a broken file
    is a one-line error naming the file and the line, never a crash in the middle of a study. Paths
    outside the file's folder are refused first (resolve_data_path)."""
    from autotune.data.synthetic_images import load_image, load_video_frames

    images = [*example.images, *(example.documents if example.document_type == "image" and example.documents else [])]
    image_paths = [resolve_data_path(path, number, image, "image", allow_outside) for image in images]
    video_path = resolve_data_path(path, number, example.video, "video", allow_outside) if example.video else None
    for image, target in [*zip(images, image_paths), *([(example.video, video_path)] if example.video else [])]:
        if not target.exists():
            raise DataError(f"{path}:{number}: file {image!r} does not exist (paths are relative to {path.parent})")
    for target in image_paths:
        load_image(target, str(path), number)
    if video_path is not None:
        if video_path.is_dir() and not allow_outside:  # each frame of a folder, too (a frame may be a link)
            for frame in sorted(video_path.iterdir()):
                resolve_data_path(path, number, f"{example.video.rstrip('/')}/{frame.name}", "video frame", allow_outside)
        load_video_frames(video_path, str(path), number)


def check_prompt_lengths(path: Path, examples: list[Example], max_length: int) -> None:
    """Refuse, at read time, a prompt that cannot fit the space's largest max_length in any
    tokenizer: more than max_length x PROMPT_CHARS_PER_TOKEN characters. (Prompts that fit in
    characters but not in tokens are truncated by the worker, with a note in its log.)"""
    limit = max_length * PROMPT_CHARS_PER_TOKEN
    for example in examples:
        chars = prompt_chars(example)
        if chars > limit:
            raise DataError(
                f"{path}:{example.line}: the prompt has {chars} characters, which cannot fit max_length {max_length} "
                f"(at most {limit} characters, {PROMPT_CHARS_PER_TOKEN} per token); shorten it or add a larger max_length "
                "to the search space"
            )


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
