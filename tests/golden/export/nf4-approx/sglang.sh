#!/usr/bin/env bash
# autotune export to sglang: the command line equivalent to sglang.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-running-requests as a
#   starting point: SGLang batches requests continuously, up to this many at once
# approximate: SGLang's fraction covers the weights and the KV cache pool; activations and CUDA graphs
#   use the rest of the GPU, so the process can use somewhat more than this: lower it if the
#   budget is a hard limit
# approximate: transformers' FlashAttention-2 is written as fa3, SGLang's FlashAttention backend (Hopper;
#   use flashinfer on older GPUs)
# approximate: measured with a static KV cache + torch.compile in transformers; SGLang's torch.compile
#   (enable-torch-compile) is its own, on top of the CUDA graphs it captures by default
# approximate: generation length is per request in SGLang (max_new_tokens); the figures were measured
#   with greedy decoding
exec python -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --quantization bitsandbytes \
    --load-format bitsandbytes \
    --context-length 1024 \
    --max-running-requests 16 \
    --mem-fraction-static 0.3 \
    --tp-size 1 \
    --attention-backend fa3 \
    --enable-torch-compile
