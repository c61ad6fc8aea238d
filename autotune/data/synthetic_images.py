"""Deterministic synthetic vision validation sets: images, short frame clips and image reranking.

Everything is drawn with Pillow from a seed, so the same seed gives byte-identical PNGs and JSON
lines (with the same Pillow/zlib build). Images are 448x448 RGB, flat high-contrast colours on
white, so a real VLM can answer every question; the answers are derived from what was drawn.

Files (paths in the JSON lines are relative to the JSONL file, as `autotune.data.schema` reads them):
- `vision.jsonl` + `vision/*.png`: one image per example, `images: [path]`, `category` one of
  colour / shape / count / text / chart; every third example of a task is multiple choice
  (`choices` + `answer`), the others are open questions (`answers`: accepted strings).
- `video.jsonl` + `clip_XX/frame_NNN.png`: `video: "clip_XX"` names a directory of frames (read
  them with `load_video_frames`, sorted by file name).
- `image_rerank.jsonl` + `image_rerank/*.png`: reranking with a text `query`, image `documents`
  (paths) and `document_type: "image"`, graded `relevance` (2 exact, 1 partial, 0 unrelated).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageSequence

from autotune.errors import DataError

SIZE = 448
VIDEO_SIZE = 224
BACKGROUND = (255, 255, 255)

# Flat, saturated colours that stay distinct from each other and from white.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (20, 150, 40),
    "blue": (20, 60, 220),
    "yellow": (240, 200, 0),
    "orange": (245, 120, 0),
    "purple": (130, 30, 170),
    "black": (0, 0, 0),
}
COLOUR_SYNONYMS = {"purple": ["purple", "violet"]}
TEXT_COLOURS = ["red", "green", "blue", "orange", "purple", "black"]  # yellow text on white reads poorly
SHAPES = ["circle", "square", "triangle"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS = ["apple", "house", "water", "river", "music", "bread", "chair", "table",
         "light", "cloud", "horse", "plant", "train", "clock", "stone", "heart"]
BAR_COLOUR = (30, 90, 200)
LETTERS = "ABCD"

VISION_FILE = "vision.jsonl"
VIDEO_FILE = "video.jsonl"
IMAGE_RERANK_FILE = "image_rerank.jsonl"
BUNDLE_NAME = "vision-v1"  # bump when the generator's output changes, so caches rebuild
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


# ------------------------------------------------------------------------------ drawing


def _canvas(size: int = SIZE) -> Image.Image:
    return Image.new("RGB", (size, size), BACKGROUND)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: int, cy: int, half: int, fill: tuple[int, int, int]) -> None:
    """A filled shape in the box [cx-half, cx+half]^2, without anti-aliasing (exact colours)."""
    box = (cx - half, cy - half, cx + half, cy + half)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, AttributeError, OSError):
        return ImageFont.load_default()


def _draw_text(image: Image.Image, text: str, center: tuple[int, int], size: int, fill: tuple[int, int, int],
               max_width: int | None = None) -> None:
    """Text centred on `center`, about `size` pixels tall, shrunk to fit `max_width`."""
    draw = ImageDraw.Draw(image)
    font = _font(size)
    if isinstance(font, ImageFont.FreeTypeFont):
        if max_width is not None:
            while size > 8 and draw.textbbox((0, 0), text, font=font)[2] > max_width:
                size -= 4
                font = _font(size)
        draw.text(center, text, font=font, fill=fill, anchor="mm")
        return
    # No FreeType: render the bitmap default font small and scale it up with nearest neighbour.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    small = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(small).text((1 - left, 1 - top), text, font=font, fill=255)
    scale = max(1, size // max(1, small.height))
    if max_width is not None:
        scale = max(1, min(scale, max_width // small.width))
    mask = small.resize((small.width * scale, small.height * scale), Image.NEAREST)
    image.paste(Image.new("RGB", mask.size, fill), (center[0] - mask.width // 2, center[1] - mask.height // 2), mask)


def _place(rng: random.Random, n: int, half: int, size: int = SIZE, gap: int = 16, margin: int = 12) -> list[tuple[int, int]]:
    """Centres of n non-overlapping boxes of half-width `half`, at least `gap` pixels apart."""
    for _ in range(200):
        centres: list[tuple[int, int]] = []
        for _ in range(2000):
            if len(centres) == n:
                break
            x = rng.randint(margin + half, size - margin - half)
            y = rng.randint(margin + half, size - margin - half)
            if all(max(abs(x - a), abs(y - b)) >= 2 * half + gap for a, b in centres):
                centres.append((x, y))
        if len(centres) == n:
            return centres
    raise ValueError(f"cannot place {n} shapes of size {2 * half} in {size}x{size}")


def _scene(rng: random.Random, colour: str, shape: str, count: int) -> Image.Image:
    """`count` shapes of one kind and colour, separated by white space."""
    image = _canvas()
    draw = ImageDraw.Draw(image)
    if count == 1:
        half = rng.randint(80, 130)
        centres = [(rng.randint(12 + half, SIZE - 12 - half), rng.randint(12 + half, SIZE - 12 - half))]
    else:
        half = rng.randint(24, 36)
        centres = _place(rng, count, half)
    for cx, cy in centres:
        _draw_shape(draw, shape, cx, cy, half, COLOURS[colour])
    return image


def _word_image(word: str, colour: str) -> Image.Image:
    image = _canvas()
    _draw_text(image, word.upper(), (SIZE // 2, SIZE // 2), 110, COLOURS[colour], max_width=SIZE - 40)
    return image


def _bar_chart(heights: list[int]) -> Image.Image:
    """Bars A-D on a black baseline, letters underneath; the bars are the only BAR_COLOUR pixels."""
    image = _canvas()
    draw = ImageDraw.Draw(image)
    base = SIZE - 70
    width, step, left = 64, 96, 40
    draw.rectangle((20, base + 1, SIZE - 20, base + 4), fill=(0, 0, 0))
    for i, height in enumerate(heights):
        x0 = left + i * step
        draw.rectangle((x0, base - height, x0 + width, base), fill=BAR_COLOUR)
        _draw_text(image, LETTERS[i], (x0 + width // 2, base + 36), 40, (0, 0, 0))
    return image


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")  # no timestamps or text chunks: same pixels give the same bytes


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _cycle(rng: random.Random, values: list, n: int) -> list:
    """n values covering `values` as evenly as possible, in a shuffled order (balanced answers)."""
    out: list = []
    while len(out) < n:
        block = list(values)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def _choices(rng: random.Random, answer: str, pool: list[str], k: int = 4) -> list[str]:
    options = [answer, *rng.sample([p for p in pool if p != answer], min(k, len(pool)) - 1)]
    rng.shuffle(options)
    return options


def _example(prompt: str, answers: list[str], image: str, category: str, rng: random.Random, multiple_choice: bool,
             pool: list[str]) -> dict:
    if multiple_choice:
        choices = _choices(rng, answers[0], pool)
        stem = prompt.rsplit(" Answer", 1)[0]
        return {"prompt": f"{stem} Choose one of: {', '.join(choices)}.", "choices": choices, "answer": answers[0],
                "images": [image], "category": category}
    return {"prompt": prompt, "answers": answers, "images": [image], "category": category}


# ------------------------------------------------------------------------------ vision set


def write_vision_set(directory: Path, n_per_task: int = 12, seed: int = 0) -> Path:
    """Write `vision/*.png` and `vision.jsonl` into `directory`; returns the JSONL path.

    Tasks (the `category` field): colour, shape, count, text, chart; n_per_task examples each,
    every third one multiple choice."""
    directory = Path(directory)
    image_dir = directory / "vision"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def add(category: str, i: int, image: Image.Image, prompt: str, answers: list[str], rng: random.Random,
            pool: list[str]) -> None:
        name = f"vision/{category}_{i:03d}.png"
        _save(image, directory / name)
        rows.append(_example(prompt, answers, name, category, rng, i % 3 == 2, pool))

    rng = random.Random(f"{seed}-colour")
    for i, colour in enumerate(_cycle(rng, list(COLOURS), n_per_task)):
        image = _scene(rng, colour, rng.choice(SHAPES), 1)
        add("colour", i, image, "What colour is the shape? Answer with one word.",
            COLOUR_SYNONYMS.get(colour, [colour]), rng, list(COLOURS))

    rng = random.Random(f"{seed}-shape")
    for i, shape in enumerate(_cycle(rng, SHAPES, n_per_task)):
        image = _scene(rng, rng.choice(list(COLOURS)), shape, 1)
        add("shape", i, image, "What shape is shown? Answer with one word.", [shape], rng, SHAPES)

    rng = random.Random(f"{seed}-count")
    for i, count in enumerate(_cycle(rng, list(range(1, 7)), n_per_task)):
        image = _scene(rng, rng.choice(list(COLOURS)), "circle", count)
        add("count", i, image, "How many circles are in the image? Answer with a number.",
            [str(count), NUMBER_WORDS[count]], rng, [str(c) for c in range(1, 7)])

    rng = random.Random(f"{seed}-text")
    for i, word in enumerate(_cycle(rng, WORDS, n_per_task)):
        image = _word_image(word, rng.choice(TEXT_COLOURS))
        add("text", i, image, "What word is written in the image? Answer with the word.", [word], rng, WORDS)

    rng = random.Random(f"{seed}-chart")
    for i, target in enumerate(_cycle(rng, list(range(4)), n_per_task)):
        tallest = i % 2 == 0
        # Four heights at least 30 px apart, so the extreme bar is clear at a glance.
        heights = sorted(rng.sample(range(40, 321, 30), 4))
        extreme = heights.pop(-1 if tallest else 0)
        rng.shuffle(heights)
        heights.insert(target, extreme)
        word = "tallest" if tallest else "shortest"
        add("chart", i, _bar_chart(heights), f"Which bar is {word}? Answer with its letter.", [LETTERS[target]], rng,
            list(LETTERS))

    return _write_jsonl(directory / VISION_FILE, rows)


# ------------------------------------------------------------------------------ video


def write_video_clip(directory: Path, name: str = "clip_00", direction: str = "right", n_frames: int = 8,
                     seed: int = 0) -> Path:
    """Write `directory/name/frame_000.png ...`: a red circle moving left or right across
    `n_frames` frames (224x224), with a static blue square as a distractor. Returns the clip dir."""
    if direction not in ("left", "right"):
        raise ValueError(f"direction must be 'left' or 'right', not {direction!r}")
    if n_frames < 2:
        raise ValueError("a clip needs at least 2 frames")
    rng = random.Random(f"{seed}-{name}-{direction}")
    clip = Path(directory) / name
    clip.mkdir(parents=True, exist_ok=True)
    half = 18
    y = rng.randint(30, VIDEO_SIZE // 2 - 30)
    start, end = 30, VIDEO_SIZE - 30
    if direction == "left":
        start, end = end, start
    square = (rng.randint(30, VIDEO_SIZE - 30), rng.randint(VIDEO_SIZE // 2 + 30, VIDEO_SIZE - 30))
    for f in range(n_frames):
        image = _canvas(VIDEO_SIZE)
        draw = ImageDraw.Draw(image)
        _draw_shape(draw, "square", *square, 16, COLOURS["blue"])
        x = round(start + (end - start) * f / (n_frames - 1))
        _draw_shape(draw, "circle", x, y, half, COLOURS["red"])
        _save(image, clip / f"frame_{f:03d}.png")
    return clip


def write_video_set(directory: Path, n_clips: int = 4, n_frames: int = 8, seed: int = 0) -> Path:
    """Write clips `clip_00 ...` and `video.jsonl` (examples with `video: "clip_XX"`); returns the JSONL path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-video")
    rows = []
    for i, direction in enumerate(_cycle(rng, ["left", "right"], n_clips)):
        name = f"clip_{i:02d}"
        write_video_clip(directory, name, direction, n_frames, seed)
        rows.append({"prompt": "Which direction does the red circle move? Answer left or right.",
                     "answers": [direction], "video": name, "category": "video_direction"})
    return _write_jsonl(directory / VIDEO_FILE, rows)


