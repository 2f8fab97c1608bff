"""GPTQ against an independent NumPy implementation of the paper's algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blockwise_helpers import make_ctx, random_ids

from lowbit.calib import gptq
from lowbit.calib.gptq import gptq_quantize, run_gptq
from lowbit.fused import quantized_linear_names
from lowbit.models import load_torch_model
from lowbit.quantizer import QuantSpec, fake_quantize


def np_qparams(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min/max scale (fp16) and zero point per row of ``w`` [N, g]."""
    qmax = 2**bits - 1
    xmin, xmax = w.min(1).astype(np.float32), w.max(1).astype(np.float32)
    scale = np.maximum((xmax - xmin) / np.float32(qmax), np.float32(1e-5)).astype(np.float16)
    zero = np.clip(np.round(-xmin / scale.astype(np.float32)), 0, qmax)
    return scale.astype(np.float32), zero.astype(np.float32)


def np_gptq(w, h, bits, group, percdamp, act_order):
    """Column-at-a-time GPTQ (no lazy batches), float64 error feedback; returns codes [N, K]."""
    n, k = w.shape
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    qmax = 2**bits - 1
    groups = -(-k // group)
    if act_order:  # static groups from the original weights
        params = [np_qparams(w[:, g * group:(g + 1) * group], bits) for g in range(groups)]
        perm = np.argsort(-np.diag(h), kind="stable")
    else:
        params = [None] * groups
        perm = np.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h = h + percdamp * np.mean(np.diag(h)) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    codes = np.zeros((n, k), dtype=np.uint8)
    for j in range(k):
        orig = perm[j]
        g = orig // group
        if not act_order and orig % group == 0:
            params[g] = np_qparams(w[:, j:j + group], bits)
        scale, zero = params[g]
        q = np.clip(np.round(w[:, j].astype(np.float32) / scale) + zero, 0, qmax)
        codes[:, orig] = q
        deq = (q - zero) * scale
        err = (w[:, j] - deq) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
    return codes


def _problem(seed=0, n=24, k=96, tokens=400):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, k)) * rng.uniform(0.2, 3.0, size=k)  # uneven channels
    x[:, 5] += 2.0 * x[:, 7]  # correlated inputs: error feedback matters
    w = rng.standard_normal((n, k)).astype(np.float32)
    return w, x.T @ x / tokens


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group", [(3, 32), (2, 64), (4, 96)])
def test_gptq_matches_numpy_reference(bits, group, act_order):
    w, h = _problem()
    spec = QuantSpec(bits, group if group != 96 else -1)
    glen = 96 if group == 96 else group
    # blocksize 32 < K: the lazy batch updates are exercised
    got = gptq_quantize(torch.from_numpy(w), torch.from_numpy(h), spec, 0.01, 32, act_order)
    want = np_gptq(w, h, bits, glen, 0.01, act_order)
    assert np.array_equal(got.codes.numpy(), want)


def test_gptq_lowers_output_error_versus_rtn():
    w, h = _problem(seed=3)
    spec = QuantSpec(3, 32)
    wt, ht = torch.from_numpy(w).double(), torch.from_numpy(h)

    def err(q):
        d = q.double() - wt
        return torch.einsum("nk,kl,nl->", d, ht, d).item()

    gptq_err = err(gptq_quantize(wt.float(), ht, spec).dequantize())
    assert gptq_err < err(fake_quantize(wt.float(), spec))


def test_dead_inputs_are_zeroed():
    w, h = _problem(seed=4)
    h[:, 3] = h[3, :] = 0  # input 3 is always zero
    q = gptq_quantize(torch.from_numpy(w), torch.from_numpy(h), QuantSpec(4, 32)).dequantize()
    assert torch.all(q[:, 3] == 0)


def test_run_gptq_on_tiny_model(tiny_qwen2_dir, isolated_cache):
    model = load_torch_model(tiny_qwen2_dir)
    layers = quantized_linear_names(model)
    ctx = make_ctx(tiny_qwen2_dir, QuantSpec(4, 64, True), "gptq",
                   {"small": gptq.DEFAULTS}, nsamples=2, seqlen=32)
    out = run_gptq(model, layers, ctx, random_ids())
    assert set(out) == set(layers)
    weights = dict(model.named_modules())
    for name, q in out.items():  # the model now holds the dequantized weights
        assert torch.equal(weights[name].weight.data, q.dequantize())


def test_act_order_flag_reaches_gptq_and_changes_the_codes(tiny_qwen2_dir, isolated_cache, monkeypatch):
    """`calibrate --act-order` puts act_order in the method's settings, and act_order changes the
    codes GPTQ picks on a real model's Hessians."""
    from click.testing import CliRunner

    import lowbit.calib
    from lowbit.cli import main

    captured = []
    monkeypatch.setattr(lowbit.calib, "calibrate", lambda args: captured.append(args.settings) or "x")
    for flags in ([], ["--act-order"]):
        result = CliRunner().invoke(main, ["calibrate", str(tiny_qwen2_dir), "--method", "gptq", "-o", "out", *flags])
        assert result.exit_code == 0, result.output
    assert "act_order" not in captured[0] and captured[1]["act_order"] == 1

    codes = []
    for act_order in (0, 1):
        model = load_torch_model(tiny_qwen2_dir)
        ctx = make_ctx(tiny_qwen2_dir, QuantSpec(3, 32), "gptq", {"small": {**gptq.DEFAULTS, "act_order": act_order}},
                       nsamples=2, seqlen=32)
        codes.append({name: q.codes for name, q in run_gptq(model, quantized_linear_names(model), ctx, random_ids()).items()})
    assert any(not torch.equal(codes[0][name], codes[1][name]) for name in codes[0])
