#!/usr/bin/env bash
# autotune export to sglang: the command line equivalent to sglang.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-running-requests as a
#   starting point: SGLang batches requests continuously, up to this many at once
# approximate: SGLang's fraction covers the weights and the KV cache pool; activations and CUDA graphs
#   use the rest of the GPU, so the process can use somewhat more than this: lower it if the
#   budget is a hard limit
# approximate: num_gpus is written as tp-size. best.yaml was measured with transformers' device_map
#   splitting the layers over the GPUs (whole layers per GPU, one GPU busy at a time); SGLang
#   splits every layer over them (tensor parallel): on as many GPUs each holds about the share
#   of the weights and of the KV cache the layer split did (more of the KV cache where the
#   model has fewer KV heads than GPUs), so the per-GPU memory is figured from the measured
#   per-GPU peak of the layer split; throughput and latency differ from the measured figures
#   (re-measure on the target)
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
    --mem-fraction-static 0.21 \
    --tp-size 2
