"""The shared quantizer against an independent NumPy reference (odd shapes, partial groups)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from lowbit.quantizer import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_range,
    fake_quantize_weight,
    group_min_max,
    quantize,
    quantize_with,
)


def np_quantize(w: np.ndarray, bits: int, group: int, sym: bool):
    """Group by group over the real elements, written independently of lowbit.quantizer."""
    n, k = w.shape
    g = k if group == -1 else group
    ngroups = -(-k // g)
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, ngroups), np.float16)
    zeros = np.zeros((n, ngroups), np.uint8)
    for j in range(ngroups):
        blk = w[:, j * g : min(k, (j + 1) * g)]
        if sym:  # MLC: fp16 weights, fp16 scale = max|w| / m, codes = round(w / s + m)
            m = np.float16(2 ** (bits - 1) - 1)
            b16 = blk.astype(np.float16)
            s = (np.abs(b16).max(axis=1) / m).astype(np.float16)
            with np.errstate(divide="ignore", invalid="ignore"):
                q = (b16 / s[:, None]).astype(np.float16) + m
            q = np.where(s[:, None] == 0, m, q)
            codes[:, j * g : j * g + blk.shape[1]] = np.clip(np.round(q.astype(np.float32)), 0, 2 * m)
            zeros[:, j] = int(m)
        else:  # OmniQuant: s = (max - min) / qmax, z = round(-min / s); range holds 0
            qmax = 2**bits - 1
            lo, hi = np.minimum(blk.min(axis=1), 0), np.maximum(blk.max(axis=1), 0)
            s = np.maximum((hi - lo) / np.float32(qmax), np.float32(1e-5)).astype(np.float16)
            s32 = s.astype(np.float32)
            z = np.clip(np.round(-lo / s32), 0, qmax)
            q = np.clip(np.round(blk / s32[:, None]) + z[:, None], 0, qmax)
            codes[:, j * g : j * g + blk.shape[1]] = q
            zeros[:, j] = z
        scales[:, j] = s
    deq = (codes.astype(np.float32) - np.repeat(zeros.astype(np.float32), g, 1)[:, :k]) * np.repeat(
        scales.astype(np.float32), g, 1
    )[:, :k]
    return codes, scales, zeros, deq


SHAPES = [(3, 96), (5, 130), (7, 576), (2, 40), (4, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])  # 6: every W6A6 row
@pytest.mark.parametrize("group", [32, 40, 64, 128, -1])
@pytest.mark.parametrize("sym", [False, True])
def test_matches_numpy_reference(shape, bits, group, sym):
    rng = np.random.default_rng(zlib.crc32(repr((shape, bits, group, sym)).encode()))
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 0.2, (shape[0], 1))).astype(np.float32)
    w[0, : min(8, shape[1])] = 0.0  # a run of zeros
    spec = QuantSpec(bits, group, sym)
    qw = quantize(torch.from_numpy(w), spec)
    codes, scales, zeros, deq = np_quantize(w, bits, group, sym)
    np.testing.assert_array_equal(qw.codes.numpy(), codes)
    np.testing.assert_array_equal(qw.scales.numpy(), scales)
    if not sym:
        np.testing.assert_array_equal(qw.zeros.numpy(), zeros)
    np.testing.assert_array_equal(dequantize(qw).numpy(), deq)


def test_partial_group_uses_real_elements_only():
    # K = 96 with g64: the last group has 32 real elements; padding must not widen its range.
    w = torch.zeros(1, 96)
    w[0, :64] = 5.0
    w[0, 64:] = torch.linspace(-1.0, 2.0, 32)
    qw = quantize(w, QuantSpec(4, 64, sym=False))
    scale = float(np.float16(3.0 / 15))
    assert qw.scales[0, 1].item() == scale
    assert qw.zeros[0, 1].item() == 5  # round(1.0 / 0.2)
    assert (qw.dequantize()[0, 64:] - w[0, 64:]).abs().max() <= scale / 2 + 1e-6


def test_one_signed_group_keeps_zero_representable():
    w = torch.linspace(1.0, 2.0, 32).reshape(1, 32)
    qw = quantize(w, QuantSpec(4, 32, sym=False))
    assert qw.zeros.item() == 0
    scale = float(np.float16(2.0 / 15))
    assert (qw.dequantize() - w).abs().max() <= scale / 2 + 1e-6


def test_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 576)
    errs = [(fake_quantize(w, QuantSpec(b, 128)) - w).pow(2).mean().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-4


def test_sym_codes_centered_on_offset():
    w = torch.tensor([[-1.0, 0.0, 0.5, 1.0] * 8])
    qw = quantize(w, QuantSpec(4, 32, sym=True))
    assert qw.zeros is None
    assert qw.codes[0, :4].tolist() == [0, 7, 10, 14]  # 0.5/s + 7 = 10.5 rounds to even


@pytest.mark.parametrize("bad", [dict(bits=5, group_size=128), dict(bits=4, group_size=48)])
def test_unsupported_spec(bad):
    with pytest.raises(ValueError):
        QuantSpec(**bad)


@pytest.mark.parametrize("sym", [False, True])
def test_differentiable_fake_quant_equals_export_on_one_signed_groups(sym):
    torch.manual_seed(1)
    w = torch.randn(6, 96)
    w[:3] = w[:3].abs() + 0.5  # groups entirely above zero
    w[3:] = -w[3:].abs() - 0.5  # and entirely below
    spec = QuantSpec(3, 64, sym)
    xmin, xmax = group_min_max(w, spec)
    xmin, xmax = 0.9 * xmin, 0.8 * xmax  # clipped ranges, as LWC produces
    exported = dequantize(quantize_with(w, spec, *compute_qparams(w, spec, xmin, xmax)))
    assert torch.equal(fake_quantize_range(w, spec, xmin, xmax), exported)


# BitDistiller's SteN2F3Quantizer.round_n2f3, transcribed as (lower bound, level) steps.
NF3_POS_STEPS = [(0.8114928305149078, 1.0), (0.5024898052215576, 0.6229856610298157),
                 (0.2826657369732857, 0.3819939494132996), (0.0916687622666359, 0.1833375245332718)]
NF3_NEG_STEPS = [(-0.1234657019376755, 0.0), (-0.39097706973552704, -0.2469314038753510),
                 (-0.7675113677978516, -0.5350227355957031)]


def np_nf3(w: np.ndarray, group: int) -> np.ndarray:
    """NF3 quantize-dequantize, element by element: the positive part over fp16 |max| and the
    negative part over fp16 |min| of each group's real elements."""
    n, k = w.shape
    g = k if group == -1 else group
    out = np.zeros_like(w)
    for i in range(n):
        for j0 in range(0, k, g):
            blk = w[i, j0 : j0 + g]
            sp = np.float32(np.float16(abs(blk.max())))
            sn = np.float32(np.float16(abs(blk.min())))
            for c, x in enumerate(blk):
                if x >= 0:
                    r = x / sp if sp else np.float32(0)
                    level = next((lv for lo, lv in NF3_POS_STEPS if r >= np.float32(lo)), 0.0)
                    out[i, j0 + c] = np.float32(level) * sp
                else:
                    r = x / sn
                    level = next((lv for lo, lv in NF3_NEG_STEPS if r >= np.float32(lo)), -1.0)
                    out[i, j0 + c] = np.float32(level) * sn
    return out


