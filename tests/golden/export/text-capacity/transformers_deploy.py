"""transformers: load the model as autotune measured it (written by autotune export).

from: best.yaml of study 'qwen2.5-7b-instruct-cuda', trial 4, written 2026-11-21T22:30:14+00:00
tuned on: NVIDIA H100 80GB HBM3 (cuda:0, 79.18 GiB), torch 2.11.0+cu130, transformers 5.17.0
settings: bf16 eager b=16 len=1024, 64 new tokens per request
measured (transformers, one GPU): 457.1 tok/s (spread 7.2%), TTFT 0.541 s, peak 21.19 GiB, whole
device 22.41 GiB
memory budget asked for: 24 GiB
approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not
depend on the weights; quality was not measured); the server loads the real checkpoint
Settings the target takes differently from how autotune measured them are marked 'approximate:'.

With autotune installed, the same load in one line, from the kwargs file written next to this one:
    from autotune import load_deployment
    model, tokenizer, generate_kwargs = load_deployment("<this file's name>.best.yaml")
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL = "Qwen/Qwen2.5-7B-Instruct"

# approximate: prompts must be truncated to MAX_PROMPT_TOKENS by your code; transformers does not
# enforce max_length
MAX_LENGTH = 1024  # prompt + new tokens per request, the measured worst case
MAX_PROMPT_TOKENS = 960
# approximate: generate() takes whatever batch it is given: the measured batch size is a constant
# (MAX_BATCH_SIZE) for your batching code, not a setting
MAX_BATCH_SIZE = 16
GENERATE_KWARGS = {"do_sample": False, "max_new_tokens": 64}
# capacity: 0.0641 requests/s within ttft_p95 <= 2.00 s,e2e_p95 <= 8.00 s (about 0.2 concurrent;
# saturation 7.02 requests/s; limited by ttft_p95_s); approximate: the capacity is simulated for a
# server that runs static batches of up to MAX_BATCH_SIZE as requests arrive (autotune/capacity.py):
# your batching code decides whether it holds
CAPACITY_REQUESTS_PER_S = 0.06415


def load():
    """Return (model, processor or tokenizer) loaded as measured."""
    model = AutoModelForCausalLM.from_pretrained(
        MODEL,
        dtype=torch.bfloat16,
        attn_implementation="eager",
        # measured on cuda:0
        device_map={"": "cuda:0"},
    )
    model.eval()
    return model, AutoTokenizer.from_pretrained(MODEL)


if __name__ == "__main__":
    model, processor = load()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_tensors="pt", return_dict=True).to(model.device)
    out = model.generate(**inputs, **GENERATE_KWARGS)
    print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
