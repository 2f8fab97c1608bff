"""lowbit's CPU layout of the paged KV cache's pages, and the kernels that write, copy and read it.

TVM allocates each layer's pages as ``[num_pages, 2, h_kv, PAGE_SIZE, d]`` (keys, then values,
per head one slot of ``d`` per token). On CPU targets lowbit keeps that shape and the values'
layout but stores each page's keys **transposed**: the key half of page ``p`` for head ``h`` is
``d`` runs of ``PAGE_SIZE`` tokens, so dimension ``j`` of the key in slot ``o`` sits at

    (p · 2 · h_kv + h) · PAGE_SIZE · d + j · PAGE_SIZE + o        (elements from the pages' start)

A page's 16 keys are then, per head dimension, one contiguous vector: the attention kernels
(:mod:`.attention_cpu`) take 16 scores per dimension in broadcast multiply-adds, with no lane
reductions and no transposing copy.

The kernels here replace TVM's where it reads or writes keys in the pages: the append of new
tokens (``tir_kv_cache_transpose_append``), the page copy of a fork (``copy_single_page_cpu``),
the compaction that moves tokens within the pages (``compact_kv_copy_cpu``) and the debug read
(``tir_kv_cache_debug_get_kv``). Their arguments are TVM's. TVM's tree attention over the pages
(speculative decoding's token trees, ``tree_attn_paged_kv_cpu``) is replaced by a kernel that
refuses in one line.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

PAGE_SIZE = 16  # TVM's CPU attention kernels' page size, which the runtime allocates
LOWBIT_KERNEL = "lowbit.kernel"  # attribute marking lowbit's kernels


def key_at(page, head, slot, j, d: int) -> tuple:
    """Index into the ``[pages, 2, h_kv, PAGE_SIZE, d]`` buffer of dimension ``j`` of the key in
    ``slot`` of ``page`` for ``head``: element ``j · 16 + slot`` of the page's key block. Where
    16 divides ``d`` a run of 16 slots stays in one row, so the slots are one vector."""
    if d % PAGE_SIZE == 0:
        runs = d // PAGE_SIZE  # runs of 16 slots per row of the block
        return page, 0, head, j // runs, j % runs * PAGE_SIZE + slot
    at = j * PAGE_SIZE + slot
    return page, 0, head, at // d, at % d


def _attrs(symbol: str) -> dict:
    return {"global_symbol": symbol, "tirx.noalias": True, "tirx.is_scheduled": True, LOWBIT_KERNEL: True}


def append_kernel(h_kv: int, d: int, dtype: str) -> tirx.PrimFunc:
    """TVM's ``tir_kv_cache_transpose_append``: token ``t``'s key and value go to slot
    ``position_map[t]`` (page ``pos // 16``, slot ``pos % 16``); position -1 skips the token."""

    @T.prim_func
    def kernel(pages_handle: T.handle, k_handle: T.handle, v_handle: T.handle, position_map_handle: T.handle):
        T.func_attr(_attrs("tir_kv_cache_transpose_append"))
        ntoken = T.int64()
        num_pages = T.int64()
        pages_off = T.int64()
        pm_off = T.int32()
        pages = T.match_buffer(pages_handle, (num_pages, 2, h_kv, PAGE_SIZE, d), dtype, elem_offset=pages_off)
        k = T.match_buffer(k_handle, (ntoken, h_kv, d), dtype)
        v = T.match_buffer(v_handle, (ntoken, h_kv, d), dtype)
        position_map = T.match_buffer(position_map_handle, (ntoken,), "int32", elem_offset=pm_off)
        for t in T.serial(ntoken):
            pos: T.let[T.int32] = position_map[t]
            if pos != -1:
                for h in T.serial(h_kv):
                    for j in T.serial(d):
                        pages[key_at(pos // PAGE_SIZE, h, pos % PAGE_SIZE, j, d)] = k[t, h, j]
                    for j in T.vectorized(d):
                        pages[pos // PAGE_SIZE, 1, h, pos % PAGE_SIZE, j] = v[t, h, j]

    return kernel


def copy_page_kernel(h_kv: int, d: int, dtype: str) -> tirx.PrimFunc:
    """TVM's ``copy_single_page_cpu``: the first ``copy_length`` slots of page ``src`` to page
    ``tgt`` (a forked sequence's partly filled last page)."""

    @T.prim_func
    def kernel(pages_handle: T.handle, src: T.int64, tgt: T.int64, copy_length: T.int64):
        T.func_attr(_attrs("copy_single_page_cpu"))
        num_pages = T.int32()
        pages = T.match_buffer(pages_handle, (num_pages, 2, h_kv, PAGE_SIZE, d), dtype)
        for h, o in T.grid(h_kv, copy_length):
            for j in T.serial(d):
                pages[key_at(tgt, h, o, j, d)] = pages[key_at(src, h, o, j, d)]
            for j in T.vectorized(d):
                pages[tgt, 1, h, o, j] = pages[src, 1, h, o, j]

    return kernel


def compact_kernel(h_kv: int, d: int, dtype: str) -> tirx.PrimFunc:
    """TVM's ``compact_kv_copy_cpu``: for each sequence ``b``, the slots listed in
    ``copy_src_dst_pos[:, indptr[b] : indptr[b + 1]]`` (source, destination positions) move."""

    @T.prim_func
    def kernel(pages_handle: T.handle, indptr_handle: T.handle, src_dst_handle: T.handle, batch_size: T.int32):
        T.func_attr(_attrs("compact_kv_copy_cpu"))
        num_pages = T.int32()
        total = T.int32()
        indptr_off = T.int32()
        src_dst_off = T.int32()
        pages = T.match_buffer(pages_handle, (num_pages, 2, h_kv, PAGE_SIZE, d), dtype)
        indptr = T.match_buffer(indptr_handle, (batch_size + 1,), "int32", elem_offset=indptr_off)
        src_dst = T.match_buffer(src_dst_handle, (2, total), "int32", elem_offset=src_dst_off)
        for b in T.serial(batch_size):
            for i in T.serial(indptr[b + 1] - indptr[b]):
                src: T.let[T.int32] = src_dst[0, indptr[b] + i]
                dst: T.let[T.int32] = src_dst[1, indptr[b] + i]
                for h in T.serial(h_kv):
                    for j in T.serial(d):
                        pages[key_at(dst // PAGE_SIZE, h, dst % PAGE_SIZE, j, d)] = pages[
                            key_at(src // PAGE_SIZE, h, src % PAGE_SIZE, j, d)]
                    for j in T.vectorized(d):
                        pages[dst // PAGE_SIZE, 1, h, dst % PAGE_SIZE, j] = pages[src // PAGE_SIZE, 1, h, src % PAGE_SIZE, j]

    return kernel


def debug_get_kv_kernel(layers: int, h_kv: int, d: int, dtype: str) -> tirx.PrimFunc:
    """TVM's ``tir_kv_cache_debug_get_kv``: layer ``layer_id``'s keys and values of the
    positions in ``position_map``, in token order."""

    @T.prim_func
    def kernel(pages_handle: T.handle, position_map_handle: T.handle, k_handle: T.handle,
               v_handle: T.handle, layer_id: T.int64):
        T.func_attr(_attrs("tir_kv_cache_debug_get_kv"))
        seqlen = T.int64()
        num_pages = T.int64()
        pages_off = T.int64()
        pm_off = T.int64()
        pages = T.match_buffer(pages_handle, (num_pages, 2, h_kv, PAGE_SIZE, d), dtype, elem_offset=pages_off)
        position_map = T.match_buffer(position_map_handle, (seqlen,), "int32", elem_offset=pm_off)
        k = T.match_buffer(k_handle, (layers, seqlen, h_kv, d), dtype)
        v = T.match_buffer(v_handle, (layers, seqlen, h_kv, d), dtype)
        for t, h in T.grid(seqlen, h_kv):
            pos: T.let[T.int32] = position_map[t]
            for j in T.serial(d):
                k[layer_id, t, h, j] = pages[key_at(pos // PAGE_SIZE, h, pos % PAGE_SIZE, j, d)]
                v[layer_id, t, h, j] = pages[pos // PAGE_SIZE, 1, h, pos % PAGE_SIZE, j]

    return kernel


def tree_attention_refusal() -> tirx.PrimFunc:
    """In place of TVM's ``tree_attn_paged_kv_cpu``, which reads keys in TVM's layout: the same
    arguments, and a one-line error if the runtime calls it."""

    @T.prim_func
    def kernel(q: T.handle, q_indptr: T.handle, pages: T.handle, page_indptr: T.handle,
               page_values: T.handle, length_info: T.handle, k_rope_pos_offset: T.handle,
               q_rope_position: T.handle, output: T.handle, lse: T.handle, rotary_mode: T.int32,
               rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
               tree_order_indptr: T.handle, tree_order: T.handle):
        T.func_attr(_attrs("tree_attn_paged_kv_cpu"))
        assert T.bool(False), "lowbit's CPU KV cache does not support tree attention (speculative decoding)"

    return kernel


def page_kernels(layers: int, h_kv: int, d: int, dtype: str) -> dict:
    """TVM's kernels that touch keys in the pages, by global symbol, and lowbit's for each."""
    return {
        "tir_kv_cache_transpose_append": lambda: append_kernel(h_kv, d, dtype),
        "copy_single_page_cpu": lambda: copy_page_kernel(h_kv, d, dtype),
        "compact_kv_copy_cpu": lambda: compact_kernel(h_kv, d, dtype),
        "tir_kv_cache_debug_get_kv": lambda: debug_get_kv_kernel(layers, h_kv, d, dtype),
        "tree_attn_paged_kv_cpu": tree_attention_refusal,
    }
