"""best.yaml -> launcher arguments and environment variables for Hugging Face TGI
(text-generation-inference): an env file (`docker run --env-file`, one KEY=VALUE a line) and the
equivalent `text-generation-launcher` command line.

TGI is a target in MAINTENANCE MODE: Hugging Face put it in maintenance mode on 2025-12-11
(v3.3.7 the last release; only minor fixes accepted) and recommends vLLM or SGLang for new
deployments (huggingface.co/docs/text-generation-inference, inference-endpoints/engines/tgi).

Flags and their env names from TGI's launcher reference (docs/source/reference/launcher.md):
`--dtype` (float16 | bfloat16 only; not together with `--quantize`), `--quantize` (bitsandbytes =
8-bit, bitsandbytes-nf4, bitsandbytes-fp4, all in flight), `--max-input-tokens`,
`--max-total-tokens`, `--max-batch-prefill-tokens`, `--max-batch-total-tokens`, `--num-shard`,
`--cuda-memory-fraction`. TGI cannot be installed here (a Rust launcher plus a CUDA server; the
PyPI `text-generation` package is only its client), so no parser test checks this export.
"""

from __future__ import annotations

from autotune.export.base import (
    capacity_entry,
    FEWER_GPUS_ALTERNATIVE,
    FEWER_GPUS_NOTE,
    LAYER_SPLIT_NOTE,
    MORE_GPUS_NOTE,
    TENSOR_PARALLEL_NOTE,
    Draft,
    ExportOptions,
    ExportResult,
    Rule,
    approximate,
    check_request_sizes,
    exact,
    is_vision,
    memory_plan,
    offloaded_gib,
    start,
    tensor_parallel,
    unexportable,
)
from autotune.dtypes import DTYPES
from autotune.export.generate_notes import (
    COMPILE_MODE_NOTE, STOP_CHECK_NOTE, OFFLOADED_KV_ALTERNATIVE, OFFLOADED_KV_NOTE, PAGED_KV_NOTE, QUANTIZED_4BIT_NOTE, generate_knobs,
)
from autotune.spec import DeploymentConfig

NAME = "tgi"
FILENAME = "tgi.env"
MAINTENANCE = (
    "TGI is in maintenance mode (since 2025-12-11, v3.3.7 the last release): Hugging Face recommends vLLM or SGLang "
    "for new deployments (autotune export --to vllm | sglang)"
)

