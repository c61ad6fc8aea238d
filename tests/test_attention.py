"""autotune/attention.py: the registry of attention kernels, and autotune's own sdpa_gqa
(grouped-query decode packed instead of repeat_kv): the same answers as sdpa, on CPU in eager
mode and on the GPU compiled with a static cache (the path it exists for), loadable by name
through load_model, load_deployment and the transformers export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from autotune.attention import ATTENTION_KINDS, register_custom_attention, sdpa_gqa_attention_forward
from autotune.knobs import knob
from autotune.space import unsupported_reason
from autotune.spec import Candidate
from autotune.system import DeviceInfo


def _gqa_pair(device: str = "cpu", dtype=None):
    """A tiny Qwen2 with 8 query heads over 2 key/value heads, loaded twice with the same weights."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    register_custom_attention()
    config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    models = []
    for attn in ("sdpa", "sdpa_gqa"):
        # A config of its own each: from_config writes the kernel's name into the config object.
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn, dtype=dtype or torch.float32)
        if models:
            model.load_state_dict(models[0].state_dict())
        models.append(model.to(device).eval())
    return models


def _generate(model, cache: str, **extra):
    import torch

    ids = torch.randint(1, 512, (3, 24), generator=torch.Generator().manual_seed(1)).to(model.device)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding: the decode steps carry a real mask
    mask[1, :2] = 0
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                              pad_token_id=0, cache_implementation=cache, output_scores=True, return_dict_in_generate=True,
                              **extra)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sdpa_gqa_answers_as_sdpa_on_cpu(cache: str) -> None:
    import torch

    sdpa, gqa = _gqa_pair()
    assert (sdpa.config._attn_implementation, gqa.config._attn_implementation) == ("sdpa", "sdpa_gqa")
    a = _generate(sdpa, cache, disable_compile=True)
    b = _generate(gqa, cache, disable_compile=True)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.scores, b.scores):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_the_comparison_catches_a_wrong_packing(monkeypatch) -> None:
    """The check above can fail: grouping the query heads the wrong way round (head h with key/value
    head h % kv_heads instead of h // groups) changes the decode logits."""
    import torch

    def wrong(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if query.shape[2] != 1:
            return sdpa_gqa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        b, h, _, d = query.shape
        groups = module.num_key_value_groups
        packed = query.reshape(b, groups, h // groups, d).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, scale=scaling)
        return out.transpose(1, 2).reshape(b, h, 1, d).transpose(1, 2).contiguous(), None

    sdpa, gqa = _gqa_pair()
    from transformers import AttentionInterface

    AttentionInterface.register("sdpa_gqa", wrong)
    try:
        a = _generate(sdpa, "static", disable_compile=True)
        b = _generate(gqa, "static", disable_compile=True)
    finally:
        register_custom_attention()
    assert max((x - y).abs().max().item() for x, y in zip(a.scores, b.scores)) > 1e-2


def test_decode_steps_go_through_the_packed_path(monkeypatch) -> None:
    import torch

    seen: list[tuple] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, *args, **kwargs):
        seen.append((tuple(query.shape), tuple(key.shape)))
        return real(query, key, *args, **kwargs)

    _, gqa = _gqa_pair()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    _generate(gqa, "static", disable_compile=True)
    decode = [(q, k) for q, k in seen if q[2] == 4]  # (batch, kv_heads, groups = 8 / 2, dim): packed
    assert decode and all(q[1] == k[1] == 2 for q, k in decode)
    assert not [q for q, _ in seen if q[2] == 1]  # no unpacked one-token step


def test_registry_owns_the_attention_choices_and_their_reasons() -> None:
    assert knob("attn_implementation").choices() == tuple(ATTENTION_KINDS)
    assert "sdpa_gqa" not in knob("vision_attn_implementation").choices()  # a vision tower has no grouped heads
    for kind in ATTENTION_KINDS.values():
        reason = kind.unsupported_reason("fp32", "cpu")
        assert (reason is None) == (not kind.needs_cuda and not kind.half_only), (kind.name, reason)
    cpu = DeviceInfo(device="cpu", type="cpu", name="cpu", memory_gib=24.0, bf16_supported=True)
    flash = Candidate(dtype="bf16", attn_implementation="flash_attention_2", batch_size=1, max_length=64, new_tokens=8)
    assert unsupported_reason(flash, cpu) == "flash_attention_2 needs a CUDA GPU"  # the space asks the registry
    assert unsupported_reason(flash.model_copy(update={"attn_implementation": "sdpa_gqa"}), cpu) is None


def test_sdpa_gqa_loads_by_name_through_load_model_and_answers_as_sdpa() -> None:
    """The embedded SmolLM2-135M (9 query heads over 3 key/value heads, real weights)."""
    import torch

    from autotune.loading import generate_kwargs, load_model
    from autotune.models import resolve_model

    ref = resolve_model(None)
    ids = torch.randint(0, 32000, (2, 30), generator=torch.Generator().manual_seed(0))
    tokens = []
    for attn in ("sdpa", "sdpa_gqa"):
        cand = Candidate(dtype="fp32", attn_implementation=attn, batch_size=2, max_length=40, new_tokens=8,
                         cache_implementation="static")
        model, _ = load_model(ref, cand, "cpu")
        assert model.config._attn_implementation == attn
        with torch.inference_mode():
            tokens.append(model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=0,
                                         min_new_tokens=8, **generate_kwargs(cand)))
    assert torch.equal(*tokens)


def test_transformers_export_registers_the_kernel_before_loading(tmp_path: Path) -> None:
    from autotune.deploy import read_deployment
    from autotune.export import export

    inputs = Path(__file__).parent / "golden" / "export" / "inputs"
    base = read_deployment(inputs / "text-h100.yaml")
    config = base.model_copy(update={"settings": base.settings.model_copy(update={"attn_implementation": "sdpa_gqa"})})
    text = export(config, "transformers").text
    compile(text, "snippet", "exec")
    load = text.split("def load():")[1]
    assert "from autotune.attention import register_custom_attention" in text.split("MODEL =")[0]
    assert load.index("register_custom_attention()") < load.index("from_pretrained(")
    assert 'attn_implementation="sdpa_gqa"' in load
    plain = export(base, "transformers").text
    assert "register_custom_attention" not in plain
    for target in ("vllm", "sglang", "tgi"):  # approximate: the servers' own kernels, no setting written
        result = export(config, target)
        assert any("autotune's sdpa_gqa" in n for n in result.notes), target
        assert "attention-backend" not in result.text.replace("attention-backend is", ""), target


# ------------------------------------------------------------------------------ GPU (pytest -m gpu)


@pytest.mark.gpu
def test_compiled_sdpa_gqa_answers_as_compiled_sdpa_on_the_gpu() -> None:
    """The path sdpa_gqa exists for: a static cache, compiled with CUDA graphs, bf16."""
    import torch
    from transformers import CompileConfig

    sdpa, gqa = _gqa_pair("cuda", torch.bfloat16)
    runs = []
    for model in (sdpa, gqa):
        model.generation_config.compile_config = CompileConfig(mode="reduce-overhead")
        _generate(model, "static")  # compile
        runs.append(_generate(model, "static"))
    a, b = runs
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.scores, b.scores):
        torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=2e-2)
