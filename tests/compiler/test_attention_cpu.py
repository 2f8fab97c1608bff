"""lowbit's CPU decode-attention kernel against NumPy: paged keys in shuffled pages, GQA, sequences
of 0 to 300 keys, the sliding-window variant's key addressing (window start and sink), and
soft-capped scores; outputs and TVM's log2-unit ``lse``."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.attention_cpu import PAGE_SIZE, decode_kernel
from lowbit.targets.presets import BuildOptions, get_preset

H_KV, H_Q, D = 2, 6, 32
SM_SCALE = D**-0.5


def _reference(q, keys, values, cap):
    """Attention of one query head over its keys [L, D], and lse in log2 units."""
    if not len(keys):
        return np.zeros(D), -5e4
    s = keys @ q * SM_SCALE
    if cap:
        s = cap * np.tanh(s / cap)
    w = np.exp(s - s.max())
    return (w / w.sum()) @ values, (s.max() + np.log(w.sum())) / np.log(2)


@pytest.mark.parametrize("sliding,cap", [(False, 0.0), (True, 0.0), (False, 2.0)])
def test_decode_kernel_matches_numpy(sliding, cap):
    target = get_preset("llvm").tvm_target(BuildOptions())
    kernel = decode_kernel(H_KV, H_Q, D, "float32", sliding, cap)
    run = tvm.compile(tvm.IRModule({"main": kernel}), target=target)["lowbit_attention_decode_cpu"]
    rng = np.random.default_rng(7)
    lens = [0, 1, 16, 17, 300]  # stored keys per sequence
    starts = [0, 0, 3, 5, 40] if sliding else [0] * 5  # the window's first key
    sinks = [0, 0, 2, 0, 4] if sliding else [0] * 5  # keys kept before it
    n_pages = [-(-n // PAGE_SIZE) for n in lens]
    pages = rng.standard_normal((sum(n_pages) + 2, 2, H_KV, PAGE_SIZE, D)).astype("float32")
    values = rng.permutation(len(pages))[: sum(n_pages)].astype("int32")
    indptr = np.concatenate([[0], np.cumsum(n_pages)]).astype("int32")
    last = np.array([n - (p - 1) * PAGE_SIZE if p else 0 for n, p in zip(lens, n_pages, strict=True)], "int32")
    info = np.stack([last, starts, sinks]).astype("int32") if sliding else last
    q = rng.standard_normal((len(lens), H_Q, D)).astype("float32") * 3
    out = np.zeros_like(q)
    lse = np.zeros((len(lens), H_Q), "float32")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (q, pages, indptr, values, info, np.zeros(5, "int32"),
                                                 np.zeros(5, "int32"), out, lse)]
    run(*args, 0, 1.0, 1e4, SM_SCALE)
    got, got_lse = args[7].numpy(), args[8].numpy()
    for b, n in enumerate(lens):
        kept = [p for p in range(n) if p < sinks[b] or p >= starts[b]] if n else []
        rows = [(values[indptr[b] + p // PAGE_SIZE], p % PAGE_SIZE) for p in kept]
        for h in range(H_Q):
            keys = np.array([pages[pg, 0, h // 3, off] for pg, off in rows]).reshape(-1, D)
            vals = np.array([pages[pg, 1, h // 3, off] for pg, off in rows]).reshape(-1, D)
            want, want_lse = _reference(q[b, h], keys, vals, cap)
            np.testing.assert_allclose(got[b, h], want, atol=2e-5, err_msg=f"sequence {b} head {h}")
            assert abs(got_lse[b, h] - want_lse) < 1e-3 * max(1.0, abs(want_lse))
