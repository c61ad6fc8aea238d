"""Synthetic vision sets: deterministic, loadable, and with answers that match the pixels drawn."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotune.data import load_validation_set
from autotune.data.schema import DataError
from autotune.data.synthetic_images import (
    BAR_COLOUR,
    COLOURS,
    NUMBER_WORDS,
    bundled_image_rerank_set,
    bundled_video_set,
    bundled_vision_set,
    load_image,
    load_video_frames,
    write_image_rerank_set,
    write_video_clip,
    write_video_set,
    write_vision_set,
)

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {"vision": write_vision_set(root), "video": write_video_set(root), "rerank": write_image_rerank_set(root)}


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ pixel analysis (independent of the generator)


def components(mask: np.ndarray) -> list[dict]:
    """Connected components of a boolean mask (runs per row, merged across rows with union-find):
    bounding box and pixel count of each, sorted left to right."""
    runs: list[tuple[int, int, int]] = []  # (row, start, end)
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    for y, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        current = []
        for start, end in zip(edges[::2], edges[1::2]):
            index = len(runs)
            runs.append((y, int(start), int(end)))
            parent.append(index)
            for p in previous:
                _, ps, pe = runs[p]
                if ps < end and start < pe:  # overlapping columns: 4-connected
                    parent[find(index)] = find(p)
            current.append(index)
        previous = current
    groups: dict[int, dict] = {}
    for i, (y, start, end) in enumerate(runs):
        g = groups.setdefault(find(i), {"y0": y, "y1": y, "x0": start, "x1": end - 1, "area": 0})
        g["y0"], g["y1"] = min(g["y0"], y), max(g["y1"], y)
        g["x0"], g["x1"] = min(g["x0"], start), max(g["x1"], end - 1)
        g["area"] += end - start
    return sorted(groups.values(), key=lambda g: g["x0"])


def shape_of(component: dict) -> str:
    fill = component["area"] / ((component["x1"] - component["x0"] + 1) * (component["y1"] - component["y0"] + 1))
    if fill > 0.93:
        return "square"
    if 0.65 < fill < 0.9:
        return "circle"
    assert fill < 0.6, f"fill ratio {fill:.2f} is no known shape"
    return "triangle"


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def ink(array: np.ndarray) -> np.ndarray:
    return np.any(array != WHITE, axis=-1)


def colours_drawn(array: np.ndarray) -> dict[tuple[int, int, int], int]:
    values, counts = np.unique(array[ink(array)], axis=0, return_counts=True)
    return {tuple(int(c) for c in v): int(n) for v, n in zip(values, counts)}


def colour_name(rgb: tuple[int, int, int]) -> str:
    return next(name for name, value in COLOURS.items() if value == rgb)


def describe(path: Path) -> dict:
    """What an image shows: shapes (one flat colour, no anti-aliasing) or a word (anti-aliased text)."""
    array = pixels(path)
    drawn = colours_drawn(array)
    if len(drawn) == 1:
        found = components(ink(array))
        kinds = {shape_of(c) for c in found}
        assert len(kinds) == 1, f"{path.name}: mixed shapes {kinds}"
        return {"kind": "shapes", "colour": colour_name(next(iter(drawn))), "shape": kinds.pop(), "count": len(found)}
    return {"kind": "word", "colour": colour_name(max(drawn, key=drawn.get)), "mask": ink(array)}


def reference(example) -> str:
    return example.answer if example.choices is not None else example.accepted_answers[0]


# ------------------------------------------------------------------------------ determinism and loading


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = 1 if name == "c" else 0
        write_vision_set(tmp_path / name, seed=seed)
        write_video_set(tmp_path / name, seed=seed)
        write_image_rerank_set(tmp_path / name, seed=seed)
    a, b, c = (tree_hashes(tmp_path / name) for name in ("a", "b", "c"))
    assert len(a) > 100 and a == b
    assert a.keys() == c.keys() and a != c  # another seed draws other images


def test_every_example_loads_and_its_images_open(generated: dict[str, Path]) -> None:
    vision = load_validation_set(generated["vision"])
    assert len(vision) == 5 * 12
    assert {e.model_extra["category"] for e in vision} == {"colour", "shape", "count", "text", "chart"}
    assert {e.kind for e in vision} == {"generate", "choice"}
    for line, example in enumerate(vision, start=1):
        assert len(example.images) == 1
        image = load_image(generated["vision"].parent / example.images[0], "vision.jsonl", line)
        assert image.mode == "RGB" and image.size == (448, 448)
    rerank = load_validation_set(generated["rerank"])
    for line, example in enumerate(rerank, start=1):
        assert example.kind == "rerank" and example.document_type == "image"
        for document in example.documents:
            load_image(generated["rerank"].parent / document, "image_rerank.jsonl", line)
    video = load_validation_set(generated["video"])
    assert all(e.video and (generated["video"].parent / e.video).is_dir() for e in video)


# ------------------------------------------------------------------------------ answers match the pixels


def test_answers_match_what_was_drawn(generated: dict[str, Path]) -> None:
    root = generated["vision"].parent
    seen = set()
    for example in load_validation_set(generated["vision"]):
        category, answer = example.model_extra["category"], reference(example)
        array = pixels(root / example.images[0])
        if category == "colour":
            drawn = colours_drawn(array)
            assert len(drawn) == 1 and colour_name(next(iter(drawn))) == answer
        elif category == "shape":
            found = components(ink(array))
            assert len(found) == 1 and shape_of(found[0]) == answer
        elif category == "count":
            count = len(components(ink(array)))
            assert answer == str(count)
            if example.choices is None:
                assert example.accepted_answers == [str(count), NUMBER_WORDS[count]]
        elif category == "chart":
            bars = components(np.all(array == BAR_COLOUR, axis=-1))
            assert len(bars) == 4
            heights = [b["y1"] - b["y0"] for b in bars]
            pick = max if "tallest" in example.prompt else min
            assert answer == "ABCD"[heights.index(pick(heights))]
            assert sorted(heights).count(pick(heights)) == 1  # no tie
        else:
            assert category == "text" and answer.isalpha() and ink(array).sum() > 2000
        if example.choices is not None:
            assert example.answer in example.choices and all(c in example.prompt for c in example.choices)
        seen.add(category)
    assert seen == {"colour", "shape", "count", "text", "chart"}


def test_video_direction_matches_the_frames(generated: dict[str, Path]) -> None:
    examples = load_validation_set(generated["video"])
    assert {e.accepted_answers[0] for e in examples} == {"left", "right"}
    for example in examples:
        frames = load_video_frames(generated["video"].parent / example.video)
        assert len(frames) == 8
        red = [np.flatnonzero(np.all(np.asarray(f) == COLOURS["red"], axis=-1).any(axis=0)).mean() for f in frames]
        assert red == sorted(red) or red == sorted(red, reverse=True)
        assert example.accepted_answers == ["right" if red[-1] > red[0] else "left"]


def test_image_rerank_relevance_matches_the_documents(generated: dict[str, Path]) -> None:
    root = generated["rerank"].parent
    examples = load_validation_set(generated["rerank"])
    assert len(examples) == 8
    queries = {"single": 0, "several": 0, "word": 0}
    for example in examples:
        assert len(example.relevance) == len(example.documents) == 5
        assert 2 in example.relevance and set(example.relevance) <= {0, 1, 2}
        docs = [describe(root / d) for d in example.documents]
        word = re.fullmatch(r"the word ([A-Z]+) written in (\w+)", example.query)
        if word:
            queries["word"] += 1
            exact = docs[example.relevance.index(2)]
            assert exact["kind"] == "word" and exact["colour"] == word.group(2)
            for doc, grade in zip(docs, example.relevance):
                same_word = doc["kind"] == "word" and np.array_equal(doc["mask"], exact["mask"])
                same_colour = doc["kind"] == "word" and doc["colour"] == word.group(2)
                assert grade == (2 if same_word and same_colour else 1 if same_word else 0), example.query
            continue
        number, colour, shape = re.fullmatch(r"(\w+) (\w+) (circle|square|triangle)s?", example.query).groups()
        count = 1 if number == "a" else NUMBER_WORDS.index(number)
        queries["single" if count == 1 else "several"] += 1
        for doc, grade in zip(docs, example.relevance):
            if doc["kind"] == "word":
                assert grade == 0
                continue
            matches = (doc["colour"] == colour) + (doc["shape"] == shape) + (doc["count"] == count)
            assert grade == {3: 2, 2: 1}.get(matches, 0), (example.query, doc, grade)
    assert all(queries.values()), queries


# ------------------------------------------------------------------------------ errors name the file


def test_load_image_on_a_corrupt_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "bad.png", "vision.jsonl", 7)
    message = str(info.value)
    assert message.startswith("vision.jsonl:7: ") and "bad.png" in message and "cannot identify image file" in message
    assert "\n" not in message and str(tmp_path) not in message

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=r"vision.jsonl:3: cannot decode image cut.png"):
        load_image(tmp_path / "cut.png", "vision.jsonl", 3)
    with pytest.raises(DataError, match=r"vision.jsonl:4: cannot decode image missing.png \(No such file"):
        load_image(tmp_path / "missing.png", "vision.jsonl", 4)
    assert load_image(good, "vision.jsonl", 1).getpixel((0, 0)) == (200, 10, 10)


def test_load_video_frames(tmp_path: Path) -> None:
    (tmp_path / "clip_03").mkdir()
    with pytest.raises(DataError, match=r"^video clip_03: no frames \(an empty directory\)"):
        load_video_frames(tmp_path / "clip_03")
    (tmp_path / "clip_03" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"^v.jsonl:2: video clip_03: no frames"):
        load_video_frames(tmp_path / "clip_03", "v.jsonl", 2)

    clip = write_video_clip(tmp_path, "clip_00", "left", n_frames=5)
    frames = load_video_frames(clip)
    assert len(frames) == 5 and all(f.mode == "RGB" for f in frames)

    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    assert len(load_video_frames(gif)) == 5
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 32)
    with pytest.raises(DataError, match=r"video broken.mp4: cannot decode"):
        load_video_frames(tmp_path / "broken.mp4")
    (tmp_path / "clip_00" / "frame_009.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"video clip_00: cannot decode frame frame_009.png"):
        load_video_frames(clip)


# ------------------------------------------------------------------------------ bundled sets, cached


def test_bundled_sets_build_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    vision = bundled_vision_set()
    assert vision == tmp_path / "cache" / "data" / "vision-v1" / "vision.jsonl"
    rerank, video = bundled_image_rerank_set(), bundled_video_set()
    assert rerank.parent == video.parent == vision.parent
    for path in (vision, rerank, video):
        assert load_validation_set(path)
    before = tree_hashes(vision.parent)
    stamp = vision.stat().st_mtime_ns
    assert bundled_vision_set() == vision and vision.stat().st_mtime_ns == stamp  # not rebuilt
    assert tree_hashes(vision.parent) == before
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == ["vision-v1"]  # no temporary left
