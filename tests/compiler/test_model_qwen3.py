"""Qwen3 (per-head q/k RMSNorm before RoPE, head_dim 32 ≠ hidden / heads, GQA 4:2): a tiny
random model through convert → compile (llvm) → the paged-KV-cache engine.

q0f32: the MLC folder read back is transformers' model bit for bit, and the compiled model's
logits match it within ``ATOL`` for prefill, every position, 16 decode steps and batch_decode
(:func:`check_compiled_matches_torch`). ``lowbit calibrate`` (RTN) and GPTQ run on it; an
OmniQuant (LET) W4 g128 checkpoint converts to ``w4a16g128asym`` and compiles to the fake-quant model.
"""

from __future__ import annotations

import torch
from family_checks import check_omniquant_w4g128_compiles, check_rtn_and_gptq
from test_model_llama import check_compiled_matches_torch

from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.models import load_torch_model


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




def test_qwen3_rtn_and_gptq_calibrate(tiny_qwen3_dir, tmp_path, monkeypatch):
    """``lowbit calibrate --method rtn`` writes the fake-quant model; GPTQ runs on the layout."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_rtn_and_gptq(tiny_qwen3_dir, tmp_path, 2 * 7)  # q k v o gate up down: the q/k norms stay fp


def test_qwen3_omniquant_w4g128_compiles_to_the_fake_quant_model(tiny_qwen3_dir, tmp_path,
                                                                  monkeypatch):
    """OmniQuant W4 g128 with LET (the norm-folded scales reach q/k/v through
    ``input_layernorm``; the q/k norms follow the projections) → fused checkpoint →
    ``w4a16g128asym``: its linears are the fake-quant model's bit for bit, and the compiled model
    matches the model the folder holds (the embedding, lm_head and norms are stored in the
    scheme's fp16, hence no bit-exact comparison of logits with the fp32 fake-quant model)."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_omniquant_w4g128_compiles(tiny_qwen3_dir, tmp_path)
