"""NumPy reference for the packed layouts of ``docs/FORMAT.md``, written independently of
``compiler/packing.py``: packing codes into words and dequantizing them, and random test cases."""

from __future__ import annotations

import numpy as np

from lowbit.compiler.schemes import HEAD_Q8, AsymGroupQuant, NF3GroupQuant, get_scheme
from lowbit.quantizer import NF3_LEVELS


def pack_np(codes: np.ndarray, scheme) -> np.ndarray:
    """Codes [N, K] → uint32 words, K padded with zero codes to whole groups."""
    n, k = codes.shape
    g = scheme.group_size
    padded = np.zeros((n, -(-k // g) * g), np.uint64)
    padded[:, :k] = codes
    if isinstance(scheme, AsymGroupQuant | NF3GroupQuant) and scheme.bits == 3:
        words = []
        for run in range(padded.shape[1] // 32):
            c = padded[:, run * 32:(run + 1) * 32]
            lo0 = sum((c[:, j] & 3) << (2 * j) for j in range(16))
            lo1 = sum((c[:, 16 + j] & 3) << (2 * j) for j in range(16))
            hi = sum(((c[:, j] >> 2) & 1) << j for j in range(32))
            words += [lo0, lo1, hi]
        return np.stack(words, axis=1).astype(np.uint32)
    per = 32 // scheme.bits
    lanes = padded.reshape(n, -1, per)
    return sum(lanes[:, :, j] << (scheme.bits * j) for j in range(per)).astype(np.uint32)


def dequant_np(codes, scales, zeros, scheme) -> np.ndarray:
    k = codes.shape[1]
    s = np.repeat(scales.astype(np.float32), scheme.group_size, axis=1)[:, :k]
    z = np.repeat(zeros.astype(np.float32), scheme.group_size, axis=1)[:, :k]
    return (codes.astype(np.float32) - z) * s


def dequant_nf3_np(codes, scales, group: int) -> np.ndarray:
    """``level[q]·s₊`` for q > 3, else ``level[q]·s₋``; scales [N, G, 2]."""
    k = codes.shape[1]
    per_k = np.repeat(scales.astype(np.float32), group, axis=1)[:, :k]
    s = np.where(codes > 3, per_k[..., 0], per_k[..., 1])
    return np.asarray(NF3_LEVELS, np.float32)[codes] * s


def scheme_named(name: str):
    """A registered scheme, or the 8-bit head scheme of the ``…_q8head`` schemes."""
    return HEAD_Q8 if name == HEAD_Q8.name else get_scheme(name)


def quantized_case(scheme, n: int, k: int, rng):
    codes = rng.integers(0, 1 << scheme.bits, (n, k)).astype(np.uint8)
    groups = -(-k // scheme.group_size)
    if isinstance(scheme, NF3GroupQuant):
        scales = (rng.random((n, groups, 2)) * 0.1 + 0.01).astype(np.float16)
        return [pack_np(codes, scheme), scales], dequant_nf3_np(codes, scales, scheme.group_size)
    scales = (rng.random((n, groups)) * 0.1 + 0.01).astype(np.float16)
    if isinstance(scheme, AsymGroupQuant):
        zeros = rng.integers(0, 1 << scheme.bits, (n, groups)).astype(np.uint8)
        params = [pack_np(codes, scheme), scales, zeros]
    else:
        zeros = np.full((n, groups), scheme.max_int, np.uint8)
        params = [pack_np(codes, scheme), scales]
    return params, dequant_np(codes, scales, zeros, scheme)
