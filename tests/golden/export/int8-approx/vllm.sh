#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: quantization bnb-int8: vLLM 0.32 and 0.33 have no bitsandbytes (no in-flight bnb
#   quantization, no bnb loader); exported as the nearest: quantization: fp8_per_tensor (8-bit
#   weights quantized at load; FP8 GEMMs on Ada/Hopper or newer, weight-only Marlin on
#   Turing/Ampere); about the same weight memory as int8
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the
#   transformers peak plus headroom is a starting point
# approximate: transformers' sdpa kernel has no vLLM counterpart (vLLM runs its own paged-attention
#   kernels): attention-backend is left to vLLM's automatic choice
# approximate: measured without torch.compile; vLLM compiles and captures CUDA graphs by default (add
#   enforce-eager: true to turn that off)
# approximate: generation length is per request in vLLM (max_tokens); the figures were measured with
#   greedy decoding
exec vllm serve Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --quantization fp8_per_tensor \
    --max-model-len 1024 \
    --max-num-seqs 16 \
    --gpu-memory-utilization 0.3 \
    --tensor-parallel-size 1
