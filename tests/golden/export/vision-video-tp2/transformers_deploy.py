"""transformers: load the model as autotune measured it (written by autotune export).

from: best.yaml of study 'qwen2.5-vl-7b-instruct-cuda', trial 18, written
2026-11-21T22:47:07+00:00
tuned on: NVIDIA H100 80GB HBM3 (cuda:0, 79.18 GiB), torch 2.11.0+cu130, transformers 5.17.0
settings: fp16 sdpa vit=flash_attention_2 b=32 len=2048 img=1x200704px video=8f, 64 new tokens per
request
measured (transformers, one GPU): 448.0 tok/s (spread 6.2%), TTFT 2.390 s, peak 21.88 GiB, whole
device 23.06 GiB
memory budget asked for: 24 GiB
approximate: tuned with random weights of qwen2.5-vl-7b-instruct's shape (speed and memory do not
depend on the weights; quality was not measured); the server loads the real checkpoint
Settings the target takes differently from how autotune measured them are marked 'approximate:'.

With autotune installed, the same load in one line, from the kwargs file written next to this one:
    from autotune import load_deployment
    model, tokenizer, generate_kwargs = load_deployment("<this file's name>.best.yaml")
"""

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"

# approximate: prompts must be truncated to MAX_PROMPT_TOKENS by your code; transformers does not
# enforce max_length
MAX_LENGTH = 2048  # prompt + new tokens per request, the measured worst case
MAX_PROMPT_TOKENS = 1984
# approximate: generate() takes whatever batch it is given: the measured batch size is a constant
# (MAX_BATCH_SIZE) for your batching code, not a setting
MAX_BATCH_SIZE = 32
GENERATE_KWARGS = {"do_sample": False, "max_new_tokens": 64}
IMAGE_SIZE = {"shortest_edge": 3136, "longest_edge": 200704}  # processor size: each image at most longest_edge pixels
# approximate: images per request are up to your code: the measured worst case is
# MAX_IMAGES_PER_PROMPT
MAX_IMAGES_PER_PROMPT = 1  # of 1280x720
# approximate: video frames are sampled by your code: the measured worst case is VIDEO_FRAMES frames
VIDEO_FRAMES = 8  # of 640x360


def load():
    """Return (model, processor or tokenizer) loaded as measured."""
    model = AutoModelForImageTextToText.from_pretrained(
        MODEL,
        dtype=torch.float16,
        attn_implementation={"": "sdpa", "text_config": "sdpa", "vision_config": "flash_attention_2"},
        # approximate: the snippet spreads layers over the GPUs with device_map='auto'
        # (pipeline-style, not tensor parallel; transformers' tensor parallel needs torchrun and
        # tp_plan='auto'). best.yaml holds a one-GPU measurement: with tensor parallelism each GPU
        # holds a share of the weights, so more KV cache (more concurrent sequences) fits than was
        # measured, and throughput and latency differ from the measured figures (re-measure on the
        # target)
        device_map="auto",
    )
    model.eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    processor.image_processor.size = IMAGE_SIZE  # the pixel bound every image was measured at
    return model, processor


if __name__ == "__main__":
    model, processor = load()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_tensors="pt", return_dict=True).to(model.device)
    out = model.generate(**inputs, **GENERATE_KWARGS)
    print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
