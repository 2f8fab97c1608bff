"""Checks every model family's tests run on its tiny random model: RTN through ``lowbit calibrate``
and GPTQ on the family's calibration layout, and an OmniQuant (LET) W4 g128 checkpoint that
converts and compiles to the fake-quant model."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from test_model_llama import check_compiled_matches_torch

from lowbit.calib import gptq, omniquant
from lowbit.calib.blocks import resolve_settings
from lowbit.calib.methods import CalibContext
from lowbit.cli import main
from lowbit.compiler.mlc_reader import read_mlc
from lowbit.fused import load_fused, make_qconfig, quantized_linear_names, save_fused
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize

W4G128 = QuantSpec(4, 128, False)


def random_ids(seed: int, n: int = 2, seqlen: int = 32) -> torch.Tensor:
    return torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def calib_ctx(model_dir, spec: QuantSpec, method: str, defaults: dict, **settings) -> CalibContext:
    ctx = CalibContext(model_dir, spec, progress=False, settings=settings)
    resolve_settings(ctx, method, defaults)
    return ctx


def check_rtn_and_gptq(model_dir: Path, tmp_path: Path, quantized_linears: int) -> None:
    """``lowbit calibrate --method rtn`` writes the fake-quant model (``quantized_linears``
    linears); GPTQ quantizes every linear of the layout. Set ``LOWBIT_CACHE`` first."""
    fused_dir = tmp_path / "fused"
    result = CliRunner().invoke(main, ["calibrate", str(model_dir), "--method", "rtn",
                                       "--bits", "4", "--group-size", "128", "-o", str(fused_dir)])
    assert result.exit_code == 0, result.output
    fused = load_fused(fused_dir)
    assert len(fused.quantized) == quantized_linears
    ref = load_torch_model(model_dir)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.copy_(fake_quantize(mod.weight, W4G128))
        assert torch.equal(fused.model(random_ids(1)).logits, ref(random_ids(1)).logits)
    model = load_torch_model(model_dir)
    layers = quantized_linear_names(model)
    ctx = calib_ctx(model_dir, W4G128, "gptq", {"small": gptq.DEFAULTS}, nsamples=2, seqlen=32)
    out = gptq.run_gptq(model, layers, ctx, random_ids(0))
    assert set(out) == set(layers)


def check_omniquant_w4g128_compiles(model_dir: Path, tmp_path: Path):
    """OmniQuant W4 g128 with LET → fused checkpoint (the calibrated fake-quant model) →
    ``w4a16g128asym``, whose linears are the fake-quant model's bit for bit and whose compiled
    model matches the model the folder holds; returns the MLC folder read back. Set
    ``LOWBIT_CACHE`` first."""
    model = load_torch_model(model_dir)
    layers = quantized_linear_names(model)
    ctx = calib_ctx(model_dir, W4G128, "omniquant", omniquant.defaults(4), nsamples=2, seqlen=32,
                    epochs=1, let=1)
    quantized = omniquant.run_omniquant(model, layers, ctx, random_ids(0))
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    save_fused(fused_dir, model, quantized, make_qconfig("omniquant", W4G128, layers), model_dir)
    fused = load_fused(fused_dir)
    with torch.no_grad():
        assert torch.equal(fused.model(random_ids(1)).logits, model(random_ids(1)).logits)
    check_compiled_matches_torch(fused_dir, "w4a16g128asym", tmp_path)
    mlc = read_mlc(tmp_path / "mlc-w4a16g128asym")
    fq_state = model.state_dict()
    for name in quantized:
        assert torch.equal(mlc.state_dict[f"{name}.weight"], fq_state[f"{name}.weight"]), name
    return mlc
