"""lowbit's CPU attention kernels against NumPy: paged keys in shuffled pages, GQA, sequences of 0 to
300 keys (decode: one and several 64-key chunks, merged; prefill: whole and partial 16-key tiles),
the sliding-window variant's key addressing (window start and sink), soft-capped scores, fp16
caches, and both value-row blocks; keys stored transposed in their pages (``kv_pages_cpu``);
outputs and TVM's log2-unit ``lse``."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.attention_cpu import (
    PAGE_SIZE,
    decode_kernel,
    prefill_paged_kernel,
    prefill_ragged_kernel,
)
from lowbit.targets.presets import BuildOptions, get_preset

H_KV, H_Q, D = 2, 6, 32
SM_SCALE = D**-0.5


def _key(pages: np.ndarray, page: int, head: int, slot: int) -> np.ndarray:
    """The key in ``slot`` of ``page``: the page's key half for ``head`` is [D][PAGE_SIZE]."""
    return pages[page, 0, head].reshape(-1)[slot::PAGE_SIZE]


def _reference(q, keys, values, cap):
    """Attention of one query head over its keys [L, D], and lse in log2 units."""
    if not len(keys):
        return np.zeros(D), -5e4
    s = keys @ q * SM_SCALE
    if cap:
        s = cap * np.tanh(s / cap)
    w = np.exp(s - s.max())
    return (w / w.sum()) @ values, (s.max() + np.log(w.sum())) / np.log(2)


# float16: ``--kv-cache-dtype float16`` (q, pages and output in fp16, the arithmetic in fp32)
# pv: query vectors of the group sharing each value row (the whole group of 3 on AVX-512 targets)
# sp: partial sums per query vector in the score product (2 on AVX-512 targets)
@pytest.mark.parametrize("sliding,cap,dtype,pv,sp", [
    (False, 0.0, "float32", 1, 1), (True, 0.0, "float32", 3, 2), (False, 2.0, "float32", 1, 2),
    (False, 0.0, "float16", 3, 2), (False, 0.0, "float32", 3, 4)])
