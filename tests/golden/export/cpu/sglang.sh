#!/usr/bin/env bash
# autotune export to sglang: the command line equivalent to sglang.yaml
# approximate: tuned on autotune's embedded SmolLM2-135M-Instruct (its GGUF weights, dequantized); the
#   server loads the original checkpoint of the same shape
# approximate: tuned on CPU: the measured speed and memory do not carry over to a GPU server; the
#   settings are a starting point
# approximate: the batch size measured with transformers' generate() becomes max-running-requests as a
#   starting point: SGLang batches requests continuously, up to this many at once
# approximate: transformers' eager attention has no SGLang counterpart: attention-backend is left to
#   SGLang's choice
# approximate: measured without torch.compile; SGLang captures CUDA graphs by default
# approximate: generation length is per request in SGLang (max_new_tokens); the figures were measured
#   with greedy decoding
exec python -m sglang.launch_server \
    --model-path HuggingFaceTB/SmolLM2-135M-Instruct \
    --dtype bfloat16 \
    --context-length 64 \
    --max-running-requests 8 \
    --tp-size 1
