"""lowbit's CPU page kernels against NumPy: keys land transposed in their pages (per head
dimension, a page's 16 keys side by side), values as TVM stores them, and the append, page copy,
compaction and debug read agree on that layout; TVM's tree attention is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lowbit.compiler.kernels.kv_pages_cpu import (
    PAGE_SIZE,
    append_kernel,
    compact_kernel,
    copy_page_kernel,
    debug_get_kv_kernel,
    tree_attention_refusal,
)
from lowbit.targets.presets import BuildOptions, get_preset

H_KV, D, PAGES = 3, 24, 5


def _run(kernel, *args):
    target = get_preset("llvm").tvm_target(BuildOptions())
    symbol = kernel.attrs["global_symbol"]
    tensors = [tvm.runtime.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
    tvm.compile(tvm.IRModule({symbol: kernel}), target=target)[symbol](*tensors)
    return [t.numpy() if isinstance(t, tvm.runtime.Tensor) else t for t in tensors]


def _key_view(pages: np.ndarray) -> np.ndarray:
    """[page, head, slot, dim] view of the keys: each page's key half is [D][PAGE_SIZE]."""
    return pages[:, 0].reshape(len(pages), H_KV, D, PAGE_SIZE).transpose(0, 1, 3, 2)


def _pages(rng: np.random.Generator, dtype: str) -> np.ndarray:
    return rng.standard_normal((PAGES, 2, H_KV, PAGE_SIZE, D)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_append_writes_keys_transposed_and_values_as_tvm(dtype):
    rng = np.random.default_rng(11)
    pages = _pages(rng, dtype)
    k, v = (rng.standard_normal((7, H_KV, D)).astype(dtype) for _ in range(2))
    positions = np.array([0, 17, -1, 31, 32, 79, 5], "int32")  # -1: skipped
    got = _run(append_kernel(H_KV, D, dtype), pages.copy(), k, v, positions)[0]
    want_keys, want_values = _key_view(pages).copy(), pages[:, 1].transpose(0, 2, 1, 3).copy()
    for t, pos in enumerate(positions):
        if pos >= 0:
            want_keys[pos // PAGE_SIZE, :, pos % PAGE_SIZE] = k[t]
            want_values[pos // PAGE_SIZE, pos % PAGE_SIZE] = v[t]
    np.testing.assert_array_equal(_key_view(got), want_keys)
    np.testing.assert_array_equal(got[:, 1].transpose(0, 2, 1, 3), want_values)


def test_debug_read_returns_what_append_wrote():
    rng = np.random.default_rng(12)
    k, v = (rng.standard_normal((9, H_KV, D)).astype("float32") for _ in range(2))
    positions = rng.permutation(PAGES * PAGE_SIZE)[:9].astype("int32")
    pages = _run(append_kernel(H_KV, D, "float32"), _pages(rng, "float32"), k, v, positions)[0]
    layers = np.zeros((2, 9, H_KV, D), "float32")
    got_k, got_v = _run(debug_get_kv_kernel(2, H_KV, D, "float32"), pages, positions, layers.copy(),
                        layers.copy(), 1)[2:4]
    np.testing.assert_array_equal(got_k[1], k)
    np.testing.assert_array_equal(got_v[1], v)
    assert not got_k[0].any() and not got_v[0].any()  # only layer 1 was asked for


def test_copy_page_copies_the_first_slots():
    rng = np.random.default_rng(13)
    pages = _pages(rng, "float32")
    got = _run(copy_page_kernel(H_KV, D, "float32"), pages.copy(), 3, 1, 6)[0]
    want = pages.copy()
    keys = _key_view(want)  # a view into ``want``'s key halves
    keys[1, :, :6] = _key_view(pages)[3, :, :6]
    want[1, 1, :, :6] = pages[3, 1, :, :6]
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got[1], pages[3])  # slots 6… of page 1 kept


def test_compact_moves_each_listed_slot():
    rng = np.random.default_rng(14)
    pages = _pages(rng, "float32")
    indptr = np.array([0, 2, 2, 3], "int32")  # three sequences; the second moves nothing
    src_dst = np.array([[20, 21, 70], [3, 4, 48]], "int32")
    got = _run(compact_kernel(H_KV, D, "float32"), pages.copy(), indptr, src_dst, 3)[0]
    want = pages.copy()
    keys, old_keys = _key_view(want), _key_view(pages)
    for src, dst in src_dst.T:
        keys[dst // PAGE_SIZE, :, dst % PAGE_SIZE] = old_keys[src // PAGE_SIZE, :, src % PAGE_SIZE]
        want[dst // PAGE_SIZE, 1, :, dst % PAGE_SIZE] = pages[src // PAGE_SIZE, 1, :, src % PAGE_SIZE]
    np.testing.assert_array_equal(got, want)


def test_tree_attention_is_refused_in_one_line():
    target = get_preset("llvm").tvm_target(BuildOptions())
    run = tvm.compile(tvm.IRModule({"main": tree_attention_refusal()}), target=target)["tree_attn_paged_kv_cpu"]
    handles = [tvm.runtime.tensor(np.zeros(1, "int32")) for _ in range(16)]
    with pytest.raises(Exception, match="does not support tree attention"):
        run(*handles[:10], 0, 1.0, 1e4, 1.0, *handles[10:12])