# ------------------------------------------------------------------------------ image reranking


def _relevance(query: dict, doc: dict) -> int:
    """2 when the document matches every attribute of the query, 1 when it is partly right
    (two of colour/shape/count; or the right word in another colour), else 0."""
    if query["kind"] != doc["kind"]:
        return 0
    if query["kind"] == "word":
        if query["word"] == doc["word"]:
            return 2 if query["colour"] == doc["colour"] else 1
        return 0
    matches = sum(query[k] == doc[k] for k in ("colour", "shape", "count"))
    return {3: 2, 2: 1}.get(matches, 0)


def _query_text(spec: dict) -> str:
    if spec["kind"] == "word":
        return f"the word {spec['word'].upper()} written in {spec['colour']}"
    if spec["count"] == 1:
        return f"a {spec['colour']} {spec['shape']}"
    return f"{NUMBER_WORDS[spec['count']]} {spec['colour']} {PLURAL[spec['shape']]}"


def _variant(rng: random.Random, spec: dict, relevance: int) -> dict:
    """A document spec with the given relevance to the query spec."""
    for _ in range(1000):
        if spec["kind"] == "word":
            if relevance == 2:
                doc = dict(spec)
            elif relevance == 1:
                doc = {**spec, "colour": rng.choice([c for c in TEXT_COLOURS if c != spec["colour"]])}
            elif rng.random() < 0.5:
                doc = {"kind": "word", "word": rng.choice([w for w in WORDS if w != spec["word"]]),
                       "colour": rng.choice(TEXT_COLOURS)}
            else:
                doc = {"kind": "shapes", "colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES),
                       "count": rng.randint(1, 4)}
        else:
            doc = dict(spec)
            if relevance < 2:
                # Change one attribute (partial) or all three (unrelated).
                changed = [rng.choice(["colour", "shape", "count"])] if relevance == 1 else ["colour", "shape", "count"]
                for key in changed:
                    pool = {"colour": list(COLOURS), "shape": SHAPES, "count": [1, 2, 3, 4]}[key]
                    doc[key] = rng.choice([v for v in pool if v != spec[key]])
        if _relevance(spec, doc) == relevance:
            return doc
    raise AssertionError("unreachable: no document spec with the requested relevance")


