"""Packing and MLC's symmetric quantization against independent NumPy ports, every scheme."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.compiler.packing import pack, unpack
from lowbit.compiler.requantize import mlc_quantize
from lowbit.compiler.schemes import (
    HEAD_Q8,
    SCHEMES,
    AsymGroupQuant,
    NF3GroupQuant,
    NoQuant,
    SymGroupQuant,
)
from lowbit.quantizer import quantize

# the ``…_q8head`` twins pack their linears as their base scheme; their head is HEAD_Q8
BODY = [s for s in SCHEMES.values() if getattr(s, "head", None) is None]
SYM = [s for s in BODY if isinstance(s, SymGroupQuant)] + [HEAD_Q8]
ASYM = [s for s in BODY if isinstance(s, AsymGroupQuant)]
NF3 = [s for s in BODY if isinstance(s, NF3GroupQuant)]  # packed as 3-bit ASYM
SHAPES = [(2, 13), (16, 120), (3, 1), (5, 33), (4, 129), (7, 200), (3, 41)]
FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"


# --- NumPy port of mlc-llm quantization/group_quantization.py `_quantize` + utils.pack_weight ---
def np_mlc_quantize(w: np.ndarray, bits: int, group: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(q_weight uint32 [N, S], q_scale [N, G]) exactly as MLC's TE code, element by element."""
    w = w.astype(dtype)
    n, k = w.shape
    max_int = dtype((1 << (bits - 1)) - 1)
    num_group = -(-k // group)
    scale = np.empty((n, num_group), dtype=dtype)
    for g in range(num_group):
        scale[:, g] = np.abs(w[:, g * group : min(k, (g + 1) * group)]).max(axis=1) / max_int
    scaled = np.empty((n, k), dtype=np.uint32)
    for j in range(k):
        v = np.round(w[:, j] / scale[:, j // group] + max_int)  # fp ops in `dtype`
        scaled[:, j] = np.minimum(np.maximum(v, dtype(0)), max_int * dtype(2)).astype(np.uint32)
    per = 32 // bits
    num_storage = group // per * num_group
    q = np.zeros((n, num_storage), dtype=np.uint32)
    for s in range(num_storage):
        for r in range(per):
            if s * per + r < k:
                q[:, s] += scaled[:, s * per + r] << np.uint32(r * bits)
    return q, scale


def np_mlc_dequantize(q: np.ndarray, scale: np.ndarray, bits: int, group: int, k: int, dtype):
    """MLC's ``_dequantize`` (``convert_uint_to_float``) in fp32: exact for fp16 scales,
    MLC's own rounding for fp32 scales."""
    per, max_int = 32 // bits, np.float32((1 << (bits - 1)) - 1)
    out = np.empty((q.shape[0], k), dtype=np.float32)
    for j in range(k):
        code = (q[:, j // per] >> np.uint32((j % per) * bits)) & np.uint32((1 << bits) - 1)
        out[:, j] = (code.astype(np.float32) - max_int) * scale[:, j // group].astype(np.float32)
    return out


# --- NumPy port of the asymmetric layout as docs/FORMAT.md states it ---
def np_asym_pack(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    n, k = codes.shape
    padded_k = -(-k // group) * group
    words = np.zeros((n, padded_k * bits // 32), dtype=np.uint32)
    for j in range(k):
        c, e = divmod(j, 32)
        v = codes[:, j].astype(np.uint32)
        if bits == 3:
            words[:, 3 * c + e // 16] |= (v & 3) << np.uint32(2 * (e % 16))
            words[:, 3 * c + 2] |= (v >> 2) << np.uint32(e)
        else:
            per = 32 // bits
            words[:, c * bits + e // per] |= v << np.uint32(bits * (e % per))
    return words


@pytest.mark.parametrize("scheme", SYM, ids=lambda s: s.name)
@pytest.mark.parametrize("shape", SHAPES)
def test_sym_quantize_and_pack_match_mlc(scheme: SymGroupQuant, shape):
    torch.manual_seed(shape[0] * 1000 + shape[1])
    w = torch.randn(shape) * 0.05
    np_dtype = np.float16 if scheme.model_dtype == "float16" else np.float32
    ref_q, ref_s = np_mlc_quantize(w.numpy(), scheme.bits, scheme.group_size, np_dtype)
    qw = mlc_quantize(w, scheme)
    words = pack(qw.codes.numpy(), scheme)
    assert words.dtype == np.uint32 and words.shape == (shape[0], scheme.words_per_row(shape[1]))
    np.testing.assert_array_equal(words, ref_q)
    np.testing.assert_array_equal(qw.scales.numpy(), ref_s)
    np.testing.assert_array_equal(unpack(words, scheme, shape[1]), qw.codes.numpy())
    deq = np_mlc_dequantize(ref_q, ref_s, scheme.bits, scheme.group_size, shape[1], np_dtype)
    np.testing.assert_array_equal(qw.dequantize(torch.float32).numpy(), deq)


def test_lowbit_quantizer_sym_is_mlc_fp16():
    """The foundation's symmetric quantizer reproduces MLC's fp16 arithmetic, code for code."""
    torch.manual_seed(1)
    w = (torch.randn(33, 200) * torch.logspace(-3, 1, 200)).half()
    from lowbit.quantizer import QuantSpec

    for bits, group in ((4, 32), (3, 40)):
        qw = quantize(w, QuantSpec(bits, group, sym=True))
        ref_q, ref_s = np_mlc_quantize(w.numpy(), bits, group, np.float16)
        scheme = SymGroupQuant("t", bits, group, "float16")
        np.testing.assert_array_equal(pack(qw.codes.numpy(), scheme), ref_q)
        np.testing.assert_array_equal(qw.scales.numpy(), ref_s)


@pytest.mark.parametrize("scheme", [*ASYM, *NF3], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", SHAPES)
def test_asym_pack_matches_layout(scheme: AsymGroupQuant | NF3GroupQuant, shape):
    rng = np.random.default_rng(shape[1])
    codes = rng.integers(0, 1 << scheme.bits, size=shape, dtype=np.uint8)
    words = pack(codes, scheme)
    np.testing.assert_array_equal(words, np_asym_pack(codes, scheme.bits, scheme.group_size))
    assert words.shape == (shape[0], scheme.words_per_row(shape[1]))
    np.testing.assert_array_equal(unpack(words, scheme, shape[1]), codes)


def test_3bit_planes_drawn_example():
    """The FORMAT.md example: element j = j % 8 in one 32-element chunk."""
    codes = (np.arange(32) % 8).astype(np.uint8)[None, :]
    words = pack(codes, SCHEMES["w3a16g32asym"])[0]
    low = sum(int(c & 3) << (2 * j) for j, c in enumerate(codes[0, :16]))
    assert words[0] == low == words[1] == 0xE4E4E4E4  # elements 16..31 repeat 0..7
    assert words[2] == sum(1 << j for j in range(32) if codes[0, j] & 4) == 0xF0F0F0F0


def _format_md_bpw() -> dict[str, float]:
    """Scheme → effective bits per weight, from the `| scheme | … | bpw |` table in FORMAT.md."""
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|.*\|\s*([\d.]+)\s*\|\s*$", FORMAT_MD.read_text(), re.M)
    return {name: float(bpw) for name, bpw in rows}


@pytest.mark.parametrize("scheme", [*BODY, HEAD_Q8], ids=lambda s: s.name)
def test_bytes_match_format_md(scheme):
    """Bytes of one quantized [N, K] linear = N·K·bpw/8 with bpw from docs/FORMAT.md."""
    bpw = _format_md_bpw()[scheme.name]
    assert bpw == pytest.approx(scheme.bits_per_weight())
    n, k = 24, 1280  # K a multiple of every group size (32, 40, 64, 128)
    w = torch.randn(n, k)
    if isinstance(scheme, NoQuant):
        nbytes = w.numel() * (2 if scheme.model_dtype == "float16" else 4)
    elif isinstance(scheme, SymGroupQuant):
        qw = mlc_quantize(w, scheme)
        nbytes = pack(qw.codes.numpy(), scheme).nbytes + qw.scales.numpy().nbytes
    else:
        qw = quantize(w, scheme.spec)
        nbytes = pack(qw.codes.numpy(), scheme).nbytes + qw.scales.numpy().nbytes
        nbytes += 0 if qw.zeros is None else qw.zeros.numpy().nbytes
    assert nbytes * 8 == pytest.approx(n * k * bpw)
