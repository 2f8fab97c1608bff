"""Qwen3 (per-head q/k RMSNorm before RoPE, head_dim 32 ≠ hidden / heads, GQA 4:2): a tiny
random model through convert → compile (llvm) → the paged-KV-cache engine.

q0f32: the MLC folder read back is transformers' model bit for bit, and the compiled model's
logits match it within ``ATOL`` for prefill, every position, 16 decode steps and batch_decode
(:func:`check_compiled_matches_torch`). W4 g128 asymmetric: ``lowbit calibrate`` (RTN) → fused
checkpoint (≡ the PyTorch fake-quant model) → ``w4a16g128asym`` (its linears bit for bit) → the
compiled model matches the model the folder holds.
"""

from __future__ import annotations

import torch
from click.testing import CliRunner
from test_model_llama import check_compiled_matches_torch

from lowbit.cli import main
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.fused import load_fused
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


def test_qwen3_w4g128_checkpoint_matches_fake_quant(tiny_qwen3_dir, tmp_path):
    fused_dir = tmp_path / "fused"
    result = CliRunner().invoke(main, ["calibrate", str(tiny_qwen3_dir), "--method", "rtn",
                                       "--bits", "4", "--group-size", "128", "-o", str(fused_dir)])
    assert result.exit_code == 0, result.output
    fused = load_fused(fused_dir)
    ref = load_torch_model(tiny_qwen3_dir)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.copy_(fake_quantize(mod.weight, QuantSpec(4, 128, False)))
    ids = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fq = ref(ids).logits
        assert torch.equal(fused.model(ids).logits, fq)
    check_compiled_matches_torch(fused_dir, "w4a16g128asym", tmp_path)
    # the folder the engine ran holds the fake-quant linears bit for bit (the embedding, lm_head
    # and norms are stored in the scheme's fp16, hence no bit-exact logits)
    state = read_mlc(tmp_path / "mlc-w4a16g128asym").state_dict
    fq_state = ref.state_dict()
    assert len(fused.quantized) == 2 * 7
    for name in fused.quantized:
        assert torch.equal(state[f"{name}.weight"], fq_state[f"{name}.weight"]), name