def _render(rng: random.Random, doc: dict) -> Image.Image:
    if doc["kind"] == "word":
        return _word_image(doc["word"], doc["colour"])
    return _scene(rng, doc["colour"], doc["shape"], doc["count"])


def write_image_rerank_set(directory: Path, n_queries: int = 8, docs_per_query: int = 5, seed: int = 0) -> Path:
    """Write `image_rerank/*.png` and `image_rerank.jsonl`: text queries ("a red circle", "three
    blue squares", "the word APPLE written in red") over image documents, with graded relevance
    and `document_type: "image"`. Each query has one exact match (2), then alternately partial
    matches (1) and unrelated images (0), in a shuffled order. Returns the JSONL path."""
    if docs_per_query < 2:
        raise ValueError("docs_per_query must be at least 2 (one relevant document and one other)")
    directory = Path(directory)
    (directory / "image_rerank").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-image-rerank")
    rows = []
    words = _cycle(rng, WORDS, n_queries)
    for q in range(n_queries):
        kind = ("single", "several", "word")[q % 3]
        if kind == "word":
            spec = {"kind": "word", "word": words[q], "colour": rng.choice(TEXT_COLOURS)}
        else:
            spec = {"kind": "shapes", "colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES),
                    "count": 1 if kind == "single" else rng.randint(2, 4)}
        grades = [2] + [1 if d % 2 else 0 for d in range(1, docs_per_query)]
        rng.shuffle(grades)
        documents = []
        for d, grade in enumerate(grades):
            name = f"image_rerank/q{q:02d}_d{d:02d}.png"
            _save(_render(rng, _variant(rng, spec, grade)), directory / name)
            documents.append(name)
        rows.append({"query": _query_text(spec), "documents": documents, "relevance": grades,
                     "document_type": "image", "category": "image_rerank"})
    return _write_jsonl(directory / IMAGE_RERANK_FILE, rows)


