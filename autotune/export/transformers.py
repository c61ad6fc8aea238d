"""best.yaml -> a Python snippet that loads the model with plain transformers exactly as measured,
and the kwargs file `autotune.load_deployment` reads (a DeploymentConfig, written next to the
snippet as `<name>.best.yaml`).

transformers is what autotune measured with, so nearly everything maps exactly: dtype,
bitsandbytes config, attention implementation (per tower with a dict, transformers 5), the static
cache that makes generate() compile, the processor's pixel bound (`size.longest_edge`).
"""

from __future__ import annotations

import ast
import json
import re

import yaml

from autotune.export.base import (
    FEWER_GPUS_NOTE,
    TENSOR_PARALLEL_NOTE,
    Draft,
    ExportOptions,
    ExportResult,
    Rule,
    approximate,
    check_request_sizes,
    exact,
    is_vision,
    start,
    tensor_parallel,
    unexportable,
    wrap,
)
from autotune.dtypes import DTYPES
from autotune.export.generate_notes import generate_knobs
from autotune.kv_cache import generation_config_settings
from autotune.loading import generate_kwargs
from autotune.models import ModelRef
from autotune.quant import get_method
from autotune.attention import ATTENTION_KINDS
from autotune.spec import DeploymentConfig

NAME = "transformers"
FILENAME = "transformers_deploy.py"
KWARGS_SUFFIX = ".best.yaml"

# The compatibility rules: ONE place. Keys are `setting=value` or a bare setting name.
RULES: dict[str, Rule] = {
    "dtype=fp32": exact(),
    "dtype=fp16": exact(),
    "dtype=bf16": exact(),
    "quantization=none": exact(),
    "quantization=bnb-int8": exact(),
    "quantization=bnb-nf4": exact(),
    "quantization=bnb-fp4": exact(),
    "quantization=torchao-int8wo": exact("TorchAoConfig with torchao's config object, quantized while loading, as measured"),
    "quantization=torchao-int4wo": exact("TorchAoConfig with torchao's config object, quantized while loading, as measured"),
    "quantization=torchao-fp8": exact("TorchAoConfig with torchao's config object, quantized while loading, as measured"),
    "attn_implementation=sdpa": exact(),
    "attn_implementation=eager": exact(),
    "attn_implementation=flash_attention_2": exact(),
    "attn_implementation=sdpa_gqa": exact(
        "autotune's own attention function: the script registers it from the autotune package before loading"),
    "vision_attn_implementation=sdpa": exact(),
    "vision_attn_implementation=eager": exact(),
    "vision_attn_implementation=flash_attention_2": exact(),
    "compile=true": exact("a static KV cache makes generate() compile the forward pass, as measured"),
    "compile=false": exact(),
    "capacity": approximate(
        "the capacity is simulated for a server that runs static batches of up to MAX_BATCH_SIZE as requests arrive "
        "(autotune/capacity.py): your batching code decides whether it holds"),
    "batch_size": approximate(
        "generate() takes whatever batch it is given: the measured batch size is a constant (MAX_BATCH_SIZE) for your "
        "batching code, not a setting"),
    "max_length": approximate("prompts must be truncated to MAX_PROMPT_TOKENS by your code; transformers does not enforce max_length"),
    "new_tokens": exact(),
    "images_per_prompt": approximate("images per request are up to your code: the measured worst case is MAX_IMAGES_PER_PROMPT"),
    "max_pixels": exact(),
    "image_size": exact("the size of the images the figures were measured with, written next to MAX_IMAGES_PER_PROMPT"),
    "video_size": exact("the frame size of the videos the figures were measured with, written next to VIDEO_FRAMES"),
    "video_frames": approximate("video frames are sampled by your code: the measured worst case is VIDEO_FRAMES frames"),
    "device=cpu": exact(),
    "tensor_parallel_size>1": approximate(
        "the snippet spreads layers over the GPUs with device_map='auto' (pipeline-style, not tensor parallel; "
        "transformers' tensor parallel needs torchrun and tp_plan='auto'). " + TENSOR_PARALLEL_NOTE),
    # num_gpus (the GPUs best.yaml was measured on) is the default number of GPUs. Another number
    # than measured: more GPUs is approximate (each holds less than measured), fewer is unexportable
    # (no measurement says it fits), as for the servers: see FEWER_GPUS_NOTE in base.py.
    "num_gpus>1": exact(
        "device_map='auto' spreads the layers over the GPUs (accelerate's balanced split, pipeline-style, not tensor "
        "parallel), as best.yaml was measured on num_gpus GPUs"),
    "tensor_parallel_size>num_gpus": approximate(
        "the snippet spreads the layers over more GPUs than best.yaml was measured on (num_gpus): each holds less than the "
        "measured per-GPU peak, and throughput and latency differ from the measured figures (re-measure on the target)"),
    "tensor_parallel_size<num_gpus": unexportable(
        FEWER_GPUS_NOTE, "the asked number of GPUs, max_memory per GPU scaled by num_gpus / tensor-parallel-size"),
    "cpu_offload_gib>0": exact(
        "device_map='auto' with max_memory for GPU 0 and the host: accelerate keeps the same layers in host memory as in "
        "the measurement (load_deployment computes the same split)"),
    "model_kind=causal-lm": exact(),
    "model_kind=image-text-to-text": exact(),
    "model_kind=reranker": approximate(
        "a reranker is scored by P('yes') against P('no') for the next token; the snippet loads it, the scoring is up to your code"),
    # Generate-time knobs (issue 19): GENERATE_KWARGS and the model's generation_config, as measured.
    "cache_implementation=dynamic": exact(),
    "cache_implementation=static": exact(),
    "cache_implementation=offloaded": exact("needs an accelerator"),
    "cache_implementation=offloaded_static": exact("needs an accelerator"),
    "cache_implementation=quantized-fp8": exact("needs transformers 5.24 or newer"),
    "cache_implementation=quantized-hqq": exact("needs the hqq package"),
    "cache_implementation=quantized-quanto": exact("needs the optimum-quanto package"),
    "compile_mode=reduce-overhead": exact(),
    "compile_mode=default": exact(),
    "compile_mode=max-autotune-no-cudagraphs": exact(),
    "compile_mode=max-autotune": exact(),
    "prefill_chunk_size=0": exact(),
    "prefill_chunk_size>0": exact(),
    "stop_check=sync": exact("transformers 5.17-5.25 read the stop flag after every step on CUDA by default; nothing is set"),
    "stop_check=deferred": exact("autotune's set_stop_check switches transformers' DeferredStopCheck (transformers >= 5.17) "
                                 "on for CUDA; needs autotune installed where the script runs; on CPU generate() keeps the "
                                 "synchronous check"),
}



