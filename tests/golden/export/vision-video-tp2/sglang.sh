#!/usr/bin/env bash
# autotune export to sglang: the command line equivalent to sglang.yaml
# approximate: tuned with random weights of qwen2.5-vl-7b-instruct's shape (speed and memory do not
#   depend on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-running-requests as a
#   starting point: SGLang batches requests continuously, up to this many at once
# approximate: SGLang's fraction covers the weights and the KV cache pool; activations and CUDA graphs
#   use the rest of the GPU, so the process can use somewhat more than this: lower it if the
#   budget is a hard limit
# approximate: best.yaml holds a one-GPU measurement: with tensor parallelism each GPU holds a share of
#   the weights, so more KV cache (more concurrent sequences) fits than was measured, and
#   throughput and latency differ from the measured figures (re-measure on the target)
# approximate: transformers' sdpa kernel is not what SGLang serves fastest with: attention-backend is
#   left to SGLang's choice (fa3 on Hopper, flashinfer elsewhere; torch_native is its SDPA
#   backend)
# approximate: measured without torch.compile; SGLang captures CUDA graphs by default
# approximate: generation length is per request in SGLang (max_new_tokens); the figures were measured
#   with greedy decoding
# approximate: SGLang samples video frames itself (nframes) and bounds each by max_pixels, close to but
#   not the same code path autotune measured
# approximate: the vision tower's FlashAttention-2 is written as fa3 (Hopper)
exec python -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-VL-7B-Instruct \
    --dtype float16 \
    --context-length 2048 \
    --max-running-requests 32 \
    --mem-fraction-static 0.17 \
    --tp-size 2 \
    --enable-multimodal \
    --limit-mm-data-per-request '{"image": 1, "video": 1}' \
    --mm-process-config '{"image": {"size": {"shortest_edge": 3136, "longest_edge": 200704}}, "video": {"nframes": 8, "max_pixels": 200704}}' \
    --mm-attention-backend fa3
