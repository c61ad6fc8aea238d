"""best.yaml -> a YAML file for `vllm serve --config FILE` (long flag names as keys) and the
equivalent command line.

Checked against vLLM 0.32.0 (EngineArgs.add_cli_args, vllm/utils/argparse_utils.py,
vllm/model_executor/models/qwen2_vl.py; the 0.33.0 wheel's quantization list is the same):
- `--config` takes a YAML file (.yaml/.yml) whose keys are the long flag names; the command line
  wins over the file (docs.vllm.ai/en/latest/configuration/serve_args).
- bitsandbytes is gone from vLLM 0.32 and 0.33: `--quantization` lists no `bitsandbytes` and there
  is no bitsandbytes loader (older releases quantized in flight to 4-bit nf4 only). Quantizing at load
  is now the "online" shorthands; `fp8_per_tensor` is what vLLM's own error message recommends
  instead of the old online `fp8`.
- `--limit-mm-per-prompt` and `--mm-processor-kwargs` take JSON. Qwen2-VL/Qwen2.5-VL/Qwen3-VL take
  the pixel bound as `size.longest_edge` / `size.shortest_edge` (transformers 5; `max_pixels` /
  `min_pixels` are accepted aliases), see vllm-project/vllm#33208.
- `--attention-backend` (values of AttentionBackendEnum, e.g. FLASH_ATTN) and
  `--mm-encoder-attn-backend` (the vision tower's, e.g. TORCH_SDPA, FLASH_ATTN).
- `--media-io-kwargs '{"video": {"num_frames": N}}'` sets the frames sampled per video.
"""

from __future__ import annotations

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

NAME = "vllm"
FILENAME = "vllm.yaml"

_NO_BNB = "vLLM 0.32 and 0.33 have no bitsandbytes (no in-flight bnb quantization, no bnb loader)"
_NO_TORCHAO_ONLINE = ("vLLM serves torchao only from a checkpoint saved quantized (quantization: torchao) or with "
                      "torchao's serialized config in --hf-overrides, which autotune does not write")
_FP8 = "quantization: fp8_per_tensor (8-bit weights quantized at load; FP8 GEMMs on Ada/Hopper or newer, weight-only Marlin on Turing/Ampere)"

