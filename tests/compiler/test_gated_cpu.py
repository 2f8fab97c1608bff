"""The CPU MLP gate, ``silu(gate) · up``, against NumPy in float64: vectorised and odd widths,
one row and rows past the parallel threshold, gates from -100 to 100 (e^-|g| underflows, the
sigmoid saturates), fp32 and fp16."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.gated_cpu import PARALLEL_ROWS, silu_multiply_kernel
from lowbit.targets.presets import BuildOptions, get_preset


def run(x: np.ndarray, inter: int) -> np.ndarray:
    target = get_preset("llvm").tvm_target(BuildOptions())
    kernel = silu_multiply_kernel(inter, str(x.dtype)).with_attr("global_symbol", "main")
    f = tvm.compile(tvm.IRModule({"main": kernel}), target=target)["main"]
    y = tvm.runtime.tensor(np.zeros((*x.shape[:2], inter), x.dtype))
    f(tvm.runtime.tensor(x), y)
    return y.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch,seq,inter", [(1, 1, 64), (1, PARALLEL_ROWS + 3, 48), (3, 2, 37)])
def test_silu_multiply_matches_numpy(dtype, batch, seq, inter):
    rng = np.random.default_rng(batch * 1000 + seq * 10 + inter)
    x = (rng.standard_normal((batch, seq, 2 * inter)) * 4).astype(dtype)
    x[..., :4] = np.array([-100.0, 100.0, 0.0, -30.0], dtype)  # underflow, saturation, zero
    g, up = x[..., :inter].astype("float64"), x[..., inter:].astype("float64")
    want = g / (1 + np.exp(-g)) * up
    # fp32: the polynomial's 2e-7 and the rounding of g·log2(e) (|g| ≤ 30: 1.3e-6 of a tail
    # worth 1e-12), so an absolute floor at 1e-7 of the largest output; fp16: its 11 bits
    rtol, floor = (1e-6, 1e-7) if dtype == "float32" else (2.0**-10, 2.0**-11)
    np.testing.assert_allclose(run(x, inter), want, rtol=rtol, atol=floor * np.abs(want).max())
