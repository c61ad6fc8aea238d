#!/usr/bin/env bash
# autotune export to tgi: the command line equivalent to tgi.env
# approximate: TGI is in maintenance mode (since 2025-12-11, v3.3.7 the last release): Hugging Face
#   recommends vLLM or SGLang for new deployments (autotune export --to vllm | sglang)
# approximate: tuned on autotune's embedded SmolLM2-135M-Instruct (its GGUF weights, dequantized); the
#   server loads the original checkpoint of the same shape
# approximate: tuned on CPU: the measured speed and memory do not carry over to a GPU server; the
#   settings are a starting point
# approximate: the batch measured with transformers' generate() becomes token budgets as a starting
#   point: prefill of the whole batch (max-batch-prefill-tokens = batch x prompt tokens) and
#   the running batch (max-batch-total-tokens = batch x max_length); TGI batches requests
#   continuously within them
# approximate: TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set
# approximate: measured without torch.compile; TGI captures CUDA graphs for small batches by default
# approximate: generation length is per request in TGI (max_new_tokens); the figures were measured with
#   greedy decoding
exec text-generation-launcher \
    --model-id HuggingFaceTB/SmolLM2-135M-Instruct \
    --dtype bfloat16 \
    --max-input-tokens 48 \
    --max-total-tokens 64 \
    --max-batch-prefill-tokens 384 \
    --max-batch-total-tokens 512 \
    --num-shard 1
