"""Qwen3 (per-head q/k RMSNorm before RoPE, head_dim 32 ≠ hidden / heads, GQA 4:2): a tiny
random model through convert → compile (llvm) → the paged-KV-cache engine.

q0f32: the MLC folder read back is transformers' model bit for bit, and the compiled model's
logits match it within ``ATOL`` for prefill, every position, 16 decode steps and batch_decode
(:func:`check_compiled_matches_torch`). ``lowbit calibrate`` (RTN) and GPTQ run on it; an
OmniQuant (LET) W4 g128 checkpoint converts to ``w4a16g128asym`` and compiles to the fake-quant model.
"""

from __future__ import annotations

import torch
from click.testing import CliRunner
from test_model_llama import check_compiled_matches_torch

from lowbit.calib import gptq, omniquant
from lowbit.calib.blocks import resolve_settings
from lowbit.calib.methods import CalibContext
from lowbit.cli import main
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.fused import load_fused, make_qconfig, quantized_linear_names, save_fused
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize


def test_qwen3_q0f32_matches_transformers(tiny_qwen3_dir, tmp_path):
    check_compiled_matches_torch(tiny_qwen3_dir, "q0f32", tmp_path)
    mlc = tmp_path / "mlc-q0f32"
    arrays, _ = read_tensor_cache(mlc)
    assert arrays["model.layers.1.self_attn.q_norm.weight"].shape == (32,)
    assert arrays["model.layers.1.self_attn.c_attn.weight"].shape == ((4 + 2 + 2) * 32, 96)
    assert read_mlc(mlc).chat_config["model_config"]["attention_bias"] is False
    ids = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_torch_model(tiny_qwen3_dir)(ids).logits
        assert torch.equal(load_mlc_model(mlc)(ids).logits, want)


def _ctx(model_dir, spec: QuantSpec, method: str, defaults: dict, **settings) -> CalibContext:
    ctx = CalibContext(model_dir, spec, progress=False, settings=settings)
    resolve_settings(ctx, method, defaults)
    return ctx


def _ids(seed: int, n: int = 2, seqlen: int = 32) -> torch.Tensor:
    return torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_qwen3_rtn_and_gptq_calibrate(tiny_qwen3_dir, tmp_path, monkeypatch):
    """``lowbit calibrate --method rtn`` writes the fake-quant model; GPTQ runs on the layout."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    fused_dir = tmp_path / "fused"
    result = CliRunner().invoke(main, ["calibrate", str(tiny_qwen3_dir), "--method", "rtn",
                                       "--bits", "4", "--group-size", "128", "-o", str(fused_dir)])
    assert result.exit_code == 0, result.output
    fused = load_fused(fused_dir)
    assert len(fused.quantized) == 2 * 7  # q k v o gate up down: the q/k norms stay fp
    ref = load_torch_model(tiny_qwen3_dir)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.copy_(fake_quantize(mod.weight, QuantSpec(4, 128, False)))
        assert torch.equal(fused.model(_ids(1)).logits, ref(_ids(1)).logits)
    model = load_torch_model(tiny_qwen3_dir)
    layers = quantized_linear_names(model)
    ctx = _ctx(tiny_qwen3_dir, QuantSpec(4, 128, False), "gptq", {"small": gptq.DEFAULTS},
               nsamples=2, seqlen=32)
    out = gptq.run_gptq(model, layers, ctx, _ids(0))
    assert set(out) == set(layers)


def test_qwen3_omniquant_w4g128_compiles_to_the_fake_quant_model(tiny_qwen3_dir, tmp_path,
                                                                  monkeypatch):
    """OmniQuant W4 g128 with LET (the norm-folded scales reach q/k/v through
    ``input_layernorm``; the q/k norms follow the projections) → fused checkpoint →
    ``w4a16g128asym``: its linears are the fake-quant model's bit for bit, and the compiled model
    matches the model the folder holds (the embedding, lm_head and norms are stored in the
    scheme's fp16, hence no bit-exact comparison of logits with the fp32 fake-quant model)."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    model = load_torch_model(tiny_qwen3_dir)
    spec = QuantSpec(4, 128, False)
    layers = quantized_linear_names(model)
    ctx = _ctx(tiny_qwen3_dir, spec, "omniquant", omniquant.defaults(4), nsamples=2, seqlen=32,
               epochs=1, let=1)
    quantized = omniquant.run_omniquant(model, layers, ctx, _ids(0))
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    save_fused(fused_dir, model, quantized, make_qconfig("omniquant", spec, layers), tiny_qwen3_dir)
    fused = load_fused(fused_dir)
    with torch.no_grad():  # the checkpoint is the calibrated fake-quant model
        assert torch.equal(fused.model(_ids(1)).logits, model(_ids(1)).logits)
    check_compiled_matches_torch(fused_dir, "w4a16g128asym", tmp_path)
    state = read_mlc(tmp_path / "mlc-w4a16g128asym").state_dict
    fq_state = model.state_dict()
    for name in quantized:
        assert torch.equal(state[f"{name}.weight"], fq_state[f"{name}.weight"]), name
