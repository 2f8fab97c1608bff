"""The CPU RMS norms, plain and with the residual add fused, against NumPy in float64: one row
and rows past the parallel threshold, widths of one and of many vectors, fp16 and fp32 weights.
Every compiled model on CPU runs them; the model tests hold those to PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.norm_cpu import PARALLEL_ROWS, rms_norm_kernel
from lowbit.targets.presets import BuildOptions, get_preset

EPS = 1e-5


def run(hidden: int, weight: np.ndarray, *rows: np.ndarray) -> list[np.ndarray]:
    """The kernel on ``rows`` (x, or x and d) with ``weight``; its outputs (y, or s and y)."""
    target = get_preset("llvm").tvm_target(BuildOptions())
    kernel = rms_norm_kernel(hidden, str(weight.dtype), EPS, add=len(rows) == 2)
    f = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target=target)["main"]
    outs = [tvm.runtime.tensor(np.zeros(rows[0].shape, "float32")) for _ in rows]
    args = [tvm.runtime.tensor(rows[0])] + [tvm.runtime.tensor(r) for r in rows[1:]] + [tvm.runtime.tensor(weight)]
    f(*args, *outs)
    return [o.numpy() for o in outs]


def reference(s: np.ndarray, weight: np.ndarray) -> np.ndarray:
    s = s.astype("float64")
    return s / np.sqrt((s * s).mean(-1, keepdims=True) + EPS) * weight.astype("float64")


@pytest.mark.parametrize("weight_dtype", ["float16", "float32"])
@pytest.mark.parametrize("batch,seq,hidden", [(1, 1, 576), (1, PARALLEL_ROWS + 3, 16), (3, 2, 80)])
def test_rms_norm_matches_numpy(weight_dtype, batch, seq, hidden):
    rng = np.random.default_rng(batch * 1000 + seq * 10 + hidden)
    x = (rng.standard_normal((batch, seq, hidden)) * 3).astype("float32")
    x[0, 0] *= 1e3  # a row of large values: the mean of squares, not a sum that overflows
    w = (rng.standard_normal(hidden) * 0.5 + 1).astype(weight_dtype)
    (y,) = run(hidden, w, x)
    np.testing.assert_allclose(y, reference(x, w), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("batch,seq,hidden", [(1, 1, 576), (2, PARALLEL_ROWS, 48)])
def test_add_rms_norm_returns_the_sum_and_its_norm(batch, seq, hidden):
    rng = np.random.default_rng(seq * 10 + hidden)
    x, d = (rng.standard_normal((2, batch, seq, hidden)) * 2).astype("float32")
    w = (rng.standard_normal(hidden) * 0.5 + 1).astype("float16")
    s, y = run(hidden, w, x, d)
    np.testing.assert_array_equal(s, x + d)  # the residual stream, exactly fp32's sum
    np.testing.assert_allclose(y, reference(x + d, w), rtol=2e-6, atol=1e-6)


def test_a_model_parses_each_norm_once(tiny_llama_dir, tmp_path):
    """Exporting the 2-layer model asks for a norm kernel 25 times (5 norms × 5 methods): TVMScript
    parses each distinct one once (~0.1 s each; 305 asks on the bundled model)."""
    import json

    from lowbit.compiler.compile import export_model
    from lowbit.compiler.convert import ConvertArgs, convert

    mlc = convert(ConvertArgs(str(tiny_llama_dir), "q4f16_1", tmp_path / "mlc", progress=False)).out
    preset = get_preset("llvm")
    rms_norm_kernel.cache_clear()
    export_model(json.loads((mlc / "mlc-chat-config.json").read_text()), preset, preset.tvm_target(BuildOptions()))
    info = rms_norm_kernel.cache_info()
    assert (info.hits + info.misses, info.misses) == (25, 2)  # the plain norm and the one with the add
