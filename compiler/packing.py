"""Pack integer codes [N, K] (uint8) into each scheme's uint32 words along K, and back.

``pack`` pads K up to a whole number of groups with code 0 (as mlc-llm's ``pack_weight``),
``unpack`` drops the padding again. Layouts are drawn in ``docs/FORMAT.md``.
"""

from __future__ import annotations

import numpy as np

from lowbit.compiler.schemes import STORAGE_BITS, PackedScheme, SymGroupQuant

CHUNK = 32  # asymmetric and NF3 schemes: each run of 32 elements along K fills `bits` words


def _pad_k(codes: np.ndarray, padded_k: int) -> np.ndarray:
    n, k = codes.shape
    out = np.zeros((n, padded_k), dtype=np.uint32)
    out[:, :k] = codes
    return out


def _pack_plain(codes: np.ndarray, bits: int, per_word: int) -> np.ndarray:
    """[N, W·per_word] → [N, W]: element j of each word at bits ``bits·j``."""
    n, k = codes.shape
    lanes = codes.reshape(n, k // per_word, per_word).astype(np.uint32)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(lanes << shifts, axis=2).astype(np.uint32)


def _unpack_plain(words: np.ndarray, bits: int, per_word: int) -> np.ndarray:
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    lanes = (words[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    return lanes.reshape(words.shape[0], -1).astype(np.uint8)


def _pack_3bit_planes(codes: np.ndarray) -> np.ndarray:
    """Per 32-element chunk: low 2 bits of elements 0–15, of 16–31, then bit 2 of all 32."""
    n, k = codes.shape
    chunks = codes.reshape(n, k // CHUNK, CHUNK).astype(np.uint32)
    low = _pack_plain((chunks & 3).reshape(n, -1), 2, 16).reshape(n, -1, 2)
    high = _pack_plain((chunks >> 2).reshape(n, -1), 1, 32).reshape(n, -1, 1)
    return np.concatenate([low, high], axis=2).reshape(n, -1)


def _unpack_3bit_planes(words: np.ndarray) -> np.ndarray:
    n = words.shape[0]
    triples = words.reshape(n, -1, 3)
    low = _unpack_plain(triples[:, :, :2].reshape(n, -1), 2, 16).reshape(n, -1, CHUNK)
    high = _unpack_plain(triples[:, :, 2:].reshape(n, -1), 1, 32).reshape(n, -1, CHUNK)
    return (low | (high << 2)).reshape(n, -1)


def pack(codes: np.ndarray, scheme: PackedScheme) -> np.ndarray:
    """Codes [N, K] (values < 2^bits) → uint32 words [N, scheme.words_per_row(K)]."""
    n, k = codes.shape
    padded = _pad_k(codes, scheme.num_groups(k) * scheme.group_size)
    if isinstance(scheme, SymGroupQuant):
        return _pack_plain(padded, scheme.bits, scheme.elems_per_word)
    if scheme.bits == 3:
        return _pack_3bit_planes(padded)
    return _pack_plain(padded, scheme.bits, STORAGE_BITS // scheme.bits)


def unpack(words: np.ndarray, scheme: PackedScheme, k: int) -> np.ndarray:
    """uint32 words [N, W] → codes [N, K] uint8 (padding dropped)."""
    words = np.ascontiguousarray(words, dtype=np.uint32)
    if isinstance(scheme, SymGroupQuant):
        codes = _unpack_plain(words, scheme.bits, scheme.elems_per_word)
    elif scheme.bits == 3:
        codes = _unpack_3bit_planes(words)
    else:
        codes = _unpack_plain(words, scheme.bits, STORAGE_BITS // scheme.bits)
    return codes[:, :k]
