"""Fused checkpoint: RTN writes it, loading gives the fake-quant weights bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lowbit.calib import CalibrateArgs, calibrate
from lowbit.errors import LowbitError
from lowbit.fused import load_fused
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize, fake_quantize_tokens


@pytest.mark.parametrize("bits,group,sym", [(4, 128, False), (3, 64, False), (4, 32, True), (2, -1, False)])
def test_round_trip_bit_exact(tiny_llama_dir, tmp_path, bits, group, sym):
    out = tmp_path / "fused"
    calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", bits, group, sym, out, progress=False))
    fp = load_torch_model(tiny_llama_dir)
    fused = load_fused(out)
    fp_params = dict(fp.named_parameters())
    spec = QuantSpec(bits, group, sym)
    assert len(fused.quantized) == 2 * 7  # q k v o gate up down per layer
    for name, p in fused.model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        expected = fp_params[name].data
        if owner in fused.quantized:
            expected = fake_quantize(expected, spec)
        assert torch.equal(p.data, expected), name
    qconfig = json.loads((out / "quantization_config.json").read_text())
    assert (qconfig["method"], qconfig["bits"], qconfig["group_size"], qconfig["sym"]) == (
        "rtn", bits, group, sym)
    tensors = load_file(str(out / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{q}.codes"].dtype == torch.uint8
    assert tensors[f"{q}.scales"].dtype == torch.float16
    assert (f"{q}.zeros" in tensors) == (not sym)
    assert f"{q}.weight" not in tensors
    assert tensors["model.norm.weight"].dtype == torch.float32


def test_nf3_round_trip_bit_exact(tiny_llama_dir, tmp_path):
    out = tmp_path / "fused"
    calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", 3, 64, False, out, progress=False,
                            codebook="nf3"))
    spec = QuantSpec(3, 64, codebook="nf3")
    fp = dict(load_torch_model(tiny_llama_dir).named_parameters())
    fused = load_fused(out)
    assert fused.qconfig["codebook"] == "nf3" and len(fused.quantized) == 14
    for name, qw in fused.quantized.items():
        n, k = qw.codes.shape  # K = 96 or 160: partial last groups
        assert qw.zeros is None and qw.scales.shape == (n, -(-k // 64), 2)
        assert torch.equal(dict(fused.model.named_parameters())[f"{name}.weight"].data,
                           fake_quantize(fp[f"{name}.weight"].data, spec))
    tensors = load_file(str(out / "model.safetensors"))
    assert not any(k.endswith(".zeros") for k in tensors)


@pytest.mark.parametrize("method,bits", [("gptq", 3), ("rtn", 2)])
def test_nf3_refused_where_unsupported(tiny_llama_dir, tmp_path, method, bits):
    with pytest.raises(LowbitError, match="nf3"):
        calibrate(CalibrateArgs(str(tiny_llama_dir), method, bits, 64, False, tmp_path / "o",
                                progress=False, codebook="nf3"))


def test_fused_logits_equal_fake_quant_model(tiny_qwen2_dir, tmp_path):
    out = tmp_path / "fused"
    spec = QuantSpec(3, 32, False)
    calibrate(CalibrateArgs(str(tiny_qwen2_dir), "rtn", 3, 32, False, out, progress=False))
    ref = load_torch_model(tiny_qwen2_dir)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.copy_(fake_quantize(mod.weight, spec))
    ids = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert torch.equal(load_fused(out).model(ids).logits, ref(ids).logits)


def _tokens_np(x: np.ndarray, bits: int) -> np.ndarray:
    """OmniQuant's per-token asymmetric act quantizer, written out in NumPy (float64)."""
    xmin, xmax = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    scale = np.clip((xmax - xmin) / (2**bits - 1), 1e-5, 1e4)
    zero = np.round(np.clip(-xmin / scale, -1e4, 1e4))
    return (np.clip(np.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_token_fake_quant_matches_numpy(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 5, 37, generator=g, dtype=torch.float64) * 3
    x[0, 0] = 0.25  # a constant token: scale clamps to 1e-5, values survive
    x[1, 2] += 10  # one-signed token: its zero point is negative, codes clamp
    got = fake_quantize_tokens(x, bits)
    np.testing.assert_allclose(got.numpy(), _tokens_np(x.numpy(), bits), rtol=0, atol=1e-12)
    assert len(torch.unique(got[2, 3])) <= 2**bits


def test_act_bits_checkpoint_quantizes_every_linear_input(tiny_llama_dir, tmp_path):
    out = tmp_path / "w4a4"
    calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", 4, -1, False, out, progress=False,
                            act_bits=4))
    assert json.loads((out / "quantization_config.json").read_text())["act_bits"] == 4
    fused = load_fused(out)
    raw, seen = {}, []
    for name, mod in fused.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            mod.register_forward_pre_hook(lambda m, args: raw.__setitem__(m, args[0]), prepend=True)
            mod.register_forward_hook(lambda m, args, _out: seen.append(
                torch.equal(args[0], fake_quantize_tokens(raw[m], 4))))
    weight_only = tmp_path / "w4"
    calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", 4, -1, False, weight_only, progress=False))
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        a4 = fused.model(ids).logits
        a16 = load_fused(weight_only).model(ids).logits
    assert len(seen) == 2 * 7 and all(seen)  # 2 layers × 7 linears, each fed quantized input
    assert not torch.allclose(a4, a16, atol=1e-3)


def test_act_bits_refused_where_unsupported(tiny_llama_dir, tmp_path):
    with pytest.raises(LowbitError, match="--act-bits must be one of"):
        calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", 4, -1, False, tmp_path / "a",
                                progress=False, act_bits=5))
    with pytest.raises(LowbitError, match="not gptq"):
        calibrate(CalibrateArgs(str(tiny_llama_dir), "gptq", 4, -1, False, tmp_path / "b",
                                progress=False, act_bits=4))
    out = tmp_path / "w4a4"
    calibrate(CalibrateArgs(str(tiny_llama_dir), "rtn", 4, 128, False, out, progress=False,
                            act_bits=4))
    from lowbit.compiler.convert import ConvertArgs, convert

    with pytest.raises(LowbitError, match="quantizes activations"):
        convert(ConvertArgs(str(out), "w4a16g128asym", tmp_path / "mlc", progress=False))
    assert not (tmp_path / "mlc").exists()