# ------------------------------------------------------------------------------ reading


def _reason(e: Exception) -> str:
    """A short reason for a decoding failure, without the (long) path PIL puts in its messages."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.split(" '")[0] if text.startswith("cannot identify image file") else text


def load_image(path: Path, source: str, line: int) -> Image.Image:
    """Open an image as RGB; any failure is a DataError naming the JSONL file and line and the image:
    `vision.jsonl:7: cannot decode image bad.png (cannot identify image file); give a PNG/JPEG/WebP file`."""
    path = Path(path)
    try:
        shown = path.relative_to(Path(source).parent)
    except ValueError:
        shown = Path(path.name)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(f"{source}:{line}: cannot decode image {shown} ({_reason(e)}); give a PNG/JPEG/WebP file") from e


def load_video_frames(path: Path, source: str | None = None, line: int | None = None) -> list[Image.Image]:
    """The frames of a video as RGB images: a directory of image files (sorted by name), or an
    animated GIF/WebP (or any image file PIL reads, frame by frame). Problems are one DataError
    naming the clip (prefixed with `source:line:` when given)."""
    path = Path(path)
    where = f"{source}:{line}: " if source is not None and line is not None else f"{source}: " if source else ""
    hint = "give a directory of image files or an animated GIF/WebP"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        frames_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not frames_files:
            what = "an empty directory" if not files else f"none of its {len(files)} files is a .png/.jpg/.webp image"
            raise DataError(f"{where}video {path.name}: no frames ({what}); {hint}")
        frames = []
        for frame in frames_files:
            try:
                with Image.open(frame) as image:
                    image.load()
                    frames.append(image.convert("RGB"))
            except Exception as e:
                raise DataError(f"{where}video {path.name}: cannot decode frame {frame.name} ({_reason(e)}); {hint}") from e
        return frames
    if not path.exists():
        raise DataError(f"{where}video {path.name}: no such file or directory; {hint}")
    try:
        with Image.open(path) as image:
            frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except Exception as e:
        raise DataError(f"{where}video {path.name}: cannot decode ({_reason(e)}); {hint}") from e
    if not frames:
        raise DataError(f"{where}video {path.name}: no frames; {hint}")
    return frames


# ------------------------------------------------------------------------------ bundled, cached


def _build_all(directory: Path) -> None:
    write_vision_set(directory)
    write_video_set(directory)
    write_image_rerank_set(directory)


def bundled_vision_dir() -> Path:
    """The cached directory holding the default vision, video and image-rerank sets (built once)."""
    from autotune.models import atomic_build, cache_dir

    # Built in a temporary directory and renamed into place; the last file written marks it done.
    return atomic_build(cache_dir() / "data" / BUNDLE_NAME, _build_all, marker=IMAGE_RERANK_FILE)


def bundled_vision_set() -> Path:
    return bundled_vision_dir() / VISION_FILE


def bundled_video_set() -> Path:
    return bundled_vision_dir() / VIDEO_FILE


def bundled_image_rerank_set() -> Path:
    return bundled_vision_dir() / IMAGE_RERANK_FILE