@pytest.mark.parametrize("shape", [(3, 96), (5, 130), (4, 576)])
@pytest.mark.parametrize("group", [64, 128, -1])
def test_nf3_round_trip_matches_numpy_reference(shape, group):
    rng = np.random.default_rng(shape[1] + group)
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    w[0, :8] = 0.0
    w[1, : min(64, shape[1])] = np.abs(w[1, : min(64, shape[1])])  # a group with no negative
    spec = QuantSpec(3, group, codebook="nf3")
    qw = quantize(torch.from_numpy(w), spec)
    assert qw.zeros is None and qw.scales.shape == (shape[0], spec.num_groups(shape[1]), 2)
    assert qw.codes.max() <= 7
    ref = np_nf3(w, group)
    np.testing.assert_array_equal(dequantize(qw).numpy(), ref)
    np.testing.assert_array_equal(fake_quantize_weight(torch.from_numpy(w), spec).numpy(), ref)
    # a second pass is a fixed point: dequantized values re-quantize to the same codes
    again = quantize(dequantize(qw), spec)
    assert torch.equal(again.codes, qw.codes)


def test_nf3_levels_and_ties():
    spec = QuantSpec(3, 32, codebook="nf3")
    # max 1 and min -1: r = w exactly; thresholds tie up on the positive side, to zero below
    w = torch.tensor([[1.0, -1.0, 0.0916687622666359, -0.1234657019376755, 0.5, -0.6] + [0.0] * 26])
    qw = quantize(w, spec)
    assert qw.codes[0, :6].tolist() == [7, 0, 4, 3, 5, 1]


def test_nf3_gradients_reach_weights_and_extremes():
    torch.manual_seed(0)
    w = torch.randn(4, 96, requires_grad=True)
    out = fake_quantize_weight(w, QuantSpec(3, 64, codebook="nf3"))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(w.grad).all() and (w.grad != 0).float().mean() > 0.9


@pytest.mark.parametrize("bad", [dict(bits=2, group_size=64, codebook="nf3"),
                                 dict(bits=3, group_size=64, sym=True, codebook="nf3"),
                                 dict(bits=3, group_size=64, codebook="nf4")])
def test_bad_codebook_spec(bad):
    with pytest.raises(ValueError):
        QuantSpec(**bad)


@pytest.mark.parametrize("spec", [QuantSpec(2, 64), QuantSpec(3, 128), QuantSpec(2, 128)],
                         ids=lambda s: s.name)
def test_ste_int_quantizer_is_the_export(spec):
    torch.manual_seed(3)
    w = torch.randn(8, 576, requires_grad=True)  # 576: a partial last group at g128
    out = fake_quantize_weight(w, spec)
    assert torch.equal(out.detach(), fake_quantize(w.detach(), spec))
    out.sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
