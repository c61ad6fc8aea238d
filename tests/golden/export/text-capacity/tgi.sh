#!/usr/bin/env bash
# autotune export to tgi: the command line equivalent to tgi.env
# approximate: TGI is in maintenance mode (since 2025-12-11, v3.3.7 the last release): Hugging Face
#   recommends vLLM or SGLang for new deployments (autotune export --to vllm | sglang)
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch measured with transformers' generate() becomes token budgets as a starting
#   point: prefill of the whole batch (max-batch-prefill-tokens = batch x prompt tokens) and
#   the running batch (max-batch-total-tokens = batch x max_length); TGI batches requests
#   continuously within them
# approximate: max-concurrent-requests is the simulated number of requests in the server at the capacity
#   (static batches in transformers, autotune/capacity.py), at least the batch: more are
#   refused (429) instead of queueing past the SLO; TGI batches continuously and may hold more
# approximate: TGI's cuda-memory-fraction caps the whole process's share of the GPU; within it TGI sizes
#   its KV cache itself
# approximate: TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set
# approximate: measured without torch.compile; TGI captures CUDA graphs for small batches by default
# approximate: generation length is per request in TGI (max_new_tokens); the figures were measured with
#   greedy decoding
exec text-generation-launcher \
    --model-id Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --max-input-tokens 960 \
    --max-total-tokens 1024 \
    --max-batch-prefill-tokens 15360 \
    --max-batch-total-tokens 16384 \
    --max-concurrent-requests 16 \
    --num-shard 1 \
    --cuda-memory-fraction 0.3
