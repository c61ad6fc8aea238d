#!/usr/bin/env bash
# autotune export to sglang: the command line equivalent to sglang.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-running-requests as a
#   starting point: SGLang batches requests continuously, up to this many at once
# approximate: the capacity is simulated for static batches of batch_size in transformers
#   (autotune/capacity.py); SGLang batches continuously and holds at least as many requests/s:
#   a floor for capacity planning, no SGLang setting
# approximate: SGLang's fraction covers the weights and the KV cache pool; activations and CUDA graphs
#   use the rest of the GPU, so the process can use somewhat more than this: lower it if the
#   budget is a hard limit
# approximate: transformers' eager attention has no SGLang counterpart: attention-backend is left to
#   SGLang's choice
# approximate: measured without torch.compile; SGLang captures CUDA graphs by default
# approximate: generation length is per request in SGLang (max_new_tokens); the figures were measured
#   with greedy decoding
exec python -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --dtype bfloat16 \
    --context-length 1024 \
    --max-running-requests 16 \
    --mem-fraction-static 0.3 \
    --tp-size 1
