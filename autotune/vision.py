"""Vision inputs for image-text-to-text models and rerankers: the image processor (the checkpoint's
own, or one built locally from the config for shape-only models), synthetic request images, and
the token layout of a request (text, then per image <vision_start> <image_pad>×k <vision_end>, and
a video's tokens, with Qwen3-VL's per-group timestamps).

The number of visual tokens is what the processor makes of an image under `max_pixels`
(`size.longest_edge` in transformers 5): grid t×h×w patches merged merge_size² to one token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from autotune.errors import AutotuneError
from autotune.models import ModelRef
from autotune.spec import Candidate

# Qwen2-VL's processor default lower bound (56×56); Qwen3-VL uses the same patch-merge scheme.
DEFAULT_MIN_PIXELS = 56 * 56
# Qwen2/Qwen3 vocabulary ids of "yes" and "no", for shape-only rerankers that have no tokenizer.
QWEN_YES_NO_IDS = (9693, 2152)
# Tokens of a Qwen3-VL video timestamp such as "<1.5 seconds>" in Qwen's vocabulary.
TIMESTAMP_TOKENS = 6
# The frame rate a frame directory is taken to have: Qwen3-VL's timestamps need one, and the
# bundled clips are sampled at 2 frames per second.
DEFAULT_VIDEO_FPS = 2.0


class CandidateShapeError(AutotuneError):
    """The candidate's claimed request cannot exist (e.g. its images alone exceed max_length)."""


def image_size(candidate: Candidate) -> tuple[int, int]:
    width, height = (int(v) for v in (candidate.image_size or "1280x720").split("x"))
    return width, height


def build_image_processor(ref: ModelRef, source: str, max_pixels: int | None):
    """The processor that turns images into patches for this model, bounded by max_pixels (None:
    the processor's own bound)."""
    config = ref.config()
    vision = config.get("vision_config", {})
    processor = None
    if ref.kind == "pretrained":
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError):
            processor = None  # a checkpoint without preprocessor_config.json: build one from the config
    if processor is None:
        from transformers import Qwen2VLImageProcessor

        kwargs: dict[str, Any] = {
            "patch_size": vision.get("patch_size", 14),
            "merge_size": vision.get("spatial_merge_size", 2),
            "temporal_patch_size": vision.get("temporal_patch_size", 2),
        }
        if config.get("model_type") == "qwen3_vl":  # Qwen3-VL normalises to [-1, 1]
            kwargs.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        processor = Qwen2VLImageProcessor(**kwargs)
    if max_pixels is not None:
        min_pixels = min(DEFAULT_MIN_PIXELS, max_pixels)
        processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return processor


