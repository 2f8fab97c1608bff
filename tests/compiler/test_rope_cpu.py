"""lowbit's CPU split-rotary kernel against NumPy's rotate-half RoPE (HF's formulas, llama3
scaling included): decode's one token and prompts past the parallel threshold, fp32 and fp16,
partial rotary dimensions, and ``apply_rope`` 0 (split only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.rope_cpu import PARALLEL_TOKENS, split_rotary_kernel, supports
from lowbit.targets.presets import BuildOptions, get_preset

H_Q, H_KV, D, THETA = 6, 2, 32, 10000.0
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def inverse_frequencies(rotary_dim: int, scaling: dict) -> np.ndarray:
    """HF's ``_compute_default_rope_parameters`` / ``_compute_llama3_parameters``, in float64."""
    inv = 1.0 / THETA ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    if scaling.get("rope_type") != "llama3":
        return inv
    old, low, high, factor = (scaling[k] for k in ("original_max_position_embeddings", "low_freq_factor",
                                                    "high_freq_factor", "factor"))
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope(x: np.ndarray, positions: np.ndarray, rotary_dim: int, scaling: dict) -> np.ndarray:
    """x [T, H, D] rotated over its first ``rotary_dim`` dimensions (rotate-half)."""
    angles = positions[:, None] * inverse_frequencies(rotary_dim, scaling)[None]  # [T, r/2]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    first, second = x[..., : rotary_dim // 2], x[..., rotary_dim // 2: rotary_dim]
    rotated = np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return np.concatenate([rotated, x[..., rotary_dim:]], axis=-1)


def run(kernel, qkv: np.ndarray, positions: np.ndarray, apply_rope: int) -> list[np.ndarray]:
    target = get_preset("llvm").tvm_target(BuildOptions())
    f = tvm.compile(tvm.IRModule({"main": kernel}), target=target)["fused_rope"]
    t, dtype = len(qkv), qkv.dtype
    outs = [tvm.runtime.tensor(np.zeros((t, h, D), dtype)) for h in (H_Q, H_KV, H_KV)]
    f(tvm.runtime.tensor(qkv), tvm.runtime.tensor(positions), *outs, apply_rope)
    return [o.numpy() for o in outs]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("scaling", [{}, LLAMA3], ids=["default", "llama3"])
@pytest.mark.parametrize("tokens,rotary_dim", [(1, D), (PARALLEL_TOKENS + 3, D), (5, D // 2)])
def test_split_rotary_matches_numpy(dtype, scaling, tokens, rotary_dim):
    rng = np.random.default_rng(tokens * 100 + rotary_dim + len(scaling))
    qkv = rng.standard_normal((tokens, H_Q + 2 * H_KV, D)).astype(dtype)
    positions = rng.integers(0, 4000, tokens).astype("int32")
    q, k, v = run(split_rotary_kernel(H_Q, H_KV, D, dtype, THETA, scaling, rotary_dim), qkv, positions, 1)
    x = qkv.astype("float64")
    # the kernel's angles are fp32 (as TVM's and HF's): up to 2 ulp of the largest angle, times |x|
    atol = 2 * 2.0**-23 * positions.max() * 2 * np.abs(x).max()
    rtol = 1e-6 if dtype == "float32" else 2.0**-10  # fp16 outputs round to 11 bits
    np.testing.assert_allclose(q, rope(x[:, :H_Q], positions, rotary_dim, scaling), atol=atol, rtol=rtol)
    np.testing.assert_allclose(k, rope(x[:, H_Q:H_Q + H_KV], positions, rotary_dim, scaling), atol=atol, rtol=rtol)
    np.testing.assert_array_equal(v, qkv[:, H_Q + H_KV:])
    assert np.abs(q - qkv[:, :H_Q]).max() > 0.1  # it did rotate


def test_split_only_without_apply_rope():
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((4, H_Q + 2 * H_KV, D)).astype("float32")
    q, k, v = run(split_rotary_kernel(H_Q, H_KV, D, "float32", THETA, {}, D), qkv, np.arange(4, dtype="int32"), 0)
    np.testing.assert_array_equal(np.concatenate([q, k, v], axis=1), qkv)


def test_supports_the_rotate_half_scalings_only():
    assert supports({}) and supports(LLAMA3)
    assert not supports({"rope_type": "gptj"}) and not supports({"rope_type": "longrope"})