def export(config: DeploymentConfig, options: ExportOptions) -> ExportResult:
    s = config.settings
    d = Draft(NAME, RULES, options)
    model = start(d, config, options)
    vision = is_vision(config)
    torch_dtype = f"torch.{DTYPES[s.dtype].torch_name}"
    method = get_method(s.quantization)  # owns the config it writes (quant.py)

    for key, setting in ((f"dtype={s.dtype}", "dtype"), (f"quantization={s.quantization}", "quantization"),
                         (f"attn_implementation={s.attn_implementation}", "attn_implementation"),
                         (f"compile={str(s.compile).lower()}", "compile"), ("new_tokens", "new_tokens"),
                         *generate_knobs(s)):
        d.check(key, setting)
    batch_comment = d.comment("batch_size", "batch_size")
    length_comment = d.comment("max_length", "max_length")
    gpus, gpu_comments = tensor_parallel(d, config)
    max_memory: dict | None = None
    if s.num_gpus > 1:
        device_map: str | dict = "auto"
        max_memory, memory_comment = _max_memory(config, options, gpus)
        device_comments = [*gpu_comments, memory_comment]
    elif s.cpu_offload_gib:
        device_map = "auto"
        max_memory, memory_comment = _offload_max_memory(d, config)
        device_comments = [*gpu_comments, memory_comment]
    elif gpus > 1:
        device_map, device_comments = "auto", gpu_comments
    else:
        device_map, device_comments = {"": config.device}, [f"measured on {config.device}"]
    attn = _py(s.attn_implementation)
    if s.vision_attn_implementation is not None:
        # A dict sets the vision tower's kernel apart from the language model's (transformers 5).
        d.check(f"vision_attn_implementation={s.vision_attn_implementation}", "vision_attn_implementation")
        attn = _py({"": s.attn_implementation, "text_config": s.attn_implementation, "vision_config": s.vision_attn_implementation})
    kwargs = [f"dtype={torch_dtype},", f"attn_implementation={attn},"]
    quant_config = method.config_source(torch_dtype)
    if quant_config is not None:
        kwargs.append("quantization_config=" + quant_config + ",")
    kwargs += [f"# {c}" for comment in device_comments if comment for c in wrap(comment, 90)]
    kwargs.append(f"device_map={_py(device_map)},")
    if max_memory is not None:
        kwargs.append(f"max_memory={_py(max_memory)},")
    auto_model = "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"
    imports = ["AutoProcessor" if vision else "AutoTokenizer", auto_model]
    imports += method.config_imports
    settings = generation_config_settings(s)  # set on the model's generation_config in load()
    if "compile_config" in settings:
        imports.append("CompileConfig")
    # quant.py: what the method's compiled kernels need from inductor (nothing without compile)
    inductor_settings = method.inductor_settings if "compile_config" in settings else {}

    # What the script needs from autotune: its own attention kernels (autotune/attention.py),
    # registered with transformers by name, and the deferred stop check (autotune/kv_cache.py).
    custom_attention = ATTENTION_KINDS[s.attn_implementation].forward is not None
    autotune_imports = ["from autotune.attention import register_custom_attention"] if custom_attention else []
    if s.stop_check == "deferred":
        autotune_imports.append("from autotune.kv_cache import set_stop_check")
    lines = ['"""transformers: load the model as autotune measured it (written by autotune export).', ""]
    lines += [_docstring_text(c) for line in d.header for c in wrap(line)]
    lines += ["", "With autotune installed, the same load in one line, from the kwargs file written next to this one:",
              "    from autotune import load_deployment",
              f'    model, tokenizer, generate_kwargs = load_deployment("<this file\'s name>{KWARGS_SUFFIX}")',
              '"""', "", "import torch", *(["import torch._inductor.config"] if inductor_settings else []),
              f"from transformers import {', '.join(sorted(imports))}",
              *method.config_import_lines, *autotune_imports, "",
              f"MODEL = {_py(model)}", ""]
    lines += [f"# {c}" for c in wrap(length_comment)]
    lines += [f"MAX_LENGTH = {s.max_length}  # prompt + new tokens per request, the measured worst case",
              f"MAX_PROMPT_TOKENS = {s.max_length - s.new_tokens}"]
    lines += [f"# {c}" for c in wrap(batch_comment)]
    lines += [f"MAX_BATCH_SIZE = {s.batch_size}",
              f"GENERATE_KWARGS = {_py(generate_kwargs(s))}"]
    if config.capacity is not None:
        lines += [f"# {c}" for c in wrap(config.capacity.summary() + "; " + d.comment("capacity", "capacity"))]
        lines += [f"CAPACITY_REQUESTS_PER_S = {config.capacity.rate_rps:.4g}"]
    if vision:
        lines += _vision_constants(d, config)
    lines += ["", "", "def load():", '    """Return (model, processor or tokenizer) loaded as measured."""']
    if custom_attention:
        lines.append(f"    register_custom_attention()  # makes attn_implementation={_py(s.attn_implementation)} loadable by name")
    lines += [f"    model = {auto_model}.from_pretrained(", "        MODEL,"]
    lines += [f"        {kwarg}" for kwarg in kwargs]
    lines += ["    )", "    model.eval()"]
    if "cache_config" in settings:
        lines += ["    # the quantized KV cache's backend: generate() copies the generation config on every call",
                  f"    model.generation_config.cache_implementation = {_py(settings['cache_implementation'])}",
                  f"    model.generation_config.cache_config = {_py(settings['cache_config'])}"]
    if "compile_config" in settings:
        lines.append(f"    model.generation_config.compile_config = CompileConfig(mode={_py(settings['compile_config']['mode'])})")
    if inductor_settings:
        lines += ["    # The inductor settings this quantization's compiled kernels were measured with. autotune set them",
                  "    # around generate() only; a process that serves this model alone can keep them set."]
        lines += [f"    torch._inductor.config.{name} = {value!r}" for name, value in inductor_settings.items()]
    if s.stop_check == "deferred":
        lines.append('    set_stop_check(model, "deferred")  # generate() reads its stop flag one step late, as measured')
    if vision:
        lines += ["    processor = AutoProcessor.from_pretrained(MODEL)",
                  "    processor.image_processor.size = IMAGE_SIZE  # the pixel bound every image was measured at",
                  "    return model, processor"]
    else:
        lines += ["    return model, AutoTokenizer.from_pretrained(MODEL)"]
    lines += ["", "", 'if __name__ == "__main__":', "    model, processor = load()",
              '    messages = [{"role": "user", "content": "What is the capital of France?"}]',
              "    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,",
              '                                           return_tensors="pt", return_dict=True).to(model.device)',
              "    out = model.generate(**inputs, **GENERATE_KWARGS)",
              '    print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    d.raise_errors()
    kwargs_file = _kwargs_file(config, options, model)
    return ExportResult(NAME, FILENAME, "\n".join(lines) + "\n", command="", extra_files={KWARGS_SUFFIX: kwargs_file},
                        notes=list(d.notes))


def _max_memory(config: DeploymentConfig, options: ExportOptions, gpus: int) -> tuple[dict, str]:
    """device_map's max_memory for a multi-GPU measurement: GPUs 0..gpus-1, each capped at the
    per-GPU budget it was measured under (the GPU's memory without one); on fewer GPUs than
    measured (only with --allow-approximate) scaled up by num_gpus / gpus, at most the GPU's memory."""
    measured = config.settings.num_gpus
    gpu_gib = options.gpu_memory_gib or config.fingerprint.device_memory_gib
    budget = config.memory_budget_gib
    cap, what = (budget, f"the {budget:g} GiB per-GPU budget of the measurement") if budget is not None else (
        gpu_gib, f"the GPU's {gpu_gib:g} GiB (measured without a budget)")
    if gpus < measured:
        cap = min(cap * measured / gpus, gpu_gib)
        what += f" x {measured}/{gpus} GPUs, at most the GPU's {gpu_gib:g} GiB (an estimate, not measured)"
    cap = round(cap, 2)
    comment = (f"max_memory: {'GPU 0' if gpus == 1 else f'GPUs 0..{gpus - 1}'} of those visible (CUDA_VISIBLE_DEVICES picks them), each holding at most "
               f"{cap:g} GiB of weights ({what}); at run time each GPU also holds its layers' KV cache and activations: "
               f"the measured per-GPU peak was {config.measured.peak_memory_gib:.2f} GiB, on the fullest GPU of {measured}")
    return {i: f"{cap:g}GiB" for i in range(gpus)}, comment


def _offload_max_memory(d: Draft, config: DeploymentConfig) -> tuple[dict, str]:
    """cpu_offload_gib > 0: max_memory as autotune loaded it (loading.OffloadPlan): GPU 0 at the
    recorded figure, the host at the tuning machine's memory."""
    s, m = config.settings, config.measured
    rule = d.comment("cpu_offload_gib>0", f"cpu_offload_gib {s.cpu_offload_gib}")
    gpu = m.offload_gpu_max_memory_gib
    host = f"{config.fingerprint.host_memory_gib:.0f}GiB"
    offloaded = f"{m.offloaded_gib:.2f}" if m.offloaded_gib is not None else f"at least {s.cpu_offload_gib}"
    if gpu is None:  # a best.yaml written without the figure: the GPU share is the budget's
        gpu = config.memory_budget_gib or config.fingerprint.device_memory_gib
    comment = (f"{rule}. max_memory: GPU 0 holds at most {gpu:g} GiB of weights (the model's weights - cpu_offload_gib "
               f"+ its largest layer, which accelerate keeps free to bring offloaded layers in); {offloaded} GiB stayed in host "
               f"memory and are copied to the GPU at every forward; measured peak {m.peak_memory_gib:.2f} GiB on the GPU")
    return {0: f"{gpu:g}GiB", "cpu": host}, comment


def _vision_constants(d: Draft, config: DeploymentConfig) -> list[str]:
    from autotune.vision import DEFAULT_MIN_PIXELS

    s = config.settings
    lines = []
    check_request_sizes(d, s)
    if s.max_pixels is not None:
        d.check("max_pixels", "max_pixels")
        size = {"shortest_edge": min(DEFAULT_MIN_PIXELS, s.max_pixels), "longest_edge": s.max_pixels}
        lines.append(f"IMAGE_SIZE = {_py(size)}  # processor size: each image at most longest_edge pixels")
    images_comment = d.comment("images_per_prompt", "images_per_prompt")
    lines += [f"# {c}" for c in wrap(images_comment)]
    lines.append(f"MAX_IMAGES_PER_PROMPT = {s.images_per_prompt or 0}  # of {s.image_size or 'any size'}")
    if s.video_frames:
        lines += [f"# {c}" for c in wrap(d.comment("video_frames", "video_frames"))]
        lines.append(f"VIDEO_FRAMES = {s.video_frames}  # of {s.video_size or 'any size'}")
    return lines


def _py(value: object) -> str:
    """A Python literal with double-quoted strings (the snippet's style) that reads back as exactly
    `value` (JSON's escapes are Python's, except a character outside the BMP, which JSON writes as a
    surrogate pair: repr then)."""
    if isinstance(value, str):
        text = json.dumps(value)
        return text if ast.literal_eval(text) == value else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _docstring_text(line: str) -> str:
    """A line of text inside the snippet's triple-quoted docstring: backslashes doubled and every
    quote that another follows escaped, so that no header text (a device name, a study name, a path)
    can end the docstring or form an escape sequence (a Windows path's \\N would not compile)."""
    return re.sub(r'"(?=")', r'\\"', line.replace("\\", "\\\\"))


def _kwargs_file(config: DeploymentConfig, options: ExportOptions, model: str) -> str:
    """The DeploymentConfig for load_deployment. A random-weight study or --model points it at the
    real checkpoint (a pretrained reference); the embedded default stays as measured."""
    ref = config.model
    if options.model or ref.kind == "random":
        ref = ModelRef(kind="pretrained", name=model.rstrip("/").split("/")[-1], source=model, model_kind=ref.model_kind)
    out = config.model_copy(update={"model": ref}).model_dump(mode="json")
    for name, default in _LATER_TOP_LEVEL_DEFAULTS.items():  # as the settings' later knobs below
        if name in out and out[name] == default:
            del out[name]
    return yaml.safe_dump(_without_one_gpu(out), sort_keys=False)


# best.yaml fields added later, with their defaults: left out of the dump at the default, so the
# file of a best.yaml that predates them reads as before (a DeploymentConfig forbids unknown keys).
_LATER_TOP_LEVEL_DEFAULTS = {"confirmed": None, "confirmation_note": "", "slo": None, "capacity": None,
                             "objectives": [], "objective_values": {}, "chosen_by": ""}


# Candidate fields added later, with their defaults (and the offload's measured figures): left out
# of the dump at the default.
_LATER_DEFAULTS = {"num_gpus": 1, "cache_implementation": None, "compile_mode": None, "prefill_chunk_size": None, "stop_check": None,
                   "cpu_offload_gib": 0, "offloaded_gib": None, "offload_gpu_max_memory_gib": None,
                   # the workload's figures of a Measurement (None under the fixed default shape)
                   "workload": None, "workload_over_limit_share": None, "workload_truncated": None, "padding_share": None,
                   "request_output_tokens": None, "request_prompt_tokens": None, "request_padded_prompt_tokens": None,
                   "goodput_rps": None, "output_tokens": [], "prompt_slope_s_per_token": 0.0}  # ... and the capacity's output lengths


def _without_one_gpu(data: object) -> object:
    """The dump without `num_gpus: 1` (the default) in its candidates (settings, the baseline's),
    nor the generate-time knobs where unset: such a file reads as before the fields existed, and
    an autotune that predates them (a candidate forbids unknown keys) still loads it."""
    if isinstance(data, dict):
        return {k: _without_one_gpu(v) for k, v in data.items()
                if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k] and type(v) is type(_LATER_DEFAULTS[k]))}
    if isinstance(data, list):
        return [_without_one_gpu(v) for v in data]
    return data
