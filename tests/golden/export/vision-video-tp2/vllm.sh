#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned with random weights of qwen2.5-vl-7b-instruct's shape (speed and memory do not
#   depend on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the
#   transformers peak plus headroom is a starting point
# approximate: best.yaml holds a one-GPU measurement: with tensor parallelism each GPU holds a share of
#   the weights, so more KV cache (more concurrent sequences) fits than was measured, and
#   throughput and latency differ from the measured figures (re-measure on the target)
# approximate: transformers' sdpa kernel has no vLLM counterpart (vLLM runs its own paged-attention
#   kernels): attention-backend is left to vLLM's automatic choice
# approximate: measured without torch.compile; vLLM compiles and captures CUDA graphs by default (add
#   enforce-eager: true to turn that off)
# approximate: generation length is per request in vLLM (max_tokens); the figures were measured with
#   greedy decoding
# approximate: video frames are sampled by vLLM's video loader (num_frames) and resized by the model's
#   video processor, whose pixel bound may differ from the image bound autotune measured
#   frames with
exec vllm serve Qwen/Qwen2.5-VL-7B-Instruct \
    --dtype float16 \
    --max-model-len 2048 \
    --max-num-seqs 32 \
    --gpu-memory-utilization 0.17 \
    --tensor-parallel-size 2 \
    --limit-mm-per-prompt '{"image": 1, "video": 1}' \
    --mm-processor-kwargs '{"size": {"shortest_edge": 3136, "longest_edge": 200704}}' \
    --media-io-kwargs '{"video": {"num_frames": 8}}' \
    --mm-encoder-attn-backend FLASH_ATTN
