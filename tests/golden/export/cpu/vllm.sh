#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned on autotune's embedded SmolLM2-135M-Instruct (its GGUF weights, dequantized); the
#   server loads the original checkpoint of the same shape
# approximate: tuned on CPU: the measured speed and memory do not carry over to a GPU server; the
#   settings are a starting point
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: transformers' eager attention has no vLLM counterpart (vLLM runs its own paged-attention
#   kernels): attention-backend is left to vLLM's automatic choice
# approximate: measured without torch.compile; vLLM compiles and captures CUDA graphs by default (add
#   enforce-eager: true to turn that off)
# approximate: generation length is per request in vLLM (max_tokens); the figures were measured with
#   greedy decoding
exec vllm serve HuggingFaceTB/SmolLM2-135M-Instruct \
    --dtype bfloat16 \
    --max-model-len 64 \
    --max-num-seqs 8 \
    --tensor-parallel-size 1