def test_decode_kernel_matches_numpy(sliding, cap, dtype, pv, sp):
    target = get_preset("llvm").tvm_target(BuildOptions())
    kernel = decode_kernel(H_KV, H_Q, D, dtype, sliding, cap, pv, sp)
    run = tvm.compile(tvm.IRModule({"main": kernel}), target=target)["lowbit_attention_decode_cpu"]
    rng = np.random.default_rng(7)
    lens = [0, 1, 16, 17, 64, 65, 300]  # stored keys per sequence; 64 per parallel chunk (its next page prefetched)
    starts = [0, 0, 3, 5, 0, 1, 40] if sliding else [0] * 7  # the window's first key
    sinks = [0, 0, 2, 0, 0, 1, 4] if sliding else [0] * 7  # keys kept before it
    n_pages = [-(-n // PAGE_SIZE) for n in lens]
    pages = rng.standard_normal((sum(n_pages) + 2, 2, H_KV, PAGE_SIZE, D)).astype(dtype)
    values = rng.permutation(len(pages))[: sum(n_pages)].astype("int32")
    indptr = np.concatenate([[0], np.cumsum(n_pages)]).astype("int32")
    last = np.array([n - (p - 1) * PAGE_SIZE if p else 0 for n, p in zip(lens, n_pages, strict=True)], "int32")
    info = np.stack([last, starts, sinks]).astype("int32") if sliding else last
    q = (rng.standard_normal((len(lens), H_Q, D)) * 3).astype(dtype)
    out = np.zeros_like(q)
    lse = np.zeros((len(lens), H_Q), "float32")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (q, pages, indptr, values, info, np.zeros(7, "int32"),
                                                 np.zeros(7, "int32"), out, lse)]
    run(*args, 0, 1.0, 1e4, SM_SCALE)
    got, got_lse = args[7].numpy().astype("float32"), args[8].numpy()
    q, pages = q.astype("float32"), pages.astype("float32")  # the reference: fp32 over the same values
    atol = 2e-5 if dtype == "float32" else 2e-3  # fp16 output: half an ulp of values up to ~4
    for b, n in enumerate(lens):
        kept = [p for p in range(n) if p < sinks[b] or p >= starts[b]] if n else []
        rows = [(values[indptr[b] + p // PAGE_SIZE], p % PAGE_SIZE) for p in kept]
        for h in range(H_Q):
            keys = np.array([_key(pages, pg, h // 3, off) for pg, off in rows]).reshape(-1, D)
            vals = np.array([pages[pg, 1, h // 3, off] for pg, off in rows]).reshape(-1, D)
            want, want_lse = _reference(q[b, h], keys, vals, cap)
            np.testing.assert_allclose(got[b, h], want, atol=atol, err_msg=f"sequence {b} head {h}")
            assert abs(got_lse[b, h] - want_lse) < 1e-3 * max(1.0, abs(want_lse))


def _compile(kernel, name: str):
    target = get_preset("llvm").tvm_target(BuildOptions())
    return tvm.compile(tvm.IRModule({"main": kernel}), target=target)[name]


def _visible(row: int, qo_len: int, kv_len: int, causal: int, window: int) -> range:
    """The keys query ``row`` of a chunk sees (TVM's causal and sliding cross masks)."""
    if causal and window:
        return range(max(kv_len - max(window - row - 1, 0), 0), kv_len)
    if causal:
        return range(0, max(min(kv_len, kv_len - qo_len + row + 1), 0))
    return range(kv_len)


# pv: query vectors sharing each value row (2 on AVX-512 targets); float16: --kv-cache-dtype float16
@pytest.mark.parametrize("sliding,causal,cap,pv,dtype,sp", [
    (False, 1, 0.0, 1, "float32", 1), (False, 0, 0.0, 2, "float32", 2), (True, 1, 2.0, 2, "float32", 2),
    (True, 0, 0.0, 1, "float32", 1), (False, 1, 0.0, 2, "float16", 2)])
def test_prefill_paged_kernel_matches_numpy(sliding, causal, cap, pv, dtype, sp):
    window = 7
    run = _compile(prefill_paged_kernel(H_KV, H_Q, D, dtype, sliding, window, cap, pv, sp),
                   "lowbit_attention_prefill_paged_cpu")
    rng = np.random.default_rng(8)
    lens, qo = [0, 5, 40, 33], [3, 4, 1, 20]  # stored keys and chunk rows per sequence
    starts = [0, 1, 9, 5] if sliding else [0] * 4  # at or past the sink
    sinks = [0, 1, 2, 0] if sliding else [0] * 4
    n_pages = [-(-n // PAGE_SIZE) for n in lens]
    pages = rng.standard_normal((sum(n_pages) + 1, 2, H_KV, PAGE_SIZE, D)).astype(dtype)
    values = rng.permutation(len(pages))[: sum(n_pages)].astype("int32")
    indptr = np.concatenate([[0], np.cumsum(n_pages)]).astype("int32")
    q_indptr = np.concatenate([[0], np.cumsum(qo)]).astype("int32")
    last = np.array([n - (p - 1) * PAGE_SIZE if p else 0 for n, p in zip(lens, n_pages, strict=True)], "int32")
    info = np.stack([last, starts, sinks]).astype("int32") if sliding else last
    q = (rng.standard_normal((sum(qo), H_Q, D)) * 3).astype(dtype)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (
        q, q_indptr, pages, indptr, values, info, np.zeros(4, "int32"), np.zeros(sum(qo), "int32"),
        np.zeros_like(q), np.zeros((sum(qo), H_Q), "float32"))]
    run(*args, causal, 0, 1.0, 1e4, SM_SCALE)
    got, got_lse = args[8].numpy().astype("float32"), args[9].numpy()
    q, pages = q.astype("float32"), pages.astype("float32")
    atol = 2e-5 if dtype == "float32" else 2e-3
    for b, n in enumerate(lens):
        kept = [p for p in range(n) if p < sinks[b] or p >= starts[b]]
        rows = [(values[indptr[b] + p // PAGE_SIZE], p % PAGE_SIZE) for p in kept]
        for r in range(qo[b]):
            seen = [rows[c] for c in _visible(r, qo[b], len(kept), causal, window if sliding else 0)]
            for h in range(H_Q):
                keys = np.array([_key(pages, pg, h // 3, off) for pg, off in seen]).reshape(-1, D)
                vals = np.array([pages[pg, 1, h // 3, off] for pg, off in seen]).reshape(-1, D)
                want, want_lse = _reference(q[q_indptr[b] + r, h], keys, vals, cap)
                t = q_indptr[b] + r
                np.testing.assert_allclose(got[t, h], want, atol=atol, err_msg=f"sequence {b} row {r} head {h}")
                assert abs(got_lse[t, h] - want_lse) < 1e-3 * max(1.0, abs(want_lse))


@pytest.mark.parametrize("causal,pv,sp", [(1, 1, 1), (1, 2, 2), (0, 1, 2)])
def test_prefill_ragged_kernel_matches_numpy(causal, pv, sp):
    run = _compile(prefill_ragged_kernel(H_KV, H_Q, D, "float32", 0.0, pv, sp), "lowbit_attention_prefill_ragged_cpu")
    rng = np.random.default_rng(9)
    qo, kv = [1, 17, 5], [1, 20, 5]
    q_indptr = np.concatenate([[0], np.cumsum(qo)]).astype("int32")
    kv_indptr = np.concatenate([[0], np.cumsum(kv)]).astype("int32")
    q = rng.standard_normal((sum(qo), H_Q, D)).astype("float32") * 3
    k = rng.standard_normal((sum(kv), H_KV, D)).astype("float32")
    v = rng.standard_normal((sum(kv), H_KV, D)).astype("float32")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (
        q, q_indptr, k, v, kv_indptr, np.zeros(sum(qo), "int32"), np.zeros(3, "int32"),
        np.zeros_like(q), np.zeros((sum(qo), H_Q), "float32"))]
    run(*args, causal, 0, 1.0, 1e4, SM_SCALE)
    got, got_lse = args[7].numpy(), args[8].numpy()
    for b in range(3):
        for r in range(qo[b]):
            cols = _visible(r, qo[b], kv[b], causal, 0)
            keys, vals = k[kv_indptr[b] + np.array(cols, int)], v[kv_indptr[b] + np.array(cols, int)]
            for h in range(H_Q):
                want, want_lse = _reference(q[q_indptr[b] + r, h], keys[:, h // 3], vals[:, h // 3], 0.0)
                t = q_indptr[b] + r
                np.testing.assert_allclose(got[t, h], want, atol=2e-5, err_msg=f"sequence {b} row {r} head {h}")
                assert abs(got_lse[t, h] - want_lse) < 1e-3 * max(1.0, abs(want_lse))


def test_decode_value_block_fits_the_accumulators():
    from lowbit.compiler.kernels.attention_cpu import _decode_value_block

    assert _decode_value_block(3, 64, 384) == 3  # 192 floats: 12 zmm
    assert _decode_value_block(3, 128, 384) == 3
    assert _decode_value_block(4, 128, 384) == 2  # 512 floats do not fit; 2 · 128 do
    assert _decode_value_block(7, 64, 384) == 1  # no divisor of 7 but 1 and 7 (448 floats)
    assert _decode_value_block(3, 64, 0) == 1  # AVX2: none shared


def test_head_dim_off_the_lanes_keeps_tvms_kernels():
    from lowbit.compiler.kernels.attention_cpu import use_lowbit_attention
    from lowbit.errors import LowbitError

    empty, target = tvm.IRModule({}), get_preset("llvm").tvm_target(BuildOptions())
    assert use_lowbit_attention(empty, target, 2, 4, 20, "float32", 0, 2) is empty
    with pytest.raises(LowbitError, match="lacks TVM's CPU attention kernels"):
        use_lowbit_attention(empty, target, 2, 4, 24, "float32", 0, 2)
