#!/usr/bin/env bash
# autotune export to tgi: the command line equivalent to tgi.env
# approximate: TGI is in maintenance mode (since 2025-12-11, v3.3.7 the last release): Hugging Face
#   recommends vLLM or SGLang for new deployments (autotune export --to vllm | sglang)
# approximate: TGI serves Qwen2-VL-family models with its own image preprocessing
# approximate: tuned with random weights of qwen2.5-vl-7b-instruct's shape (speed and memory do not
#   depend on the weights; quality was not measured); the server loads the real checkpoint
# approximate: TGI refuses --dtype together with --quantize and picks the compute dtype itself; autotune
#   measured this quantization with the dtype in the header
# approximate: the batch measured with transformers' generate() becomes token budgets as a starting
#   point: prefill of the whole batch (max-batch-prefill-tokens = batch x prompt tokens) and
#   the running batch (max-batch-total-tokens = batch x max_length); TGI batches requests
#   continuously within them
# approximate: TGI's cuda-memory-fraction caps the whole process's share of the GPU; within it TGI sizes
#   its KV cache itself
# approximate: TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set
# approximate: measured without torch.compile; TGI captures CUDA graphs for small batches by default
# approximate: generation length is per request in TGI (max_new_tokens); the figures were measured with
#   greedy decoding
# approximate: TGI has no launcher setting for images per request: the measured worst case was this many
#   images, and their visual tokens count in max-input-tokens
# approximate: TGI has no launcher setting for image resolution: clients should resize images to at most
#   max_pixels pixels, as measured
exec text-generation-launcher \
    --model-id Qwen/Qwen2.5-VL-7B-Instruct \
    --quantize bitsandbytes-nf4 \
    --max-input-tokens 1984 \
    --max-total-tokens 2048 \
    --max-batch-prefill-tokens 63488 \
    --max-batch-total-tokens 65536 \
    --num-shard 1 \
    --cuda-memory-fraction 0.3
