"""Quality of torchao's int4 and fp8 numerics on real weights, on CPU (issue 19).

torchao-int4wo (tinygemm) and torchao-fp8 (dynamic activation + weight) run on CUDA GPUs only, and
the only real weights here (the embedded SmolLM2-135M-Instruct) cannot reach the GPU machine. This
script applies their numerics on CPU instead, with torchao's own quantization primitives:

- int4: every Linear's weight quantized and dequantized exactly as Int4TilePackedTo4dTensor.from_hp
  does (_choose_qparams_affine_tinygemm / _quantize_affine_tinygemm, asymmetric, groups of 128,
  bf16 scale and zero point) and _dequantize_affine_tinygemm back to bf16; the matmul in bf16.
  What the GPU kernel does differently: it dequantizes inside the matmul (same values).
- fp8: weight and, at every call, the Linear's input rounded to float8_e4m3fn with one fp32 scale
  per tensor (_choose_scale_float8 / _quantize_affine_float8 / _dequantize_affine_float8, the
  config's default PerTensor granularity); the matmul in bf16. What the GPU does differently:
  torch._scaled_mm multiplies the fp8 values with fp32 accumulation and fast accumulation.
- int2 (groups of 128, the same primitives with quant_max 3): a broken config, to show the metric
  can fail.

Next to them: the fp32 reference (as a study picks it), bf16, and torchao-int8wo loaded through
autotune's own loader (real torchao, CPU). The lm_head is left out, as transformers' TorchAoConfig
leaves the output embedding out. Each config is scored on the bundled text set with the measure a
study uses (autotune.worker.process.measure_quality: the task score with its bootstrap interval,
the paired difference to the reference, teacher-forced KL and top-1 agreement).

    python bench/quant_numerics_quality.py --out OUT [--examples N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _linears(model):
    import torch

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")]


def int_weights(model, bits: int, group_size: int = 128) -> None:
    """Quantize-dequantize every Linear weight with tinygemm's asymmetric grouped scheme."""
    import torch
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _dequantize_affine_tinygemm,
        _quantize_affine_tinygemm,
    )

    quant_max = 2**bits - 1
    with torch.no_grad():
        for _, linear in _linears(model):
            out_features, in_features = linear.weight.shape
            # from_hp pads the input features with zeros to a multiple of 1024 before grouping (and
            # the zeros enter the last groups' ranges); the output features' padding changes nothing.
            w = torch.nn.functional.pad(linear.weight.data.to(torch.bfloat16), (0, -in_features % 1024))
            block = (1, group_size)
            scale, zero = _choose_qparams_affine_tinygemm(w, MappingType.ASYMMETRIC, block, torch.int32, 0, quant_max,
                                                          scale_dtype=torch.bfloat16, zero_point_dtype=torch.bfloat16)
            q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, quant_min=0, quant_max=quant_max)
            linear.weight.data = _dequantize_affine_tinygemm(q, block, scale, zero, torch.int32, 0, quant_max,
                                                             output_dtype=torch.bfloat16)[:, :in_features].contiguous()


def _fp8_round_trip(tensor):
    import torch
    from torchao.quantization.quant_primitives import _choose_scale_float8, _dequantize_affine_float8, _quantize_affine_float8

    scale = _choose_scale_float8(tensor, list(tensor.shape), torch.float8_e4m3fn)  # one scale for the whole tensor
    return _dequantize_affine_float8(_quantize_affine_float8(tensor, scale, torch.float8_e4m3fn), scale, tensor.dtype)


def fp8_dynamic(model) -> None:
    """fp8 e4m3 weights and dynamically quantized fp8 activations, per tensor."""
    import torch

    with torch.no_grad():
        for _, linear in _linears(model):
            linear.weight.data = _fp8_round_trip(linear.weight.data)
            linear.register_forward_pre_hook(lambda module, args: (_fp8_round_trip(args[0]), *args[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=None, help="the first N examples of the bundled set")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    import autotune.data
    from autotune.loading import load_model
    from autotune.measure.prompting import Prompter
    from autotune.models import resolve_model
    from autotune.spec import Candidate
    from autotune.worker.process import measure_quality
    from autotune.worker.protocol import QualityRequest

    torch.manual_seed(0)
    ref = resolve_model(None)
    data = Path(autotune.data.__file__).parent / "bundled" / "text.jsonl"
    reference_path = args.out / "reference.json"
    def cand(dtype: str = "bf16", quantization: str = "none") -> Candidate:  # the shape does not enter quality
        return Candidate(dtype=dtype, quantization=quantization, batch_size=1, max_length=512, new_tokens=32)

    configs = [  # (name, candidate loaded by autotune, the numerics applied after the load)
        ("reference (fp32)", cand("fp32"), None),
        ("bf16", cand(), None),
        ("torchao-int8wo (real, CPU)", cand(quantization="torchao-int8wo"), None),
        ("int4 tinygemm numerics (simulated)", cand(), lambda m: int_weights(m, 4)),
        ("fp8 dynamic numerics (simulated)", cand(), fp8_dynamic),
        ("int2 groups of 128 (broken)", cand(), lambda m: int_weights(m, 2)),
    ]
    rows = []
    for index, (name, cand, numerics) in enumerate(configs):
        start = time.perf_counter()
        model, tokenizer = load_model(ref, cand, "cpu")
        if numerics is not None:
            numerics(model)
        prompter = Prompter(tokenizer, ref.config(), None, None, None, data.parent, None)
        request = QualityRequest(data_path=str(data), metric="contains", reference_path=str(reference_path),
                                 is_reference=index == 0, max_examples=args.examples)
        report = measure_quality(model, prompter, request, "cpu")
        rows.append({"config": name, "candidate": cand.label(), **report.model_dump(mode="json", exclude={"per_example"}),
                     "wall_s": time.perf_counter() - start})
        print(f"{name}: score {report.score:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}], "
              f"delta {report.delta_vs_reference}, KL {report.kl_mean:.4f}, top-1 {report.top1_agreement:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        (args.out / "quant-numerics-quality.json").write_text(json.dumps(rows, indent=2))
        del model
    lines = ["| config | score [95% CI] | Δ vs reference [95% CI] | within noise | KL mean | KL p95 | top-1 agreement | answer agreement |",
             "|---|---|---|---|--:|--:|--:|--:|"]
    for r in rows:
        delta = ("–" if r["delta_vs_reference"] is None else
                 f"{r['delta_vs_reference']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]")
        lines.append(f"| {r['config']} | {r['score']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {delta} | "
                     f"{'–' if r['within_noise'] is None else ('yes' if r['within_noise'] else 'no')} | {r['kl_mean']:.4f} | "
                     f"{r['kl_p95']:.4f} | {r['top1_agreement']:.3f} | {r['answer_agreement']:.3f} |")
    table = "\n".join(lines)
    (args.out / "quant-numerics-quality.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
