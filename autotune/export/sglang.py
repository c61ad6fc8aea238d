"""best.yaml -> a YAML file for `python -m sglang.launch_server --config FILE` (long flag names
as keys) and the equivalent command line.

Checked against SGLang 0.5.23 (ServerArgs.add_cli_args, srt/utils/server_args_config_parser.py,
srt/model_loader/loader.py, srt/multimodal/processors/qwen_vl.py):
- `--config` takes a YAML file of long flag names; the command line wins over the file
  (docs.sglang.io/advanced_features/server_arguments).
- bitsandbytes quantizes in flight to 4-bit nf4 only (`quantize_4bit(..., quant_type="nf4")` in
  BitsAndBytesModelLoader; 8-bit only from pre-quantized checkpoints). It needs both
  `--quantization bitsandbytes` and `--load-format bitsandbytes`. `--quantization fp8` quantizes a
  16-bit checkpoint to 8-bit weights at load.
- `--attention-backend` choices include fa3, fa4, flashinfer, triton, torch_native (SDPA);
  `--mm-attention-backend` (the vision tower) sdpa, fa3, fa4, triton_attn.
- `--mem-fraction-static` is the fraction for weights + KV cache pool; activations and CUDA
  graphs use the rest.
- `--limit-mm-data-per-request` (JSON) and `--mm-process-config` (JSON with image/video keys; the
  image dict goes to the HF image processor as kwargs, the video dict takes nframes/max_pixels).
"""

from __future__ import annotations

import json
import math

from autotune.export.base import (
    capacity_entry,
    FEWER_GPUS_ALTERNATIVE,
    FEWER_GPUS_NOTE,
    LAYER_SPLIT_NOTE,
    MORE_GPUS_NOTE,
    OFFLOAD_NOTE,
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
    CHUNK_NOTE, COMPILE_MODE_NOTE, STOP_CHECK_NOTE, OFFLOADED_KV_ALTERNATIVE, OFFLOADED_KV_NOTE, PAGED_KV_NOTE, QUANTIZED_4BIT_NOTE, generate_knobs,
)
from autotune.spec import DeploymentConfig

NAME = "sglang"
FILENAME = "sglang.yaml"

