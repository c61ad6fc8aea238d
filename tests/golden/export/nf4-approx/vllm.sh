#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: quantization bnb-nf4: vLLM 0.32 and 0.33 have no bitsandbytes (no in-flight bnb
#   quantization, no bnb loader); exported as the nearest: quantization: fp8_per_tensor (8-bit
#   weights quantized at load; FP8 GEMMs on Ada/Hopper or newer, weight-only Marlin on
#   Turing/Ampere); it holds about twice the weight memory of nf4, or pass --model with a
#   pre-quantized 4-bit AWQ/GPTQ checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the
#   transformers peak plus headroom is a starting point
# approximate: measured with a static KV cache + torch.compile in transformers; vLLM compiles and
#   captures CUDA graphs by default
# approximate: generation length is per request in vLLM (max_tokens); the figures were measured with
#   greedy decoding
exec vllm serve Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --quantization fp8_per_tensor \
    --max-model-len 1024 \
    --max-num-seqs 16 \
    --gpu-memory-utilization 0.3 \
    --tensor-parallel-size 1 \
    --attention-backend FLASH_ATTN
