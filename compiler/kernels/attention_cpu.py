"""lowbit's CPU attention kernels for TVM's paged KV cache, in place of TVM's scalar ones.

TVM's CPU decode kernel loops over sequences and query heads one score at a time, on one core.
This one runs each (sequence, KV head) pair as one parallel task, loads each key and value row
once for the query heads that share it (GQA), takes the q·k products in fp32 vector lanes, and
updates the online softmax once per tile of 16 keys. The arguments, the key addressing (pages,
the last page's length, a sliding window's start and sink) and the outputs (``output``, and
``lse`` in log2 units of the ``sm_scale``-scaled scores, which the cache's merge kernel reads)
are TVM's, so the runtime calls it unchanged.
"""

from __future__ import annotations

import math

from tvm import IRModule, tirx
from tvm.script import tirx as T

from lowbit.errors import LowbitError

LOG2E = math.log2(math.e)
PAGE_SIZE = 16  # TVM's CPU attention kernels' page size, which the runtime allocates
LOWBIT_KERNEL = "lowbit.kernel"  # attribute marking the kernels below

TILE = 16  # key rows per online-softmax update
LANES = 8  # fp32 lanes of the q·k partial sums


def decode_kernel(h_kv: int, h_q: int, d: int, dtype: str, sliding: bool, softcap: float = 0.0) -> tirx.PrimFunc:
    """TVM's ``batch_decode_paged_kv_cpu`` (``sliding``: ``…_sliding_window``, whose
    ``length_info`` is [3, B]: last page length, window start, sink length), with its arguments,
    outputs (``output``, and ``lse`` in log2 units of the ``sm_scale``-scaled scores) and an
    empty sequence's result (zeros, lse -5e4); scores capped at ``softcap`` when it is set."""
    group, chunks, cap = h_q // h_kv, d // LANES, softcap * LOG2E
    if d % LANES:
        raise LowbitError(f"lowbit's CPU attention needs head_dim divisible by {LANES}, got {d}")

    @T.prim_func
    def kernel(Q_handle: T.handle, pages_handle: T.handle, page_indptr_handle: T.handle,
               page_values_handle: T.handle, length_info_handle: T.handle,
               k_rope_pos_offset_handle: T.handle, q_rope_position_handle: T.handle,
               output_handle: T.handle, lse_handle: T.handle, rotary_mode: T.int32,
               rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"global_symbol": "lowbit_attention_decode_cpu", "tirx.noalias": True,
                     "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        pi_off = T.int32()
        pv_off = T.int32()
        li_off = T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, PAGE_SIZE, d), dtype)
        page_indptr = T.match_buffer(page_indptr_handle, (B + 1,), "int32", elem_offset=pi_off)
        page_values = T.match_buffer(page_values_handle, (nnz_pages,), "int32", elem_offset=pv_off)
        length_info = T.match_buffer(length_info_handle, (3, B) if sliding else (B,), "int32", elem_offset=li_off)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        assert rotary_mode == 0, "lowbit's CPU attention takes keys already rotated (no inline RoPE)"
        for bh in T.parallel(B * h_kv):
            q = T.decl_buffer((group, d), "float32")
            acc = T.decl_buffer((group, d), "float32")
            m = T.decl_buffer((group,), "float32")
            den = T.decl_buffer((group,), "float32")
            sc = T.decl_buffer((group, TILE), "float32")
            part = T.decl_buffer((LANES,), "float32")
            loc = T.decl_buffer((TILE, 2), "int32")
            b: T.int32 = bh // h_kv
            hk: T.int32 = bh % h_kv
            first: T.int32 = page_indptr[b]
            n_pages: T.int32 = page_indptr[b + 1] - first
            last_len: T.int32 = length_info[0, b] if sliding else length_info[b]
            window_start: T.int32 = length_info[1, b] if sliding else 0
            sink: T.int32 = length_info[2, b] if sliding else 0
            kv_len: T.int32 = T.if_then_else(n_pages > 0, (n_pages - 1) * PAGE_SIZE + last_len - window_start + sink, 0)
            for g in T.serial(group):
                m[g] = T.float32(-5e4)
                den[g] = T.float32(1.0)
                for j in T.vectorized(d):
                    q[g, j] = T.cast(Q[b, hk * group + g, j], "float32") * (sm_scale * T.float32(LOG2E))
                    acc[g, j] = T.float32(0)
            for tile in T.serial((kv_len + TILE - 1) // TILE):
                rows: T.int32 = T.min(TILE, kv_len - tile * TILE)
                for r in T.serial(rows):
                    pos: T.int32 = tile * TILE + r
                    seq_pos: T.int32 = T.if_then_else(pos < sink, pos, pos - sink + window_start)
                    loc[r, 0] = page_values[first + seq_pos // PAGE_SIZE]
                    loc[r, 1] = seq_pos % PAGE_SIZE
                for g in T.serial(group):
                    for r in T.serial(rows):
                        for lane in T.vectorized(LANES):
                            part[lane] = T.float32(0)
                        for c in T.serial(chunks):
                            for lane in T.vectorized(LANES):
                                part[lane] = part[lane] + q[g, c * LANES + lane] * T.cast(pages[loc[r, 0], 0, hk, loc[r, 1], c * LANES + lane], "float32")
                        sc[g, r] = T.float32(0)
                        for lane in T.serial(LANES):
                            sc[g, r] = sc[g, r] + part[lane]
                        if cap > 0:
                            sc[g, r] = T.float32(cap) * T.tanh(sc[g, r] / T.float32(cap))
                for g in T.serial(group):
                    tile_max: T.float32 = m[g]
                    for r in T.serial(rows):
                        tile_max = T.max(tile_max, sc[g, r])
                    scale: T.float32 = T.exp2(m[g] - tile_max)
                    den[g] = den[g] * scale
                    for j in T.vectorized(d):
                        acc[g, j] = acc[g, j] * scale
                    m[g] = tile_max
                    for r in T.serial(rows):
                        p: T.float32 = T.exp2(sc[g, r] - tile_max)
                        den[g] = den[g] + p
                        for j in T.vectorized(d):
                            acc[g, j] = acc[g, j] + p * T.cast(pages[loc[r, 0], 1, hk, loc[r, 1], j], "float32")
            for g in T.serial(group):
                for j in T.vectorized(d):
                    output[b, hk * group + g, j] = T.cast(acc[g, j] / den[g], dtype)
                lse[b, hk * group + g] = m[g] + T.log2(den[g])
    return kernel


# TVM's CPU decode kernels in the exported module, by global symbol: whether it is the sliding-window variant
TVM_DECODE_KERNELS = {"batch_decode_paged_kv_cpu": False, "batch_decode_paged_kv_cpu_sliding_window": True}


def use_lowbit_attention(mod: IRModule, h_kv: int, h_q: int, d: int, dtype: str, softcap: float = 0.0) -> IRModule:
    """``mod`` (an exported model with a paged KV cache) with TVM's CPU decode kernels replaced
    by :func:`decode_kernel`."""
    found = {gv: TVM_DECODE_KERNELS[f.attrs["global_symbol"]] for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and f.attrs and f.attrs.get("global_symbol") in TVM_DECODE_KERNELS}
    if len(found) != len(TVM_DECODE_KERNELS):
        raise LowbitError("the module lacks TVM's CPU decode-attention kernels (TVM's KV cache changed)")
    for gv, sliding in found.items():
        kernel = decode_kernel(h_kv, h_q, d, dtype, sliding, softcap)
        mod[gv] = kernel.with_attr("global_symbol", mod[gv].attrs["global_symbol"])
    return mod