# The compatibility rules: ONE place. Keys are `setting=value` or a bare setting name.
RULES: dict[str, Rule] = {
    "dtype=fp32": exact(),
    "dtype=fp16": exact(),
    "dtype=bf16": exact(),
    "quantization=none": exact(),
    "quantization=bnb-nf4": exact("SGLang quantizes with bitsandbytes nf4 while loading (quantization + load-format bitsandbytes)"),
    "quantization=bnb-fp4": unexportable(
        "SGLang quantizes with bitsandbytes in flight to nf4 only", "quantization: bitsandbytes (nf4, the same memory as fp4)"),
    "quantization=bnb-int8": unexportable(
        "SGLang loads bitsandbytes 8-bit only from pre-quantized checkpoints, it does not quantize to int8 while loading",
        "quantization: fp8 (8-bit weights quantized at load, about the same weight memory as int8; Ada/Hopper or newer)"),
    # torchao: SGLang 0.5.23 has no torchao (--torchao-config was removed; --quantization lists no torchao).
    "quantization=torchao-int8wo": unexportable(
        "SGLang has no torchao quantization (its --torchao-config was removed)",
        "quantization: fp8 (8-bit weights quantized at load, about the same weight memory as int8; Ada/Hopper or newer)"),
    "quantization=torchao-int4wo": unexportable(
        "SGLang has no torchao quantization (its --torchao-config was removed)",
        "quantization: bitsandbytes (nf4 quantized while loading, the same weight memory as int4)"),
    "quantization=torchao-fp8": approximate(
        "another fp8 recipe: SGLang's fp8 quantizes the weights to fp8 at load with dynamically quantized fp8 activations, "
        "as torchao's Float8DynamicActivationFloat8WeightConfig does, in SGLang's own kernels"),
    "attn_implementation=flash_attention_2": approximate(
        "transformers' FlashAttention-2 is written as fa3, SGLang's FlashAttention backend (Hopper; use flashinfer on older GPUs)"),
    "attn_implementation=sdpa": approximate(
        "transformers' sdpa kernel is not what SGLang serves fastest with: attention-backend is left to SGLang's choice "
        "(fa3 on Hopper, flashinfer elsewhere; torch_native is its SDPA backend)"),
    "attn_implementation=eager": approximate(
        "transformers' eager attention has no SGLang counterpart: attention-backend is left to SGLang's choice"),
    "attn_implementation=sdpa_gqa": approximate(
        "autotune's sdpa_gqa (sdpa with grouped-query decode packed) has no SGLang counterpart; SGLang's own kernels read each "
        "key/value head once as well: attention-backend is left to SGLang's choice"),
    "vision_attn_implementation=sdpa": exact(),
    "vision_attn_implementation=flash_attention_2": approximate("the vision tower's FlashAttention-2 is written as fa3 (Hopper)"),
    "vision_attn_implementation=eager": approximate("the vision tower's eager attention is written as sdpa, the same math in one kernel"),
    "compile=true": approximate(
        "measured with a static KV cache + torch.compile in transformers; SGLang's torch.compile (enable-torch-compile) is its "
        "own, on top of the CUDA graphs it captures by default"),
    "compile=false": approximate("measured without torch.compile; SGLang captures CUDA graphs by default"),
    "capacity": approximate(
        "the capacity is simulated for static batches of batch_size in transformers (autotune/capacity.py); SGLang batches "
        "continuously and holds at least as many requests/s: a floor for capacity planning, no SGLang setting"),
    "batch_size": approximate(
        "the batch size measured with transformers' generate() becomes max-running-requests as a starting point: SGLang "
        "batches requests continuously, up to this many at once"),
    "max_length": exact("context-length is prompt + generated tokens per request (visual tokens included), the measured worst case"),
    "new_tokens": approximate("generation length is per request in SGLang (max_new_tokens); the figures were measured with greedy decoding"),
    "images_per_prompt": exact(),
    "max_pixels": exact(),
    "image_size": exact(
        "not a SGLang setting: the size of the images the figures were measured with, written in the comment on the images "
        "per request; SGLang takes any size and bounds each image by max_pixels"),
    "video_size": exact(
        "not a SGLang setting: the frame size of the videos the figures were measured with; SGLang resizes frames itself "
        "(see video_frames)"),
    "video_frames": approximate(
        "SGLang samples video frames itself (nframes) and bounds each by max_pixels, close to but not the same code path autotune measured"),
    "device=cpu": approximate(
        "tuned on CPU: the measured speed and memory do not carry over to a GPU server; the settings are a starting point"),
    "tensor_parallel_size>1": approximate(TENSOR_PARALLEL_NOTE),
    # num_gpus (the GPUs best.yaml was measured on) is the default tp-size. Another size than
    # measured: more GPUs is approximate (the per-GPU figure over-reserves), fewer is unexportable
    # (no measurement says it fits): see MORE_GPUS_NOTE and FEWER_GPUS_NOTE in base.py.
    "num_gpus>1": approximate("num_gpus is written as tp-size. " + LAYER_SPLIT_NOTE.format(server="SGLang")),
    "tensor_parallel_size>num_gpus": approximate(MORE_GPUS_NOTE),
    "tensor_parallel_size<num_gpus": unexportable(FEWER_GPUS_NOTE, FEWER_GPUS_ALTERNATIVE),
    "cpu_offload_gib>0": approximate(OFFLOAD_NOTE.format(server="SGLang") + ", rounded up to whole GiB (SGLang takes an integer)"),
    "memory": approximate(
        "SGLang's fraction covers the weights and the KV cache pool; activations and CUDA graphs use the rest of the GPU, so "
        "the process can use somewhat more than this: lower it if the budget is a hard limit"),
    "model_kind=causal-lm": exact(),
    "model_kind=image-text-to-text": exact(),
    "model_kind=reranker": unexportable(
        "SGLang serves rerankers through model-specific scoring setups that autotune does not generate; export --to transformers", None),
    # Generate-time knobs (issue 19).
    "cache_implementation=dynamic": approximate(PAGED_KV_NOTE.format(what="dynamic", server="SGLang")),
    "cache_implementation=static": approximate(PAGED_KV_NOTE.format(what="static", server="SGLang")),
    "cache_implementation=offloaded": unexportable(OFFLOADED_KV_NOTE.format(what="offloaded", server="SGLang"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=offloaded_static": unexportable(
        OFFLOADED_KV_NOTE.format(what="offloaded_static", server="SGLang"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=quantized-fp8": approximate(
        "transformers' per-tensor fp8 KV cache (the newest 128 tokens unquantized) is written as kv-cache-dtype fp8_e4m3 "
        "(SGLang has no bare fp8), its fp8 KV cache with its own scales"),
    "cache_implementation=quantized-hqq": unexportable(QUANTIZED_4BIT_NOTE.format(server="SGLang", backend="hqq"),
                                                       "kv-cache-dtype: fp8_e4m3 (about twice the KV memory of 4-bit)"),
    "cache_implementation=quantized-quanto": unexportable(QUANTIZED_4BIT_NOTE.format(server="SGLang", backend="quanto"),
                                                          "kv-cache-dtype: fp8_e4m3 (about twice the KV memory of 4-bit)"),
    "compile_mode=reduce-overhead": approximate(COMPILE_MODE_NOTE.format(mode="reduce-overhead", server="SGLang")),
    "compile_mode=default": approximate(COMPILE_MODE_NOTE.format(mode="default", server="SGLang")),
    "compile_mode=max-autotune-no-cudagraphs": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune-no-cudagraphs", server="SGLang")),
    "compile_mode=max-autotune": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune", server="SGLang")),
    "stop_check=sync": approximate(STOP_CHECK_NOTE.format(how="after every step", server="SGLang")),
    "stop_check=deferred": approximate(STOP_CHECK_NOTE.format(how="one step late", server="SGLang")),
    "prefill_chunk_size=0": approximate(
        "measured without chunked prefill: written as chunked-prefill-size -1 (SGLang's off); its scheduler still batches "
        "prefills its own way"),
    "prefill_chunk_size>0": approximate("chunked prefill is SGLang's chunked-prefill-size, a token budget of one prefill step"),
}

# quantization method -> (--quantization, --load-format) as written, the nearest for the unexportable ones (see RULES)
SGLANG_QUANTIZATION = {"bnb-nf4": ("bitsandbytes", "bitsandbytes"), "bnb-fp4": ("bitsandbytes", "bitsandbytes"),
                       "bnb-int8": ("fp8", None), "torchao-int8wo": ("fp8", None),
                       "torchao-int4wo": ("bitsandbytes", "bitsandbytes"), "torchao-fp8": ("fp8", None)}
SGLANG_ATTENTION = {"flash_attention_2": "fa3"}
SGLANG_VISION_ATTENTION = {"sdpa": "sdpa", "flash_attention_2": "fa3", "eager": "sdpa"}


def export(config: DeploymentConfig, options: ExportOptions) -> ExportResult:
    s = config.settings
    d = Draft(NAME, RULES, options)
    model = start(d, config, options)

    d.set("model-path", model)
    d.set("dtype", DTYPES[s.dtype].torch_name, d.comment(f"dtype={s.dtype}", f"dtype {s.dtype}"))
    quant_key = f"quantization={s.quantization}"
    quant_comment = d.comment(quant_key, f"quantization {s.quantization}")
    if s.quantization != "none":
        quantization, load_format = SGLANG_QUANTIZATION[s.quantization]
        d.set("quantization", quantization, quant_comment)
        if load_format is not None:
            d.set("load-format", load_format)
    d.set("context-length", s.max_length, d.comment("max_length", f"max_length {s.max_length}"))
    d.set("max-running-requests", s.batch_size, d.comment("batch_size", f"batch_size {s.batch_size}"))
    capacity_entry(d, config)
    plan = memory_plan(config, options, "mem-fraction-static")
    if plan.fraction is not None:
        d.set("mem-fraction-static", plan.fraction, plan.arithmetic, d.comment("memory", "gpu memory"))
    else:
        d.note(plan.arithmetic)
    tp, tp_comments = tensor_parallel(d, config)
    d.set("tp-size", tp, *tp_comments)
    if s.cpu_offload_gib:
        d.set("cpu-offload-gb", math.ceil(offloaded_gib(config)), d.comment("cpu_offload_gib>0", f"cpu_offload_gib {s.cpu_offload_gib}"))
    attn_comment = d.comment(f"attn_implementation={s.attn_implementation}", f"attn_implementation {s.attn_implementation}")
    if s.attn_implementation in SGLANG_ATTENTION:
        d.set("attention-backend", SGLANG_ATTENTION[s.attn_implementation], attn_comment)
    else:
        d.note(attn_comment)
    compile_comment = d.comment(f"compile={str(s.compile).lower()}", f"compile {s.compile}")
    if s.compile:
        d.set("enable-torch-compile", True, compile_comment)
    else:
        d.note(compile_comment)
    d.note(d.comment("new_tokens", f"new_tokens {s.new_tokens}"))
    _generate_knobs(d, config)
    if is_vision(config):
        _vision(d, config)
    d.raise_errors()
    text = d.yaml_text("SGLang: python -m sglang.launch_server --config THIS_FILE (written by autotune export)")
    command = d.command(["python", "-m", "sglang.launch_server"])
    return ExportResult(NAME, FILENAME, text, command, notes=list(d.notes), suffixes=(".yaml", ".yml"))


def _generate_knobs(d: Draft, config: DeploymentConfig) -> None:
    s = config.settings
    for key, setting in generate_knobs(s):
        comment = d.comment(key, setting)
        if key.startswith("cache_implementation=quantized"):
            d.set("kv-cache-dtype", "fp8_e4m3", comment)
        elif key == "prefill_chunk_size>0":
            budget = s.prefill_chunk_size * s.batch_size
            d.set("chunked-prefill-size", budget, comment, CHUNK_NOTE.format(chunk=s.prefill_chunk_size, server="SGLang",
                                                                              batch=s.batch_size, budget=budget))
        elif key == "prefill_chunk_size=0":
            d.set("chunked-prefill-size", -1, comment)
        else:
            d.note(comment)


def _vision(d: Draft, config: DeploymentConfig) -> None:
    from autotune.vision import DEFAULT_MIN_PIXELS

    s = config.settings
    images = s.images_per_prompt or 0
    videos = 1 if s.video_frames else 0
    check_request_sizes(d, s)
    d.set("enable-multimodal", True)
    d.set("limit-mm-data-per-request", _json({"image": images, "video": videos}),
          d.comment("images_per_prompt", f"images_per_prompt {images}"),
          f"at most {images} image(s) and {videos} video(s) per request, the measured worst case "
          f"({s.image_size or 'default-size'} images)")
    process: dict[str, dict] = {}
    comments = []
    if s.max_pixels is not None:
        process["image"] = {"size": {"shortest_edge": min(DEFAULT_MIN_PIXELS, s.max_pixels), "longest_edge": s.max_pixels}}
        visual = config.measured.visual_tokens_per_request
        comments.append(d.comment("max_pixels", f"max_pixels {s.max_pixels}"))
        comments.append(f"each image resized to at most {s.max_pixels} pixels (size.longest_edge, as autotune's processor)"
                        + (f": {visual} visual tokens per request were measured" if visual else ""))
    if s.video_frames:
        process["video"] = {"nframes": s.video_frames, **({"max_pixels": s.max_pixels} if s.max_pixels else {})}
        comments.append(d.comment("video_frames", f"video_frames {s.video_frames}"))
    if process:
        d.set("mm-process-config", _json(process), *comments)
    if s.vision_attn_implementation is not None:
        d.set("mm-attention-backend", SGLANG_VISION_ATTENTION[s.vision_attn_implementation],
              d.comment(f"vision_attn_implementation={s.vision_attn_implementation}",
                        f"vision_attn_implementation {s.vision_attn_implementation}"))


def _json(value: dict) -> str:
    return json.dumps(value, separators=(", ", ": "))
