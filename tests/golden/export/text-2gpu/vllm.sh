#!/usr/bin/env bash
# autotune export to vllm: the command line equivalent to vllm.yaml
# approximate: tuned with random weights of qwen2.5-7b-instruct's shape (speed and memory do not depend
#   on the weights; quality was not measured); the server loads the real checkpoint
# approximate: the batch size measured with transformers' generate() becomes max-num-seqs as a starting
#   point: vLLM batches requests continuously, up to this many at once and as many as its KV
#   cache holds
# approximate: vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the
#   transformers peak plus headroom is a starting point
# approximate: num_gpus is written as tensor-parallel-size. best.yaml was measured with transformers'
#   device_map splitting the layers over the GPUs (whole layers per GPU, one GPU busy at a
#   time); vLLM splits every layer over them (tensor parallel): on as many GPUs each holds
#   about the share of the weights and of the KV cache the layer split did (more of the KV
#   cache where the model has fewer KV heads than GPUs), so the per-GPU memory is figured from
#   the measured per-GPU peak of the layer split; throughput and latency differ from the
#   measured figures (re-measure on the target)
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
    --gpu-memory-utilization 0.21 \
    --tensor-parallel-size 2