def synthetic_images(n: int, width: int, height: int, seed: int = 0) -> list:
    """Deterministic photo-like test images (smooth gradients plus noise) of the request's size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for i in range(n):
        base = np.stack([(x * (i + 1) % 256), (y * 2 % 256), ((x + y) % 256)], axis=-1).astype(np.int16)
        noise = rng.integers(-20, 20, size=base.shape)
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


@dataclass
class VisionBatch:
    input_ids: Any
    attention_mask: Any
    model_inputs: dict  # pixel_values, image_grid_thw
    visual_tokens_per_request: int
    images: list  # kept to time the CPU preprocessing again, apart from the model
    videos: list

    def preprocess_again(self, processor, max_pixels: int) -> float:
        return _timed_inputs(processor, self.images, self.videos, max_pixels)[1]


def visual_tokens(grid_thw, merge_size: int) -> list[int]:
    return [int(t * h * w) // (merge_size**2) for t, h, w in grid_thw.tolist()]


def preprocess(processor, images: list) -> dict:
    out = processor(images=images, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule (as in transformers' processors): both sides multiples of `factor`,
    the aspect ratio kept, the pixel count inside [min_pixels, max_pixels]."""
    import math

    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def preprocess_video(processor, frames: list, max_pixels: int) -> dict:
    """Frames -> (pixel_values_videos, video_grid_thw) the way transformers' Qwen2-VL video
    processor lays them out (its own class needs torchvision, which CPU installs often lack):
    every frame resized to one smart_resize'd size, normalised, the frame count padded to a
    multiple of temporal_patch_size by repeating the last frame, then patches ordered
    (t, h-blocks, w-blocks, merge_h, merge_w) with (channel, time, patch_h, patch_w) inside."""
    import numpy as np
    import torch
    from PIL import Image

    patch, merge, tps = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    width, height = frames[0].size
    rh, rw = smart_resize(height, width, factor=patch * merge, min_pixels=processor.size["shortest_edge"], max_pixels=max_pixels)
    mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]
    arrays = [(np.asarray(f.convert("RGB").resize((rw, rh), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
              for f in frames]
    while len(arrays) % tps:
        arrays.append(arrays[-1])
    video = torch.from_numpy(np.stack(arrays))  # (T, C, H, W)
    grid_t, grid_h, grid_w = len(arrays) // tps, rh // patch, rw // patch
    channel = video.shape[1]
    patches = video.view(grid_t, tps, channel, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channel * tps * patch * patch)
    return {"pixel_values_videos": flat, "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])}


def _timed_inputs(processor, images: list, videos: list[list], max_pixels: int) -> tuple[dict, float]:
    start = time.perf_counter()
    inputs = preprocess(processor, images) if images else {}
    if videos:
        import torch

        parts = [preprocess_video(processor, frames, max_pixels) for frames in videos]
        inputs["pixel_values_videos"] = torch.cat([p["pixel_values_videos"] for p in parts])
        inputs["video_grid_thw"] = torch.cat([p["video_grid_thw"] for p in parts])
    return inputs, time.perf_counter() - start


def build_batch(processor, config: dict, candidate: Candidate, vocab_size: int, device: str, seed: int = 1234) -> VisionBatch:
    """batch_size identical requests, each with images_per_prompt images and a video of
    video_frames frames, text filling the rest of prompt_tokens. Raises CandidateShapeError when
    the visual part alone does not fit."""
    import torch

    n_images, n_frames = candidate.images_per_prompt or 0, candidate.video_frames or 0
    width, height = image_size(candidate)
    images = synthetic_images(n_images, width, height) * candidate.batch_size
    videos = []
    if n_frames:
        vw, vh = (int(v) for v in (candidate.video_size or "640x360").split("x"))
        videos = [synthetic_images(n_frames, vw, vh, seed=1)] * candidate.batch_size
    inputs, _ = _timed_inputs(processor, images, videos, candidate.max_pixels)  # timed per repeat later
    merge = processor.merge_size
    generator = torch.Generator().manual_seed(seed)
    start_id, end_id = config["vision_start_token_id"], config["vision_end_token_id"]
    image_id, video_id = config["image_token_id"], config["video_token_id"]
    # Random text from the lower vocabulary, below the vision tokens (a small vocabulary could
    # otherwise draw a stray image placeholder).
    text_vocab = max(2, min(vocab_size, 32000, start_id, end_id, image_id, video_id))
    per_image = visual_tokens(inputs["image_grid_thw"][:n_images], merge) if n_images else []
    video_ids: list[int] = []
    if n_frames:
        # Qwen3-VL puts a "<t seconds>" text before each temporal group; it is about 6 tokens.
        video_ids = video_token_layout(
            config, inputs["video_grid_thw"][0].tolist(), merge, start_id, end_id, video_id,
            timestamp_ids=lambda _text: torch.randint(0, text_vocab, (TIMESTAMP_TOKENS,), generator=generator).tolist(),
            frame_indices=list(range(n_frames)), temporal_patch_size=processor.temporal_patch_size)
    video_tokens = sum(1 for t in video_ids if t == video_id)
    visual_part = sum(per_image) + 2 * n_images + len(video_ids)  # each image wrapped in start/end
    text_tokens = candidate.prompt_tokens - visual_part
    if text_tokens < 1:
        raise CandidateShapeError(
            f"{n_images} image(s) of {width}x{height}{f' and {n_frames} video frames' if n_frames else ''} at max_pixels "
            f"{candidate.max_pixels} are {visual_part} tokens, more than the {candidate.prompt_tokens} prompt tokens "
            f"max_length {candidate.max_length} leaves"
        )
    text = torch.randint(0, text_vocab, (text_tokens,), generator=generator).tolist()
    ids = text[: text_tokens // 2]
    for k in per_image:
        ids += [start_id] + [image_id] * k + [end_id]
    ids += video_ids + text[text_tokens // 2:]
    input_ids = torch.tensor([ids] * candidate.batch_size, device=device)
    model_inputs = {k: v.to(device) for k, v in inputs.items()}
    # transformers 5 wants the multimodal token types with the grids: 1 = image, 2 = video.
    model_inputs["mm_token_type_ids"] = (input_ids == image_id).long() + 2 * (input_ids == video_id).long()
    return VisionBatch(input_ids, torch.ones_like(input_ids), model_inputs, sum(per_image) + video_tokens,
                       images, videos)


def yes_no_ids(tokenizer, vocab_size: int) -> tuple[int, int]:
    """Token ids of "yes" and "no" for reranker scoring; a one-line error when the vocabulary lacks them."""
    if tokenizer is None:
        if max(QWEN_YES_NO_IDS) >= vocab_size:
            raise AutotuneError(f"a shape-only reranker needs a vocabulary of > {max(QWEN_YES_NO_IDS)} tokens (Qwen's yes/no ids)")
        return QWEN_YES_NO_IDS
    ids = []
    for word in ("yes", "no"):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise AutotuneError(
                f"the reranker's tokenizer has no single token for {word!r} (it encodes to {len(pieces)} tokens); "
                "a yes/no reranker needs both in its vocabulary — pass --kind causal-lm or a reranker checkpoint"
            )
        ids.append(pieces[0])
    return ids[0], ids[1]


def qwen3_video_timestamps(indices: list[int], fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal group of frames, as Qwen3-VL's processor computes them: frame
    indices padded to a multiple of the temporal patch, then the mean of each group's first and
    last frame time."""
    indices = list(indices)
    while len(indices) % temporal_patch_size:
        indices.append(indices[-1])
    seconds = [i / fps for i in indices]
    return [(seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)]


def video_token_layout(config: dict, grid_thw: list[int], merge_size: int, start: int, end: int, video_id: int,
                       timestamp_ids, frame_indices: list[int], temporal_patch_size: int,
                       fps: float = DEFAULT_VIDEO_FPS) -> list[int]:
    """The tokens one video becomes. Qwen2-VL / Qwen2.5-VL: <start> video×(t·h·w/merge²) <end>.
    Qwen3-VL: per temporal group, the text "<t seconds>" then <start> video×(h·w/merge²) <end>."""
    t, h, w = grid_thw
    per_group = h * w // merge_size**2
    if config.get("model_type") != "qwen3_vl":
        return [start] + [video_id] * (t * per_group) + [end]
    ids: list[int] = []
    for seconds in qwen3_video_timestamps(frame_indices, fps, temporal_patch_size)[:t]:
        ids += timestamp_ids(f"<{seconds:.1f} seconds>") + [start] + [video_id] * per_group + [end]
    return ids