# The compatibility rules: ONE place. Keys are `setting=value` or a bare setting name.
RULES: dict[str, Rule] = {
    "dtype=fp32": exact(),
    "dtype=fp16": exact(),
    "dtype=bf16": exact(),
    "quantization=none": exact(),
    "quantization=bnb-nf4": unexportable(
        _NO_BNB, _FP8 + "; it holds about twice the weight memory of nf4, or pass --model with a pre-quantized 4-bit AWQ/GPTQ checkpoint"),
    "quantization=bnb-fp4": unexportable(
        _NO_BNB, _FP8 + "; it holds about twice the weight memory of fp4, or pass --model with a pre-quantized 4-bit AWQ/GPTQ checkpoint"),
    "quantization=bnb-int8": unexportable(_NO_BNB, _FP8 + "; about the same weight memory as int8"),
    # torchao: `--quantization torchao` serves a checkpoint saved with TorchAoConfig (save_pretrained), but quantizes a
    # 16-bit checkpoint only through --hf-overrides with torchao's serialized config, which autotune does not write.
    "quantization=torchao-int8wo": unexportable(
        _NO_TORCHAO_ONLINE, _FP8 + "; about the same weight memory as int8, or pass --model with the checkpoint saved with "
        "TorchAoConfig (vLLM serves it with quantization: torchao)"),
    "quantization=torchao-int4wo": unexportable(
        _NO_TORCHAO_ONLINE, _FP8 + "; it holds about twice the weight memory of int4, or pass --model with the checkpoint "
        "saved with TorchAoConfig (vLLM serves it with quantization: torchao)"),
    "quantization=torchao-fp8": approximate(
        "another fp8 recipe: vLLM's fp8_per_tensor quantizes the weights to fp8 at load with dynamically quantized fp8 "
        "activations, as torchao's Float8DynamicActivationFloat8WeightConfig does, in vLLM's own kernels"),
    "attn_implementation=flash_attention_2": exact("attention-backend FLASH_ATTN is vLLM's FlashAttention backend"),
    "attn_implementation=sdpa": approximate(
        "transformers' sdpa kernel has no vLLM counterpart (vLLM runs its own paged-attention kernels): attention-backend is "
        "left to vLLM's automatic choice"),
    "attn_implementation=eager": approximate(
        "transformers' eager attention has no vLLM counterpart (vLLM runs its own paged-attention kernels): attention-backend "
        "is left to vLLM's automatic choice"),
    "attn_implementation=sdpa_gqa": approximate(
        "autotune's sdpa_gqa (sdpa with grouped-query decode packed) has no vLLM counterpart; vLLM's own paged-attention "
        "kernels read each key/value head once as well: attention-backend is left to vLLM's automatic choice"),
    "vision_attn_implementation=sdpa": exact(),
    "vision_attn_implementation=flash_attention_2": exact(),
    "vision_attn_implementation=eager": approximate("the vision tower's eager attention is written as TORCH_SDPA, the same math in one kernel"),
    "compile=true": approximate(
        "measured with a static KV cache + torch.compile in transformers; vLLM compiles and captures CUDA graphs by default"),
    "compile=false": approximate(
        "measured without torch.compile; vLLM compiles and captures CUDA graphs by default (add enforce-eager: true to turn that off)"),
    "capacity": approximate(
        "the capacity is simulated for static batches of batch_size in transformers (autotune/capacity.py); vLLM batches "
        "continuously and holds at least as many requests/s: a floor for capacity planning, no vLLM setting"),
    "batch_size": approximate(
        "the batch size measured with transformers' generate() becomes max-num-seqs as a starting point: vLLM batches "
        "requests continuously, up to this many at once and as many as its KV cache holds"),
    "max_length": exact("max-model-len is prompt + generated tokens per request (visual tokens included), the measured worst case"),
    "new_tokens": approximate("generation length is per request in vLLM (max_tokens); the figures were measured with greedy decoding"),
    "images_per_prompt": exact(),
    "max_pixels": exact(),
    "image_size": exact(
        "not a vLLM setting: the size of the images the figures were measured with, written in the comment on the images "
        "per request; vLLM takes any size and bounds each image by max_pixels"),
    "video_size": exact(
        "not a vLLM setting: the frame size of the videos the figures were measured with; vLLM resizes frames itself "
        "(see video_frames)"),
    "video_frames": approximate(
        "video frames are sampled by vLLM's video loader (num_frames) and resized by the model's video processor, whose pixel "
        "bound may differ from the image bound autotune measured frames with"),
    "device=cpu": approximate(
        "tuned on CPU: the measured speed and memory do not carry over to a GPU server; the settings are a starting point"),
    "tensor_parallel_size>1": approximate(TENSOR_PARALLEL_NOTE),
    # num_gpus (the GPUs best.yaml was measured on) is the default tensor-parallel-size. Another size than
    # measured: more GPUs is approximate (the per-GPU figure over-reserves), fewer is unexportable
    # (no measurement says it fits): see MORE_GPUS_NOTE and FEWER_GPUS_NOTE in base.py.
    "num_gpus>1": approximate("num_gpus is written as tensor-parallel-size. " + LAYER_SPLIT_NOTE.format(server="vLLM")),
    "tensor_parallel_size>num_gpus": approximate(MORE_GPUS_NOTE),
    "tensor_parallel_size<num_gpus": unexportable(FEWER_GPUS_NOTE, FEWER_GPUS_ALTERNATIVE),
    "cpu_offload_gib>0": approximate(OFFLOAD_NOTE.format(server="vLLM (UVA weight offload, per GPU)")),
    "memory": approximate(
        "vLLM pre-allocates this fraction of the GPU for weights, activations and KV cache; the transformers peak plus headroom "
        "is a starting point"),
    "model_kind=causal-lm": exact(),
    "model_kind=image-text-to-text": exact(),
    "model_kind=reranker": unexportable(
        "vLLM serves rerankers through its pooling runner with model-specific conversion that autotune does not generate; "
        "export --to transformers", None),
    # Generate-time knobs (issue 19).
    "cache_implementation=dynamic": approximate(PAGED_KV_NOTE.format(what="dynamic", server="vLLM")),
    "cache_implementation=static": approximate(PAGED_KV_NOTE.format(what="static", server="vLLM")),
    "cache_implementation=offloaded": unexportable(OFFLOADED_KV_NOTE.format(what="offloaded", server="vLLM"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=offloaded_static": unexportable(
        OFFLOADED_KV_NOTE.format(what="offloaded_static", server="vLLM"), OFFLOADED_KV_ALTERNATIVE),
    "cache_implementation=quantized-fp8": approximate(
        "transformers' per-tensor fp8 KV cache (the newest 128 tokens unquantized) is written as kv-cache-dtype fp8, vLLM's "
        "fp8 (e4m3) KV cache with its own scales"),
    "cache_implementation=quantized-hqq": unexportable(QUANTIZED_4BIT_NOTE.format(server="vLLM", backend="hqq"),
                                                       "kv-cache-dtype: fp8 (about twice the KV memory of 4-bit)"),
    "cache_implementation=quantized-quanto": unexportable(QUANTIZED_4BIT_NOTE.format(server="vLLM", backend="quanto"),
                                                          "kv-cache-dtype: fp8 (about twice the KV memory of 4-bit)"),
    "compile_mode=reduce-overhead": approximate(COMPILE_MODE_NOTE.format(mode="reduce-overhead", server="vLLM")),
    "compile_mode=default": approximate(COMPILE_MODE_NOTE.format(mode="default", server="vLLM")),
    "compile_mode=max-autotune-no-cudagraphs": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune-no-cudagraphs", server="vLLM")),
    "compile_mode=max-autotune": approximate(COMPILE_MODE_NOTE.format(mode="max-autotune", server="vLLM")),
    "stop_check=sync": approximate(STOP_CHECK_NOTE.format(how="after every step", server="vLLM")),
    "stop_check=deferred": approximate(STOP_CHECK_NOTE.format(how="one step late", server="vLLM")),
    "prefill_chunk_size=0": approximate(
        "measured without chunked prefill; vLLM chunks prefills by default (enable-chunked-prefill), which it is left to"),
    "prefill_chunk_size>0": approximate(
        "chunked prefill is enable-chunked-prefill with max-num-batched-tokens, vLLM's token budget of one scheduler step "
        "(prefill chunks and decodes of the running batch together)"),
}

VLLM_QUANTIZATION: dict[str, str] = {"torchao-fp8": "fp8_per_tensor"}  # methods with an exact or approximate rule -> vLLM's --quantization name
VLLM_ATTENTION = {"flash_attention_2": "FLASH_ATTN"}
VLLM_VISION_ATTENTION = {"sdpa": "TORCH_SDPA", "flash_attention_2": "FLASH_ATTN", "eager": "TORCH_SDPA"}


def export(config: DeploymentConfig, options: ExportOptions) -> ExportResult:
    s = config.settings
    d = Draft(NAME, RULES, options)
    model = start(d, config, options)
    d.set("model", model)
    d.set("dtype", DTYPES[s.dtype].torch_name, d.comment(f"dtype={s.dtype}", f"dtype {s.dtype}"))
    quant_rule = d.rule(f"quantization={s.quantization}")
    quant_comment = d.comment(f"quantization={s.quantization}", f"quantization {s.quantization}")
    if quant_rule.kind == "unexportable":
        d.set("quantization", "fp8_per_tensor", quant_comment)
    elif s.quantization != "none":  # a method vLLM serves: its own name for it (a missing one is a KeyError the tests catch)
        d.set("quantization", VLLM_QUANTIZATION[s.quantization], quant_comment)
    d.set("max-model-len", s.max_length, d.comment("max_length", f"max_length {s.max_length}"))
    d.set("max-num-seqs", s.batch_size, d.comment("batch_size", f"batch_size {s.batch_size}"))
    capacity_entry(d, config)
    plan = memory_plan(config, options, "gpu-memory-utilization")
    if plan.fraction is not None:
        d.set("gpu-memory-utilization", plan.fraction, plan.arithmetic, d.comment("memory", "gpu memory"))
    else:
        d.note(plan.arithmetic)
    tp, tp_comments = tensor_parallel(d, config)
    d.set("tensor-parallel-size", tp, *tp_comments)
    if s.cpu_offload_gib:
        d.set("cpu-offload-gb", offloaded_gib(config), d.comment("cpu_offload_gib>0", f"cpu_offload_gib {s.cpu_offload_gib}"))
    attn_comment = d.comment(f"attn_implementation={s.attn_implementation}", f"attn_implementation {s.attn_implementation}")
    if s.attn_implementation in VLLM_ATTENTION:
        d.set("attention-backend", VLLM_ATTENTION[s.attn_implementation], attn_comment)
    else:
        d.note(attn_comment)
    d.note(d.comment(f"compile={str(s.compile).lower()}", f"compile {s.compile}"),
           d.comment("new_tokens", f"new_tokens {s.new_tokens}"))
    _generate_knobs(d, config)
    if is_vision(config):
        _vision(d, config)
    d.raise_errors()
    title = "vLLM: vllm serve --config THIS_FILE (written by autotune export)"
    text = d.yaml_text(title)
    command = d.command(["vllm", "serve"], positional=model, skip=("model",))
    return ExportResult(NAME, FILENAME, text, command, notes=list(d.notes), suffixes=(".yaml", ".yml"))


def _generate_knobs(d: Draft, config: DeploymentConfig) -> None:
    s = config.settings
    for key, setting in generate_knobs(s):
        comment = d.comment(key, setting)
        if key.startswith("cache_implementation=quantized"):
            d.set("kv-cache-dtype", "fp8", comment)
        elif key == "prefill_chunk_size>0":
            budget = s.prefill_chunk_size * s.batch_size
            d.set("enable-chunked-prefill", True, comment)
            d.set("max-num-batched-tokens", budget, CHUNK_NOTE.format(chunk=s.prefill_chunk_size, server="vLLM",
                                                                       batch=s.batch_size, budget=budget))
        else:
            d.note(comment)


def _vision(d: Draft, config: DeploymentConfig) -> None:
    from autotune.vision import DEFAULT_MIN_PIXELS

    s = config.settings
    images = s.images_per_prompt or 0
    videos = 1 if s.video_frames else 0
    check_request_sizes(d, s)
    d.set("limit-mm-per-prompt", _json({"image": images, "video": videos}),
          d.comment("images_per_prompt", f"images_per_prompt {images}"),
          f"at most {images} image(s) and {videos} video(s) per request, the measured worst case "
          f"({s.image_size or 'default-size'} images)")
    if s.max_pixels is not None:
        size = {"shortest_edge": min(DEFAULT_MIN_PIXELS, s.max_pixels), "longest_edge": s.max_pixels}
        visual = config.measured.visual_tokens_per_request
        d.set("mm-processor-kwargs", _json({"size": size}), d.comment("max_pixels", f"max_pixels {s.max_pixels}"),
              f"each image resized to at most {s.max_pixels} pixels (size.longest_edge, as autotune's processor)"
              + (f": {visual} visual tokens per request were measured" if visual else ""))
    if s.video_frames:
        d.set("media-io-kwargs", _json({"video": {"num_frames": s.video_frames}}),
              d.comment("video_frames", f"video_frames {s.video_frames}"))
    if s.vision_attn_implementation is not None:
        d.set("mm-encoder-attn-backend", VLLM_VISION_ATTENTION[s.vision_attn_implementation],
              d.comment(f"vision_attn_implementation={s.vision_attn_implementation}",
                        f"vision_attn_implementation {s.vision_attn_implementation}"))


def _json(value: dict) -> str:
    """JSON as a string value: older vLLM releases str() a YAML mapping instead of dumping JSON."""
    import json

    return json.dumps(value, separators=(", ", ": "))
