"""Validation examples -> model inputs, for text and for images/video + text.

A text prompt is the tokenizer's chat template over the example's messages. A visual prompt is
built the way the Qwen-VL processors build it: the chat template over a user turn that starts with
one `<|vision_start|><|image_pad|><|vision_end|>` per image (and one video placeholder), each
placeholder then expanded to the number of visual tokens the image processor makes of that image
under the candidate's `max_pixels`; Qwen3-VL's video gets a `<t seconds>` timestamp before each
temporal group of frames. The expansion is done here rather than by the checkpoint's processor
class because that class needs torchvision for video, which CPU installs often lack, and because
shape-only models have no processor files.

One Prompter per (load, max_pixels, video_frames): quality depends on the resolution the
deployment feeds the model, so it is measured at the candidate's own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.data.schema import Example
# The video token layout lives with the rest of the request layout in vision; DEFAULT_VIDEO_FPS and
# qwen3_video_timestamps stay importable from here.
from autotune.vision import (  # noqa: F401
    DEFAULT_VIDEO_FPS,
    preprocess,
    preprocess_video,
    qwen3_video_timestamps,
    video_token_layout,
    visual_tokens,
)

RERANK_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
RERANK_INSTRUCT = "Given a query, retrieve relevant passages that answer the query"


@dataclass
class Prompt:
    """Token ids plus the visual tensors they refer to (CPU tensors; empty for text)."""

    ids: list[int]
    visual: dict[str, Any] = field(default_factory=dict)
    visual_token_ids: tuple[int, int] | None = None  # (image_token_id, video_token_id) for mm_token_type_ids

    @property
    def has_visual_input(self) -> bool:
        return bool(self.visual)

    def extended(self, more: list[int]) -> Prompt:
        return Prompt(self.ids + list(more), self.visual, self.visual_token_ids)

    def model_inputs(self, device: str) -> dict[str, Any]:
        """Keyword arguments for model(...) / model.generate(...), batch of one."""
        import torch

        input_ids = torch.tensor([self.ids], device=device)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if self.visual:
            inputs.update({k: v.to(device) for k, v in self.visual.items()})
            image_id, video_id = self.visual_token_ids or (-1, -1)
            # transformers 5 wants the multimodal token types with the grids: 1 = image, 2 = video.
            inputs["mm_token_type_ids"] = (input_ids == image_id).long() + 2 * (input_ids == video_id).long()
        return inputs


def sample_frames(frames: list, wanted: int | None) -> tuple[list, list[int]]:
    """`wanted` frames spread evenly over the clip (all of them when it has fewer), with their indices."""
    if not wanted or wanted >= len(frames):
        return frames, list(range(len(frames)))
    indices = [round(i * (len(frames) - 1) / (wanted - 1)) for i in range(wanted)] if wanted > 1 else [0]
    return [frames[i] for i in indices], indices


class Prompter:
    """Builds Prompts for one model at one input resolution.

    `image_processor` is None for text-only models; `data_dir` is where an example's image paths
    are relative to (the validation set's folder). `max_prompt_tokens`: a text prompt longer than
    this keeps only its last tokens (the question and the generation prompt), with a note printed
    (to the worker's log); the study passes its space's largest max_length minus new_tokens, one
    limit for every load so that each is scored on the same prompts.
    """

    def __init__(self, tokenizer, config: dict | None = None, image_processor=None, max_pixels: int | None = None,
                 video_frames: int | None = None, data_dir: Path | None = None, max_prompt_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or {}
        self.image_processor = image_processor
        self.max_pixels = max_pixels
        self.video_frames = video_frames
        self.data_dir = Path(data_dir) if data_dir is not None else Path(".")
        self.source = str(self.data_dir)
        self.max_prompt_tokens = max_prompt_tokens

    def _fit(self, ids: list[int], line: int) -> list[int]:
        """A text prompt cut to its last max_prompt_tokens tokens, with a one-line note."""
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        print(f"note: validation set line {line}: the prompt has {len(ids)} tokens, more than the {limit} the space's "
              f"max_length leaves for it; truncated to its last {limit} tokens", flush=True)
        return ids[-limit:]

    def _fit_document(self, head: str, document: str, line: int) -> list[int]:
        """A text rerank prompt within max_prompt_tokens: the document is cut at its end, never the
        instruction and query (cutting the prompt's start, as _fit does, would rank documents
        against no query at all). Only when the fixed part alone is too long does _fit cut it."""
        def ids_with(text: str) -> list[int]:
            return self.chat_ids([{"role": "user", "content": head + text}], system=RERANK_SYSTEM)

        ids = ids_with(document)
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        doc_ids = self.text_ids(document)
        keep = max(0, len(doc_ids) - (len(ids) - limit))
        # Re-tokenizing a cut text can merge tokens differently: shorten until the whole prompt fits.
        while keep > 0 and len(cut := ids_with(self.tokenizer.decode(doc_ids[:keep]))) > limit:
            keep -= 1
        if keep == 0:
            return self._fit(ids_with(""), line)
        print(f"note: rerank set line {line}: the query-document prompt has {len(ids)} tokens, more than the {limit} "
              f"the space's max_length allows; the document was cut to its first {keep} tokens", flush=True)
        return cut

    # -------------------------------------------------------------------------- text

    def chat_ids(self, messages: list[dict], system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + messages
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
            return list(out["input_ids"])
        text = "\n".join(m["content"] for m in messages) + ("\nAnswer:" if system else "")
        return self.tokenizer(text)["input_ids"]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -------------------------------------------------------------------------- prompts

    def example(self, example: Example) -> Prompt:
        """The prompt of a generate/choice example, with its images and video."""
        messages = [m.model_dump() for m in example.messages] if example.messages else [{"role": "user", "content": example.prompt}]
        images = [self._image(p, example.line) for p in example.images]
        video = self._video(example.video, example.line) if example.video else None
        if not images and video is None:
            return Prompt(self._fit(self.chat_ids(messages), example.line))
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user] = {**messages[last_user], "content": self._placeholders(len(images), video is not None)
                               + str(messages[last_user]["content"])}
        return self._expanded(self.chat_ids(messages), images, video)

    def rerank(self, query: str, document: str, document_type: str = "text", line: int = 0) -> Prompt:
        """The Qwen3-Reranker prompt for one query-document pair; an image document is given as the
        image itself in the <Document> slot."""
        head = f"<Instruct>: {RERANK_INSTRUCT}\n<Query>: {query}\n<Document>: "
        if document_type != "image":
            return Prompt(self._fit_document(head, document, line))
        image = self._image(document, line)
        ids = self.chat_ids([{"role": "user", "content": head + self._placeholders(1, False)}], system=RERANK_SYSTEM)
        return self._expanded(ids, [image], None)

    # -------------------------------------------------------------------------- visual part

    def _token(self, key: str) -> int:
        config = self.config
        if key not in config and "text_config" in config:
            config = config["text_config"]
        if key not in config:
            raise ValueError(f"the model config has no {key}: it is not a Qwen-VL style model")
        return int(config[key])

    def _token_text(self, key: str) -> str:
        return self.tokenizer.convert_ids_to_tokens(self._token(key))

    def _placeholders(self, n_images: int, has_video: bool) -> str:
        start, end = self._token_text("vision_start_token_id"), self._token_text("vision_end_token_id")
        image, video = self._token_text("image_token_id"), self._token_text("video_token_id")
        return (start + image + end) * n_images + (start + video + end if has_video else "")

    def _image(self, path: str, line: int):
        from autotune.data.synthetic_images import load_image

        return load_image(self.data_dir / path, str(self.data_dir / "validation set"), line)

    def _video(self, path: str, line: int) -> tuple[list, list[int]]:
        from autotune.data.synthetic_images import load_video_frames

        frames = load_video_frames(self.data_dir / path, str(self.data_dir / "validation set"), line)
        return sample_frames(frames, self.video_frames)

    def _expanded(self, ids: list[int], images: list, video: tuple[list, list[int]] | None) -> Prompt:
        """Replace each image/video placeholder token by as many copies as the processor makes visual
        tokens of it (Qwen3-VL video: one timestamped group per temporal patch)."""
        import torch

        if self.image_processor is None:
            raise ValueError("this example has images, but the model has no image processor (a text-only model)")
        processor = self.image_processor
        visual: dict[str, Any] = preprocess(processor, images) if images else {}
        image_counts = visual_tokens(visual["image_grid_thw"], processor.merge_size) if images else []
        video_part: list[int] = []
        if video is not None:
            frames, indices = video
            max_pixels = self.max_pixels or processor.size["longest_edge"]
            part = preprocess_video(processor, frames, max_pixels)
            visual.update(part)
            video_part = self._video_tokens(part["video_grid_thw"][0].tolist(), indices)
        image_id, video_id = self._token("image_token_id"), self._token("video_token_id")
        start, end = self._token("vision_start_token_id"), self._token("vision_end_token_id")
        out: list[int] = []
        counts = iter(image_counts)
        i = 0
        while i < len(ids):
            token = ids[i]
            if token == image_id:
                out += [image_id] * next(counts)
            elif token == video_id and video_part:
                # video_part carries its own start/end tokens (Qwen3-VL has one pair per group):
                # drop the template's pair around the placeholder.
                if out and out[-1] == start:
                    out.pop()
                out += video_part
                if i + 1 < len(ids) and ids[i + 1] == end:
                    i += 1
            else:
                out.append(token)
            i += 1
        if "video_grid_thw" in visual:
            visual["video_grid_thw"] = torch.as_tensor(visual["video_grid_thw"])
        return Prompt(out, visual, (image_id, video_id))

    def _video_tokens(self, grid_thw: list[int], indices: list[int]) -> list[int]:
        start, end = self._token("vision_start_token_id"), self._token("vision_end_token_id")
        video_id = self._token("video_token_id")
        return video_token_layout(self.config, grid_thw, self.image_processor.merge_size, start, end, video_id,
                                  timestamp_ids=lambda text: self.text_ids(text), frame_indices=indices,
                                  temporal_patch_size=self.image_processor.temporal_patch_size)
