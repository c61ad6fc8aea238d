"""transformers: load the model as autotune measured it (written by autotune export).

from: best.yaml of study 'SmolLM2-135M-Instruct-cpu', trial 14, written 2026-11-21T20:42:35+00:00
tuned on: AMD EPYC (cpu, 23.54 GiB), torch 2.13.0+cpu, transformers 5.23.0
settings: bf16 eager b=8 len=64, 16 new tokens per request
measured (transformers, one CPU process): 254.0 tok/s (spread 0.9%), TTFT 0.129 s, peak 0.78 GiB
approximate: tuned on autotune's embedded SmolLM2-135M-Instruct (its GGUF weights, dequantized);
the server loads the original checkpoint of the same shape
Settings the target takes differently from how autotune measured them are marked 'approximate:'.

With autotune installed, the same load in one line, from the kwargs file written next to this one:
    from autotune import load_deployment
    model, tokenizer, generate_kwargs = load_deployment("<this file's name>.best.yaml")
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# approximate: prompts must be truncated to MAX_PROMPT_TOKENS by your code; transformers does not
# enforce max_length
MAX_LENGTH = 64  # prompt + new tokens per request, the measured worst case
MAX_PROMPT_TOKENS = 48
# approximate: generate() takes whatever batch it is given: the measured batch size is a constant
# (MAX_BATCH_SIZE) for your batching code, not a setting
MAX_BATCH_SIZE = 8
GENERATE_KWARGS = {"do_sample": False, "max_new_tokens": 16}


def load():
    """Return (model, processor or tokenizer) loaded as measured."""
    model = AutoModelForCausalLM.from_pretrained(
        MODEL,
        dtype=torch.bfloat16,
        attn_implementation="eager",
        # measured on cpu
        device_map={"": "cpu"},
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
