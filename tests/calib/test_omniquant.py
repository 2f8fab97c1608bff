"""OmniQuant's learnable weight clipping and block training on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from blockwise_helpers import make_ctx, random_ids

from lowbit.calib import blocks, omniquant
from lowbit.calib.blocks import BlockData, block_layout, forward_all
from lowbit.calib.omniquant import OmniBlock, run_omniquant, train_block
from lowbit.errors import LowbitError
from lowbit.fused import quantized_linear_names
from lowbit.models import load_torch_model
from lowbit.quantizer import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_lwc,
    lwc_range,
    quantize,
    quantize_with,
)

SPECS = [QuantSpec(b, g, s) for b, g, s in
         [(2, 64, False), (3, 128, False), (4, 32, False), (3, -1, False), (4, 64, True),
          (3, 128, True)]]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_lwc_without_clipping_is_rtn(spec):
    # K = 96: partial last groups at g64 / g128.
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    big = torch.full((40, spec.num_groups(96)), 60.0)  # σ(60) == 1.0 in fp32
    assert torch.equal(fake_quantize_lwc(w, spec, big, big), fake_quantize(w, spec))
    xmin, xmax = lwc_range(w, spec, big, big)
    s, z = compute_qparams(w, spec, xmin, xmax)
    assert torch.equal(quantize_with(w, spec, s, z).codes, quantize(w, spec).codes)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_lwc_forward_is_the_exported_weight_and_has_gradients(spec):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 96, generator=g)
    up = torch.randn(40, spec.num_groups(96), generator=g).requires_grad_()
    low = torch.randn(40, spec.num_groups(96), generator=g).requires_grad_()
    fq = fake_quantize_lwc(w, spec, up, low)
    xmin, xmax = lwc_range(w, spec, up.detach(), low.detach())
    exported = dequantize(quantize_with(w, spec, *compute_qparams(w, spec, xmin, xmax)))
    assert torch.equal(fq.detach(), exported)
    ((fq - w) ** 2).sum().backward()
    assert up.grad.abs().sum() > 0 and torch.isfinite(up.grad).all()
    if not spec.sym:  # asymmetric: the lower bound moves the scale too
        assert low.grad.abs().sum() > 0


def settings(**over) -> dict:
    return {**omniquant.defaults(3)["small"], "lr": 1e-2, **over}


def _block_data(tiny_block, spec):
    model, block, x, kwargs = tiny_block
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    fp_out = forward_all(block, x, kwargs)
    return BlockData(0, block, block_layout(model), {n: n for n in names}, kwargs, x, fp_out,
                     x.clone())


@pytest.mark.parametrize("spec", [QuantSpec(2, 64), QuantSpec(3, 32, True)], ids=lambda s: s.name)
def test_one_adamw_step_lowers_the_block_loss(tiny_block, spec):
    data = _block_data(tiny_block, spec)
    data.block.requires_grad_(False)
    lwc = OmniBlock(data.block, data.layout, list(data.linears), spec)
    opt = torch.optim.AdamW(lwc.lwc_parameters(), lr=1e-2, weight_decay=0.0)
    x, target = data.quant_in[:1], data.fp_out[:1]
    before = lwc.loss(x, [target], data.kwargs)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = lwc.loss(x, [target], data.kwargs)
    assert after < before


def test_trained_block_is_no_worse_than_rtn(tiny_block):
    spec = QuantSpec(2, 64)
    data = _block_data(tiny_block, spec)
    modules = dict(data.block.named_modules())
    weights = {n: modules[n].weight.detach().clone() for n in data.linears}
    quantized = train_block(data, spec, settings(epochs=3))

    def block_mse(deq):
        with torch.no_grad():
            for n in data.linears:
                modules[n].weight.copy_(deq[n])
            out = forward_all(data.block, data.quant_in, data.kwargs)
        return torch.nn.functional.mse_loss(out, data.fp_out).item()

    rtn = block_mse({n: fake_quantize(w, spec) for n, w in weights.items()})
    lwc = block_mse({n: q.dequantize() for n, q in quantized.items()})
    assert lwc < rtn


def test_non_finite_loss_names_the_block(tiny_block):
    spec = QuantSpec(3, 64)
    data = _block_data(tiny_block, spec)
    data.index = 7
    data.fp_out[0, 0, 0] = float("nan")
    with pytest.raises(LowbitError, match="block 7"):
        train_block(data, spec, settings(epochs=1))


def _run(model_dir, **settings):
    model = load_torch_model(model_dir)
    spec = QuantSpec(3, 64)
    ctx = make_ctx(model_dir, spec, "omniquant", omniquant.defaults(3), nsamples=2, seqlen=32,
                   epochs=1, **settings)
    return run_omniquant(model, quantized_linear_names(model), ctx, random_ids())


def test_resume_equals_uninterrupted(tiny_llama_dir, isolated_cache, monkeypatch):
    full = _run(tiny_llama_dir)
    calls = []
    real = omniquant.train_block

    def crash_at_block_1(data, *args, **kw):
        calls.append(data.index)
        if data.index == 1:
            raise KeyboardInterrupt
        return real(data, *args, **kw)

    monkeypatch.setattr(omniquant, "train_block", crash_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama_dir)
    monkeypatch.setattr(omniquant, "train_block", lambda data, *a, **kw: (
        calls.append(data.index), real(data, *a, **kw))[1])
    resumed = _run(tiny_llama_dir, resume=1)
    assert calls == [0, 1, 1]  # block 0 came from its checkpoint
    assert full.keys() == resumed.keys()
    for name, q in full.items():
        assert torch.equal(q.codes, resumed[name].codes), name
        assert torch.equal(q.scales, resumed[name].scales), name
        assert torch.equal(q.zeros, resumed[name].zeros), name


def test_unknown_setting_is_refused(tiny_llama_dir):
    with pytest.raises(LowbitError, match="does not take"):
        make_ctx(tiny_llama_dir, QuantSpec(3, 64), "omniquant", omniquant.defaults(3), epoch=3)


def test_checkpoints_are_removed_after_success(tiny_llama_dir, isolated_cache):
    _run(tiny_llama_dir)
    root = blocks.cache_dir() / "calib-state"
    assert not any(root.iterdir())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_lwc_gradient_matches_plain_autograd_ste(spec):
    """The fused backward equals autograd through the textbook STE formula (reference code)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 96, generator=g)
    groups = spec.num_groups(96)
    up = torch.randn(16, groups, generator=g).requires_grad_()
    low = torch.randn(16, groups, generator=g).requires_grad_()
    target = torch.randn(16, 96, generator=g)
    ((fake_quantize_lwc(w, spec, up, low) - target) ** 2).sum().backward()

    up2, low2 = up.detach().clone().requires_grad_(), low.detach().clone().requires_grad_()
    xmin, xmax = lwc_range(w, spec, up2, low2)
    glen = spec.group_len(96)
    if spec.sym:
        s = torch.maximum(xmax.abs(), xmin.abs()) / spec.sym_offset
        z = torch.full_like(s, spec.sym_offset)
    else:
        s = ((xmax - xmin) / spec.qmax).clamp(min=1e-5)
        z = (-xmin / s).round().clamp(0, spec.qmax).detach()
    if spec.sym:  # the exported fp16 scale: MLC divides in fp16
        exported = torch.maximum(xmax.abs(), xmin.abs()).detach().half() / torch.tensor(
            spec.sym_offset, dtype=torch.float16)
    else:
        exported = s.detach().half()
    s16 = s + (exported.float() - s).detach()
    se, ze = (t.repeat_interleave(glen, 1)[:, :96] for t in (s16, z))
    if spec.sym:  # MLC's codes are computed in fp16; the STE carries the fp32 gradient
        x = w / se + ze
        u = (w.half() / se.detach().half() + ze.half()).float().round()
        q = (x + (u - x).detach()).clamp(0, spec.qmax)
    else:
        x = w / se
        q = ((x + (x.round() - x).detach()) + ze).clamp(0, spec.qmax)
    (((q - ze) * se - target) ** 2).sum().backward()
    torch.testing.assert_close(up.grad, up2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low.grad, low2.grad, rtol=1e-4, atol=1e-5)
