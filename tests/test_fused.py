"""Fused checkpoint: RTN writes it, loading gives the fake-quant weights bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lowbit.calib import CalibrateArgs, calibrate
from lowbit.fused import load_fused
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize


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