# The compatibility rules: ONE place. Keys are `setting=value` or a bare setting name.
RULES: dict[str, Rule] = {
    "dtype=fp32": unexportable("TGI's --dtype takes float16 or bfloat16 only", "dtype: bfloat16 (half the weight memory of fp32)"),
    "dtype=fp16": exact(),
    "dtype=bf16": exact(),
    "quantization=none": exact(),
    "quantization=bnb-int8": exact("TGI's bitsandbytes is LLM.int8(), quantized while loading"),
    "quantization=bnb-nf4": exact(),
    "quantization=bnb-fp4": exact(),
    # TGI has no torchao; its in-flight methods are bitsandbytes (three), eetq (int8) and fp8.
    "quantization=torchao-int8wo": unexportable(
        "TGI has no torchao quantization", "quantize: bitsandbytes (LLM.int8() while loading, the same weight memory)"),
    "quantization=torchao-int4wo": unexportable(
        "TGI has no torchao quantization", "quantize: bitsandbytes-nf4 (nf4 while loading, the same weight memory)"),
    "quantization=torchao-fp8": approximate(
        "another fp8 recipe: TGI's --quantize fp8 quantizes the weights to fp8 while loading, in TGI's own kernels "
        "(not torchao's dynamic activation + weight fp8)"),
    "quantized_dtype": approximate(
        "TGI refuses --dtype together with --quantize and picks the compute dtype itself; autotune measured this "
        "quantization with the dtype in the header"),
    "attn_implementation=flash_attention_2": approximate("TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set"),
    "attn_implementation=sdpa": approximate("TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set"),
    "attn_implementation=eager": approximate("TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set"),
    "attn_implementation=sdpa_gqa": approximate(
        "autotune's sdpa_gqa has no TGI counterpart: TGI picks its own attention kernels (flashinfer, flashdecoding, paged); none is set"),
    "vision_attn_implementation=sdpa": approximate("TGI has no setting for the vision tower's attention kernel"),
    "vision_attn_implementation=flash_attention_2": approximate("TGI has no setting for the vision tower's attention kernel"),
    "vision_attn_implementation=eager": approximate("TGI has no setting for the vision tower's attention kernel"),
    "compile=true": approximate("measured with a static KV cache + torch.compile in transformers; TGI captures CUDA graphs (--cuda-graphs) instead"),
    "compile=false": approximate("measured without torch.compile; TGI captures CUDA graphs for small batches by default"),
    "capacity": approximate(
        "max-concurrent-requests is the simulated number of requests in the server at the capacity (static batches in "
        "transformers, autotune/capacity.py), at least the batch: more are refused (429) instead of queueing past the SLO; "
        "TGI batches continuously and may hold more"),
    "batch_size": approximate(
        "the batch measured with transformers' generate() becomes token budgets as a starting point: prefill of the whole "
        "batch (max-batch-prefill-tokens = batch x prompt tokens) and the running batch (max-batch-total-tokens = batch x "
        "max_length); TGI batches requests continuously within them"),
    "max_length": exact("max-input-tokens + generated tokens = max-total-tokens, the measured worst case per request"),
    "new_tokens": approximate("generation length is per request in TGI (max_new_tokens); the figures were measured with greedy decoding"),
    "images_per_prompt": approximate(
        "TGI has no launcher setting for images per request: the measured worst case was this many images, and their visual "
        "tokens count in max-input-tokens"),
    "max_pixels": approximate(
        "TGI has no launcher setting for image resolution: clients should resize images to at most max_pixels pixels, as measured"),
    "image_size": exact(
        "not a TGI setting: the size of the images the figures were measured with, written in the comment on the images "
        "per request; TGI takes any size and bounds each image by max_pixels"),
    "video_size": exact(
        "not a TGI setting: the frame size of the videos the figures were measured with; TGI resizes frames itself "
        "(see video_frames)"),
    "video_frames": unexportable(
        "TGI has no launcher setting for video input", "no video setting (requests without video), or export --to vllm or sglang"),
    "device=cpu": approximate(
        "tuned on CPU: the measured speed and memory do not carry over to a GPU server; the settings are a starting point"),
    "tensor_parallel_size>1": approximate(TENSOR_PARALLEL_NOTE),
    # num_gpus (the GPUs best.yaml was measured on) is the default num-shard. Another size than
    # measured: more GPUs is approximate (the per-GPU figure over-reserves), fewer is unexportable
    # (no measurement says it fits): see MORE_GPUS_NOTE and FEWER_GPUS_NOTE in base.py.
    "num_gpus>1": approximate("num_gpus is written as num-shard. " + LAYER_SPLIT_NOTE.format(server="TGI")),
    "tensor_parallel_size>num_gpus": approximate(MORE_GPUS_NOTE),
    "tensor_parallel_size<num_gpus": unexportable(FEWER_GPUS_NOTE, FEWER_GPUS_ALTERNATIVE),
    "cpu_offload_gib>0": unexportable(
        "TGI has no CPU weight offload: every weight must be on the GPU(s)",
        "no offload: the whole model on the GPU, which needs the offloaded GiB on top of the measured peak (the "
        "cuda-memory-fraction below does not count them: raise it, or add GPUs with num-shard), or export --to vllm or sglang"),
    "memory": approximate(
        "TGI's cuda-memory-fraction caps the whole process's share of the GPU; within it TGI sizes its KV cache itself"),
    "model_kind=causal-lm": exact(),
    "model_kind=image-text-to-text": approximate("TGI serves Qwen2-VL-family models with its own image preprocessing"),
    "model_kind=reranker": unexportable("TGI does not serve rerankers (Hugging Face's text-embeddings-inference does); export --to transformers", None),
    # Generate-time knobs (issue 19).
    "cache_implementation=dynamic": approximate(PAGED_KV_NOTE.format(what="dynamic", server="TGI")),
    "cache_implementation=static": approximate(PAGED_KV_NOTE.format(what="static", server="TGI")),
    "cache_implementation=offloaded": unexportable(OFFLOADED_KV_NOTE.format(what="offloaded", server="TGI"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=offloaded_static": unexportable(
        OFFLOADED_KV_NOTE.format(what="offloaded_static", server="TGI"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=quantized-fp8": approximate(
        "transformers' per-tensor fp8 KV cache (the newest 128 tokens unquantized) is written as kv-cache-dtype fp8_e4m3fn"),
    "cache_implementation=quantized-hqq": unexportable(QUANTIZED_4BIT_NOTE.format(server="TGI", backend="hqq"),
                                                       "kv-cache-dtype: fp8_e4m3fn (about twice the KV memory of 4-bit)"),
    "cache_implementation=quantized-quanto": unexportable(QUANTIZED_4BIT_NOTE.format(server="TGI", backend="quanto"),
                                                          "kv-cache-dtype: fp8_e4m3fn (about twice the KV memory of 4-bit)"),
    "compile_mode=reduce-overhead": approximate(COMPILE_MODE_NOTE.format(mode="reduce-overhead", server="TGI")),
    "compile_mode=default": approximate(COMPILE_MODE_NOTE.format(mode="default", server="TGI")),
    "compile_mode=max-autotune-no-cudagraphs": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune-no-cudagraphs", server="TGI")),
    "compile_mode=max-autotune": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune", server="TGI")),
    "stop_check=sync": approximate(STOP_CHECK_NOTE.format(how="after every step", server="TGI")),
    "stop_check=deferred": approximate(STOP_CHECK_NOTE.format(how="one step late", server="TGI")),
    "prefill_chunk_size=0": approximate("measured without chunked prefill; TGI chunks prefills by default (PREFILL_CHUNKING)"),
    "prefill_chunk_size>0": approximate(
        "chunked prefill is TGI's default; the measured chunk bounds max-batch-prefill-tokens (batch x chunk tokens), "
        "TGI's token budget of one prefill step"),
}

TGI_DTYPES = ("float16", "bfloat16")  # what --dtype takes; another dtype is written as its rule's alternative, bfloat16
TGI_QUANTIZE = {"bnb-int8": "bitsandbytes", "bnb-nf4": "bitsandbytes-nf4", "bnb-fp4": "bitsandbytes-fp4",
                "torchao-int8wo": "bitsandbytes", "torchao-int4wo": "bitsandbytes-nf4", "torchao-fp8": "fp8"}
ENV_NAMES = {
    "model-id": "MODEL_ID", "dtype": "DTYPE", "quantize": "QUANTIZE", "max-input-tokens": "MAX_INPUT_TOKENS",
    "max-total-tokens": "MAX_TOTAL_TOKENS", "max-batch-prefill-tokens": "MAX_BATCH_PREFILL_TOKENS",
    "max-batch-total-tokens": "MAX_BATCH_TOTAL_TOKENS", "max-concurrent-requests": "MAX_CONCURRENT_REQUESTS", "num-shard": "NUM_SHARD", "cuda-memory-fraction": "CUDA_MEMORY_FRACTION",
    "kv-cache-dtype": "KV_CACHE_DTYPE",
}


def export(config: DeploymentConfig, options: ExportOptions) -> ExportResult:
    s = config.settings
    d = Draft(NAME, RULES, options)
    d.notes.append(MAINTENANCE)
    model = start(d, config, options)
    d.header.insert(0, f"MAINTENANCE MODE: {MAINTENANCE}")
    d.header.append("Run: docker run --gpus all --shm-size 1g -p 8080:80 --env-file THIS_FILE "
                    "ghcr.io/huggingface/text-generation-inference:latest  (or the launcher command in the .sh file)")

    d.set("model-id", model)
    quant_comment = d.comment(f"quantization={s.quantization}", f"quantization {s.quantization}")
    if s.quantization == "none":
        torch_name = DTYPES[s.dtype].torch_name
        d.set("dtype", torch_name if torch_name in TGI_DTYPES else "bfloat16", d.comment(f"dtype={s.dtype}", f"dtype {s.dtype}"))
    else:  # TGI refuses --dtype with --quantize: the measured dtype cannot be asked for
        d.set("quantize", TGI_QUANTIZE[s.quantization], quant_comment, d.comment("quantized_dtype", "dtype with quantization"),
              f"measured with {s.dtype} weights/compute and {s.quantization}")
    prompt_tokens = s.max_length - s.new_tokens
    d.set("max-input-tokens", prompt_tokens, d.comment("max_length", f"max_length {s.max_length}"))
    d.set("max-total-tokens", s.max_length)
    batch_comment = d.comment("batch_size", f"batch_size {s.batch_size}")
    chunk = min(prompt_tokens, s.prefill_chunk_size or prompt_tokens)  # a chunked prefill's tokens per sequence
    d.set("max-batch-prefill-tokens", s.batch_size * chunk, batch_comment)
    d.set("max-batch-total-tokens", s.batch_size * s.max_length)
    capacity_entry(d, config, "max-concurrent-requests")
    tp, tp_comments = tensor_parallel(d, config)
    d.set("num-shard", tp, *tp_comments)
    if s.cpu_offload_gib:
        d.note(d.comment("cpu_offload_gib>0", f"cpu_offload_gib {s.cpu_offload_gib} ({offloaded_gib(config):g} GiB measured on the host)"))
    plan = memory_plan(config, options, "cuda-memory-fraction")
    if plan.fraction is not None:
        d.set("cuda-memory-fraction", plan.fraction, plan.arithmetic, d.comment("memory", "gpu memory"))
    else:
        d.note(plan.arithmetic)
    d.note(d.comment(f"attn_implementation={s.attn_implementation}", f"attn_implementation {s.attn_implementation}"),
           d.comment(f"compile={str(s.compile).lower()}", f"compile {s.compile}"),
           d.comment("new_tokens", f"new_tokens {s.new_tokens}"))
    for key, setting in generate_knobs(s):
        comment = d.comment(key, setting)
        if key.startswith("cache_implementation=quantized"):
            d.set("kv-cache-dtype", "fp8_e4m3fn", comment)
        else:
            d.note(comment)
    if is_vision(config):
        check_request_sizes(d, s)
        d.note(d.comment("images_per_prompt", f"images_per_prompt {s.images_per_prompt}"),
               d.comment("max_pixels", f"max_pixels {s.max_pixels}") if s.max_pixels is not None else "",
               f"measured: {s.images_per_prompt or 0} image(s) of {s.image_size or 'default size'} per request at max_pixels "
               f"{s.max_pixels}" if s.max_pixels is not None else "")
        if s.video_frames:
            d.note(d.comment("video_frames", f"video_frames {s.video_frames}"))
        if s.vision_attn_implementation is not None:
            d.note(d.comment(f"vision_attn_implementation={s.vision_attn_implementation}",
                             f"vision_attn_implementation {s.vision_attn_implementation}"))
    d.raise_errors()
    text = d.env_text("TGI: environment for text-generation-launcher / the TGI container (written by autotune export)", ENV_NAMES)
    command = d.command(["text-generation-launcher"])
    return ExportResult(NAME, FILENAME, text, command, notes=list(d.notes))
