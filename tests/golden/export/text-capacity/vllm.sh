#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: the capacity is simulated for static batches of batch_size in transformers
#   (autotune/capacity.py); vLLM batches continuously and holds at least as many requests/s: a
#   floor for capacity planning, no vLLM setting
# approximate: vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the
#   transformers peak plus headroom is a starting point
# approximate: transformers' eager attention has no vLLM counterpart (vLLM runs its own paged-attention
#   kernels): attention-backend is left to vLLM's automatic choice
# approximate: measured without torch.compile; vLLM compiles and captures CUDA graphs by default (add
#   enforce-eager: true to turn that off)
# approximate: generation length is per request in vLLM (max_tokens); the figures were measured with
#   greedy decoding
exec vllm serve Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --max-model-len 1024 \
    --max-num-seqs 16 \
    --gpu-memory-utilization 0.3 \
    --tensor-parallel-size 1
