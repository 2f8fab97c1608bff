"""lowbit's CPU attention kernels for TVM's paged KV cache, in place of TVM's scalar ones.

TVM's CPU kernels (decode, prefill over the cached pages, prefill within a chunk) loop over
sequences and query heads one score at a time, on one core. Here each (KV head, tile of up to 4
query rows of one sequence) is one parallel task (decode: each (KV head, chunk of 64 keys of one
sequence), the chunks' results merged by their lse afterwards, so a long context spreads over
every core; a KV head's chunks are consecutive tasks, so a core reads one head's pages in order),
and the query heads that share a key head (GQA) go together:

* the cache's pages hold their keys transposed (:mod:`.kv_pages_cpu`: per head dimension, a
  page's 16 keys side by side), so a task takes a tile's 16 scores per head dimension for blocks
  of query vectors in broadcast multiply-adds: each key load serves every query and no sum needs
  a lane reduction, and :data:`SCORE_CHAINS` partial sums per query keep the multiply-adds in
  flight. Tiles start on page boundaries and read the pages directly; where a sliding
  window moves keys off them, the keys in window order are copied first (prefill: once per
  call; decode: per 64-key chunk). The chunk's own keys (prefill within a chunk) are copied once
  per call, in fp32, into the pages' layout (a [head_dim, 16] block per tile). Decode prefetches
  the next page's key and value blocks into L2 while it works on a tile: a head's part of a page is
  two blocks of 16 × head_dim, h_kv blocks apart, runs too short for the hardware prefetcher to
  follow from page to page;
* causal prefill hands out its row tiles longest and shortest in turn (:func:`_zigzag`), so the
  parallel loop's contiguous ranges of tasks carry equal work;
* prefill shares each value row between query vectors where the target's registers allow
  (:data:`VALUE_BLOCKS`);
* the online softmax is updated once per tile of 16 keys, its exponentials vectorised
  (:func:`.vector_math.exp2`) and its running sums kept per lane.

The arguments, the key addressing (pages, the last page's length, a sliding window's start and
sink), the masks and the outputs (``output``, and ``lse`` in log2 units of the ``sm_scale``-scaled
scores, which the cache's merge kernel reads) are TVM's, so the runtime calls them unchanged. The
cache may hold fp16 (``--kv-cache-dtype float16``): every kernel computes in fp32. A query that
sees no key gets zeros and lse -5e4, which the merge weighs 0. A head_dim that is not a multiple
of the vector lanes keeps TVM's kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tvm import DataType, IRModule, tirx
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.compiler.kernels.kv_pages_cpu import LOWBIT_KERNEL, PAGE_SIZE, key_at, page_kernels
from lowbit.compiler.kernels.vector_math import LOG2E, exp2
from lowbit.errors import LowbitError

TILE = 16  # key rows per online-softmax update
LANES = 8  # fp32 lanes of a vector register: head_dim must be whole vectors
MASKED = -5e4  # TVM's initial running maximum (log2 units): a query that sees no key keeps it
ROW_TILE = 4  # prefill query rows (of one sequence) per task: each key row read once for all
CHUNK_PAGES = 4  # decode: keys per parallel task (split-K), in pages
CHUNK = CHUNK_PAGES * PAGE_SIZE
QB_MAX = 6  # prefill: query vectors per block of the score product (≤ 6 × 16 scores: 12 AVX2 registers)
# prefill: query vectors sharing each value row, by llvm ``mcpu``. With AVX-512, two vectors' 64
# accumulators (8 zmm) keep 8 multiply-add chains in flight where one vector's 4 stall on latency;
# with AVX2 one vector's 8 ymm already do and two spill. At the bundled model's shapes (2,048
# keys): 66 vs 60 GFLOP/s on AVX-512, 48 vs 58 with AVX2 code.
VALUE_BLOCKS = {"x86-64-v4": 2}
# decode: fp32 accumulators that query vectors sharing each value row may keep in registers, by
# ``mcpu`` (AVX-512: 24 of the 32 zmm). Sharing a row between all three query heads of the
# bundled model's group took a 4,096-key decode from 350 to 312 µs (head_dim 64) and 465 to
# 431 µs (128) with AVX-512; AVX2 code lost (276 → 287, 544 → 691 µs): its 16 ymm spill.
DECODE_VALUE_FLOATS = {"x86-64-v4": 24 * 16}
# partial sums per query vector in the score product, by ``mcpu``: each multiply-add chain waits on
# its own last result, so more chains keep more in flight. With AVX-512's 32 registers two fit beside
# prefill's 6 query vectors; a 2,000-key decode (head_dim 64, fp16) took 80 → 74 µs from cache,
# 143 → 138 µs from DRAM. AVX2's 16 registers have no room.
SCORE_CHAINS = {"x86-64-v4": 2}
# TVM 0.27's system-lib build (a static archive: `lowbit package`, the apps) rejects a call that
# returns void, as llvm.prefetch does (AttachGlobalSymbol: "Cannot treat type `ir.Call` as type
# `ir.Expr`"), so such builds decode without the prefetch.
_prefetch: ContextVar[bool] = ContextVar("lowbit_attention_prefetch", default=True)


@contextmanager
def attention_prefetch(enabled: bool) -> Iterator[None]:
    """Within the block, the decode attention built for a model prefetches (``enabled``) or not."""
    token = _prefetch.set(enabled)
    try:
        yield
    finally:
        _prefetch.reset(token)


def _query_block(nq: int) -> int:
    """Query vectors per block of the transposed score product: the largest divisor of ``nq`` up
    to :data:`QB_MAX`, so no block is padding."""
    return max(b for b in range(1, QB_MAX + 1) if nq % b == 0)


def _decode_value_block(group: int, d: int, floats: int) -> int:
    """Query vectors of a decode group sharing each value row: the largest divisor of ``group``
    whose accumulators (``pv · d`` floats) fit in ``floats``, at least 1."""
    return max(pv for pv in range(1, group + 1) if group % pv == 0 and (pv == 1 or pv * d <= floats))


def _value_block(nq: int, pv: int) -> int:
    """``pv`` where it divides the ``nq`` query vectors, else 1."""
    return pv if nq % pv == 0 else 1


@T.macro
def _attend_rows(Q, output, lse, t0, o0, n, lo_of, hi_of, hk, loc0, loc1, key, value, sm_scale,
                 group, d, cap, qt, qb, pv, sp, ahead):
    """Attention of the query heads ``hk·group …`` of the ``n`` (≤ ``qt``) rows ``t0 …`` of
    one sequence, row ``i`` over key positions [lo_of(i), hi_of(i)): each key row is read once
    for all of them. ``loc0(pos)``/``loc1(pos)`` locate a key and ``value(l0, l1, j)`` reads its
    value. Writes rows ``o0 …`` of ``output`` and ``lse`` (log2 units, TVM's).

    Query vector ``h`` is head ``h % group`` of row ``h // group`` (``qt · group`` of them, past
    ``n`` rows padding that sees no key). ``key(j, base, r)`` reads dimension ``j`` of key
    ``base + r`` from keys stored transposed (``r`` a vector lane of the tile from ``base``), so
    each block of ``qb`` (:func:`_query_block`) query vectors takes 16 scores per head dimension
    in broadcast multiply-adds: the key loads serve every query and the sums need no lane
    reduction; ``sp`` partial sums per query vector (:data:`SCORE_CHAINS`). Blocks of ``pv`` query
    vectors (:data:`VALUE_BLOCKS`) share each value row. ``ahead`` (decode), when not None, is
    ``(lines, address(half, pos, line), end)``: before each tile, the ``lines`` cache lines of the
    key (half 0) and value (half 1) blocks of key ``base + TILE`` are prefetched, while it is below
    ``end``."""
    q = T.decl_buffer((qt * group, d), "float32")
    acc = T.decl_buffer((qt * group, d), "float32")
    m = T.decl_buffer((qt * group,), "float32")
    den = T.decl_buffer((qt * group, TILE), "float32")  # per lane: summed once, at the end
    sc = T.decl_buffer((qt * group, TILE), "float32")
    part = T.decl_buffer((sp * qb, TILE), "float32")
    red = T.decl_buffer((TILE // 2,), "float32")
    loc = T.decl_buffer((TILE, 2), "int32")
    span = T.decl_buffer((qt * group, 2), "int32")
    scan = T.decl_buffer((2,), "int32")
    scan[0] = lo_of(0)
    scan[1] = hi_of(0)
    for h in T.serial(qt * group):
        m[h] = T.float32(MASKED)
        for r in T.vectorized(TILE):  # TVM's running sum starts at 1 (a no-key row: lse -5e4)
            den[h, r] = T.Select(r == 0, T.float32(1.0), T.float32(0))
        if h < n * group:
            span[h, 0] = lo_of(h // group)
            span[h, 1] = T.max(hi_of(h // group), span[h, 0])
            scan[0] = T.min(scan[0], span[h, 0])
            scan[1] = T.max(scan[1], span[h, 1])
            for j in T.vectorized(d):
                q[h, j] = T.cast(Q[t0 + h // group, hk * group + h % group, j], "float32") * (sm_scale * T.float32(LOG2E))
                acc[h, j] = T.float32(0)
        else:  # padding: sees no key
            span[h, 0] = 0
            span[h, 1] = 0
            for j in T.vectorized(d):
                q[h, j] = T.float32(0)
                acc[h, j] = T.float32(0)
    for tile in T.serial((scan[1] - scan[0] + TILE - 1) // TILE):
        base: T.let[T.int32] = scan[0] + tile * TILE
        rows: T.let[T.int32] = T.min(TILE, scan[1] - base)
        if ahead is not None:  # the next tile's key and value blocks, into L2 (read, locality 2)
            if base + TILE < ahead[2]:
                for line in T.serial(ahead[0]):
                    for half in T.unroll(2):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch", ahead[1](half, base + TILE, line),
                                                      T.int32(0), T.int32(2), T.int32(1)))
        for r in T.serial(TILE):
            loc[r, 0] = loc0(base + T.min(r, rows - 1))  # past the last key: the last one, masked
            loc[r, 1] = loc1(base + T.min(r, rows - 1))
        for blk in T.serial(qt * group // qb):
            for c in T.unroll(sp * qb):
                for r in T.vectorized(TILE):
                    part[c, r] = T.float32(0)
            for j0 in T.serial(d // sp):  # sp partial sums per query vector: independent FMA chains
                for s in T.unroll(sp):
                    for i in T.unroll(qb):
                        for r in T.vectorized(TILE):
                            part[s * qb + i, r] = part[s * qb + i, r] + q[blk * qb + i, j0 * sp + s] * T.cast(
                                key(j0 * sp + s, base, r), "float32")
            for i in T.unroll(qb):
                for r in T.vectorized(TILE):
                    sc[blk * qb + i, r] = part[i, r]
                for s in T.unroll(1, sp):
                    for r in T.vectorized(TILE):
                        sc[blk * qb + i, r] = sc[blk * qb + i, r] + part[s * qb + i, r]
        for h in T.serial(qt * group):
            for r in T.vectorized(TILE):  # outside the row's mask (or past the tile's keys): weight 0
                sc[h, r] = T.Select(base + r >= span[h, 0] and base + r < span[h, 1],
                                    T.float32(cap) * T.tanh(sc[h, r] / T.float32(cap)) if cap > 0 else sc[h, r],
                                    T.float32(-1e30))
            for r in T.vectorized(TILE // 2):  # the tile's largest score: a tree, 4 steps
                red[r] = T.max(sc[h, r], sc[h, r + TILE // 2])
            for r in T.vectorized(TILE // 4):
                red[r] = T.max(red[r], red[r + TILE // 4])
            for r in T.vectorized(TILE // 8):
                red[r] = T.max(red[r], red[r + TILE // 8])
            tile_max: T.let[T.float32] = T.max(m[h], T.max(red[0], red[1]))
            scale: T.let[T.float32] = exp2(m[h] - tile_max)
            m[h] = tile_max
            for r in T.vectorized(TILE):
                sc[h, r] = exp2(sc[h, r] - tile_max)
                den[h, r] = den[h, r] * scale + sc[h, r]
            for j in T.vectorized(d):
                acc[h, j] = acc[h, j] * scale
        for hp in T.serial(qt * group // pv):  # pv query vectors share each value row
            for r in T.serial(rows):
                for i in T.unroll(pv):
                    for j in T.vectorized(d):
                        acc[hp * pv + i, j] = acc[hp * pv + i, j] + sc[hp * pv + i, r] * T.cast(
                            value(loc[r, 0], loc[r, 1], j), "float32")
    for h in T.serial(n * group):
        for r in T.vectorized(TILE // 2):  # the weights' sum: a tree over the lanes
            red[r] = den[h, r] + den[h, r + TILE // 2]
        for r in T.vectorized(TILE // 4):
            red[r] = red[r] + red[r + TILE // 4]
        for r in T.vectorized(TILE // 8):
            red[r] = red[r] + red[r + TILE // 8]
        total: T.let[T.float32] = red[0] + red[1]
        for j in T.vectorized(d):
            output[o0 + h // group, hk * group + h % group, j] = T.cast(acc[h, j] / total, output.dtype)
        lse[o0 + h // group, hk * group + h % group] = m[h] + T.log2(total)


@T.macro
def _merge_chunks(part_out, part_lse, slot0, count, output, lse, b, h, d):
    """Head ``h`` of sequence ``b`` from its ``count`` chunks' normalised outputs and lse (log2)
    in slots ``slot0 …``: weights ``2^(lse_c − L)``, ``L`` their largest lse; zeros and lse -5e4
    when there is no key."""
    top = T.decl_buffer((2,), "float32")  # largest lse, then the sum of the weights
    merged = T.decl_buffer((d,), "float32")
    top[0] = T.float32(MASKED)
    top[1] = T.float32(0)
    for j in T.vectorized(d):
        merged[j] = T.float32(0)
    for c in T.serial(count):
        top[0] = T.max(top[0], part_lse[slot0 + c, h])
    for c in T.serial(count):
        weight: T.let[T.float32] = T.exp2(part_lse[slot0 + c, h] - top[0])
        top[1] = top[1] + weight
        for j in T.vectorized(d):
            merged[j] = merged[j] + weight * part_out[slot0 + c, h, j]
    if count > 0:
        for j in T.vectorized(d):
            output[b, h, j] = T.cast(merged[j] / top[1], output.dtype)
        lse[b, h] = top[0] + T.log2(top[1])
    else:
        for j in T.vectorized(d):
            output[b, h, j] = T.cast(T.float32(0), output.dtype)
        lse[b, h] = T.float32(MASKED)


@T.macro
def _tile_of(indptr, batch_size, tile, found):
    """``found``: (sequence, tile within it) of global row tile ``tile``, where sequence ``b``
    has ``ceil((indptr[b + 1] - indptr[b]) / ROW_TILE)`` tiles; (-1, 0) past the last one."""
    found[0] = -1
    found[1] = 0
    first = T.decl_buffer((1,), "int32")
    first[0] = 0
    for b in T.serial(batch_size):
        n: T.let[T.int32] = (indptr[b + 1] - indptr[b] + ROW_TILE - 1) // ROW_TILE
        if found[0] < 0 and tile < first[0] + n:
            found[0] = b
            found[1] = tile - first[0]
        first[0] = first[0] + n


def _chunk_tile(kv_indptr, b, pos):
    """The block of a chunk's copied keys that holds key ``pos`` of sequence ``b``: sequence b's
    blocks start at ``kv_indptr[b] // TILE + b``, past every block of the sequences before it."""
    return kv_indptr[b] // TILE + b + pos // TILE


def _zigzag(t, n):
    """The row tile that task ``t`` of ``n`` takes: 0, n − 1, 1, n − 2, … A causal row tile's work
    grows with its row, and the parallel loop gives each thread a contiguous range of tasks, so in
    row order the last thread got the longest rows (with 2 threads, 3/4 of the work)."""
    return T.if_then_else(t % 2 == 0, t // 2, n - 1 - t // 2)


def _kv_len(n_pages, last_len, window_start, sink):
    """Keys a sequence attends in its pages: TVM's ``_get_kv_chunk_len``."""
    return T.if_then_else(n_pages > 0, (n_pages - 1) * PAGE_SIZE + last_len - window_start + sink, 0)


def _seq_kv_len(page_indptr, length_info, b, sliding: bool):
    """:func:`_kv_len` of sequence ``b`` of a batch (``sliding``: ``length_info`` [3, B])."""
    if sliding:
        return _kv_len(page_indptr[b + 1] - page_indptr[b], length_info[0, b], length_info[1, b], length_info[2, b])
    return _kv_len(page_indptr[b + 1] - page_indptr[b], length_info[b], 0, 0)


def _seq_pos(pos, window_start, sink):
    """Where key ``pos`` sits in the sequence's pages: the sink, then the window."""
    return T.if_then_else(pos < sink, pos, pos - sink + window_start)


def _check_dims(d: int) -> None:
    if d % LANES:
        raise LowbitError(f"lowbit's CPU attention needs head_dim divisible by {LANES}, got {d}")


def decode_kernel(h_kv: int, h_q: int, d: int, dtype: str, sliding: bool, softcap: float = 0.0,
                  pv: int = 1, sp: int = 1, prefetch: bool = True) -> tirx.PrimFunc:
    """TVM's ``batch_decode_paged_kv_cpu`` (``sliding``: ``…_sliding_window``, whose
    ``length_info`` is [3, B]: last page length, window start, sink length), with its arguments,
    outputs (``output``, and ``lse`` in log2 units of the ``sm_scale``-scaled scores) and an
    empty sequence's result (zeros, lse -5e4); scores capped at ``softcap`` when it is set;
    ``pv`` query vectors of a group share each value row (:data:`DECODE_VALUE_FLOATS`); ``sp``
    partial sums per query vector (:data:`SCORE_CHAINS`); ``prefetch``: the next page's blocks
    prefetched (:func:`attention_prefetch`)."""
    _check_dims(d)
    group, cap = h_q // h_kv, softcap * LOG2E
    qb, pv = _query_block(group), _value_block(group, pv)
    line_elems = 64 // (DataType(dtype).bits // 8)  # elements per cache line
    block_lines = PAGE_SIZE * d // line_elems  # a page's key (value) block of one head

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
        # chunk c of sequence b is task row chunk0[b] + c; a sequence of p pages has at most
        # ceil(p / CHUNK_PAGES) chunks, so nnz_pages / CHUNK_PAGES + B rows hold them all
        chunk0 = T.alloc_buffer((B + 1,), "int32")
        part_out = T.alloc_buffer((nnz_pages // CHUNK_PAGES + B, h_q, d), "float32")
        part_lse = T.alloc_buffer((nnz_pages // CHUNK_PAGES + B, h_q), "float32")
        chunk0[0] = 0
        for b in T.serial(B):
            chunk0[b + 1] = chunk0[b] + (_seq_kv_len(page_indptr, length_info, b, sliding) + CHUNK - 1) // CHUNK
        chunks: T.let[T.int32] = chunk0[B]
        for task in T.parallel(chunks * h_kv):
            row: T.let[T.int32] = task % chunks
            hk: T.let[T.int32] = task // chunks
            for b in T.serial(B):
                if row >= chunk0[b] and row < chunk0[b + 1]:
                    first: T.let[T.int32] = page_indptr[b]
                    window_start: T.let[T.int32] = length_info[1, b] if sliding else 0
                    sink: T.let[T.int32] = length_info[2, b] if sliding else 0
                    kv_len: T.let[T.int32] = _seq_kv_len(page_indptr, length_info, b, sliding)
                    lo: T.let[T.int32] = (row - chunk0[b]) * CHUNK
                    hi: T.let[T.int32] = T.min(kv_len, lo + CHUNK)
                    if sliding:  # the window moves keys off page boundaries: the chunk's keys, copied
                        staged = T.decl_buffer((d, CHUNK), dtype)
                        for pos in T.serial(lo, hi):
                            at: T.let[T.int32] = _seq_pos(pos, window_start, sink)
                            for j in T.serial(d):
                                staged[j, pos - lo] = pages[key_at(page_values[first + at // PAGE_SIZE], hk,
                                                                   at % PAGE_SIZE, j, d)]
                        _attend_rows(Q, part_out, part_lse, b, row, 1, lambda i: lo, lambda i: hi, hk,
                                     lambda pos: page_values[first + _seq_pos(pos, window_start, sink) // PAGE_SIZE],
                                     lambda pos: _seq_pos(pos, window_start, sink) % PAGE_SIZE,
                                     lambda j, base, r: staged[j, base - lo + r],
                                     lambda page, off, j: pages[page, 1, hk, off, j],
                                     sm_scale, group, d, cap, 1, qb, pv, sp, None)
                    else:  # tiles start on page boundaries (chunks are whole pages)
                        _attend_rows(Q, part_out, part_lse, b, row, 1, lambda i: lo, lambda i: hi, hk,
                                     lambda pos: page_values[first + pos // PAGE_SIZE],
                                     lambda pos: pos % PAGE_SIZE,
                                     lambda j, base, r: pages[key_at(page_values[first + base // PAGE_SIZE], hk, r, j, d)],
                                     lambda page, off, j: pages[page, 1, hk, off, j],
                                     sm_scale, group, d, cap, 1, qb, pv, sp,
                                     (block_lines, lambda half, pos, line: T.address_of(pages[
                                         page_values[first + pos // PAGE_SIZE], half, hk, line * line_elems // d,
                                         line * line_elems % d]), kv_len) if prefetch else None)
        for bh in T.parallel(B * h_q):
            _merge_chunks(part_out, part_lse, chunk0[bh // h_q], chunk0[bh // h_q + 1] - chunk0[bh // h_q],
                          output, lse, bh // h_q, bh % h_q, d)
    return kernel


def prefill_paged_kernel(h_kv: int, h_q: int, d: int, dtype: str, sliding: bool, window: int = 0,
                         softcap: float = 0.0, pv: int = 1, sp: int = 1) -> tirx.PrimFunc:
    """TVM's ``batch_prefill_paged_kv_cpu`` (``sliding``: ``…_sliding_window`` with the layers'
    ``window``): each query row attends the keys its mask shows, as TVM's
    ``_causal_or_sliding_cross_mask``; a row that sees none gets zeros and lse -5e4."""
    _check_dims(d)
    group, cap, window = h_q // h_kv, softcap * LOG2E, window if sliding else 0
    qb, pv = _query_block(ROW_TILE * group), _value_block(ROW_TILE * group, pv)

    @T.prim_func
    def kernel(q_handle: T.handle, q_indptr_handle: T.handle, pages_handle: T.handle,
               page_indptr_handle: T.handle, page_values_handle: T.handle,
               length_info_handle: T.handle, k_rope_pos_offset_handle: T.handle,
               q_rope_position_handle: T.handle, output_handle: T.handle, lse_handle: T.handle,
               causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32,
               rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"global_symbol": "lowbit_attention_prefill_paged_cpu", "tirx.noalias": True,
                     "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        qi_off = T.int32()
        pi_off = T.int32()
        pv_off = T.int32()
        li_off = T.int32()
        q = T.match_buffer(q_handle, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (batch_size + 1,), "int32", elem_offset=qi_off)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, PAGE_SIZE, d), dtype)
        page_indptr = T.match_buffer(page_indptr_handle, (batch_size + 1,), "int32", elem_offset=pi_off)
        page_values = T.match_buffer(page_values_handle, (nnz_pages,), "int32", elem_offset=pv_off)
        length_info = T.match_buffer(length_info_handle, (3, batch_size) if sliding else (batch_size,),
                                     "int32", elem_offset=li_off)
        output = T.match_buffer(output_handle, (total_len, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (total_len, h_q), "float32")
        assert rotary_mode == 0, "lowbit's CPU attention takes keys already rotated (no inline RoPE)"
        if sliding:
            # the window moves keys off page boundaries: the keys in key order, each sequence's from
            # column page_indptr[b] · 16 (a tile past the last key reads up to TILE - 1 columns on:
            # padding, masked)
            key_t = T.alloc_buffer((h_kv, d, nnz_pages * PAGE_SIZE + TILE), dtype)
            for task in T.parallel(nnz_pages * h_kv):
                hk: T.let[T.int32] = task % h_kv
                slot: T.let[T.int32] = task // h_kv
                for b in T.serial(batch_size):
                    if slot >= page_indptr[b] and slot < page_indptr[b + 1]:
                        kv_len: T.let[T.int32] = _seq_kv_len(page_indptr, length_info, b, sliding)
                        for i in T.serial(PAGE_SIZE):
                            pos: T.let[T.int32] = (slot - page_indptr[b]) * PAGE_SIZE + i
                            if pos < kv_len:
                                at: T.let[T.int32] = _seq_pos(pos, length_info[1, b], length_info[2, b])
                                for j in T.serial(d):
                                    key_t[hk, j, page_indptr[b] * PAGE_SIZE + pos] = pages[key_at(
                                        page_values[page_indptr[b] + at // PAGE_SIZE], hk, at % PAGE_SIZE, j, d)]
        row_tiles: T.let[T.int32] = (total_len + ROW_TILE - 1) // ROW_TILE + batch_size  # an upper bound
        for task in T.parallel(row_tiles * h_kv):
            found = T.decl_buffer((2,), "int32")
            hk: T.let[T.int32] = task % h_kv
            _tile_of(q_indptr, batch_size, _zigzag(task // h_kv, row_tiles), found)
            if found[0] >= 0:
                b: T.let[T.int32] = found[0]
                row0: T.let[T.int32] = found[1] * ROW_TILE
                qo_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                first: T.let[T.int32] = page_indptr[b]
                window_start: T.let[T.int32] = length_info[1, b] if sliding else 0
                sink: T.let[T.int32] = length_info[2, b] if sliding else 0
                kv_len: T.let[T.int32] = _seq_kv_len(page_indptr, length_info, b, sliding)
                windowed: T.let[T.bool] = causal > 0 and window > 0
                plain_causal: T.let[T.bool] = causal > 0 and not windowed
                _attend_rows(q, output, lse, q_indptr[b] + row0, q_indptr[b] + row0, T.min(ROW_TILE, qo_len - row0),
                             lambda i: T.if_then_else(windowed, T.max(kv_len - T.max(window - row0 - i - 1, 0), 0), 0),
                             lambda i: T.if_then_else(plain_causal,
                                                      T.max(T.min(kv_len, kv_len - qo_len + row0 + i + 1), 0), kv_len),
                             hk,
                             lambda pos: page_values[first + _seq_pos(pos, window_start, sink) // PAGE_SIZE],
                             lambda pos: _seq_pos(pos, window_start, sink) % PAGE_SIZE,
                             # without a window, tiles start on page boundaries (the first at key 0)
                             (lambda j, base, r: key_t[hk, j, first * PAGE_SIZE + base + r]) if sliding else
                             (lambda j, base, r: pages[key_at(page_values[first + base // PAGE_SIZE], hk, r, j, d)]),
                             lambda page, off, j: pages[page, 1, hk, off, j],
                             sm_scale, group, d, cap, ROW_TILE, qb, pv, sp, None)
    return kernel


def prefill_ragged_kernel(h_kv: int, h_q: int, d: int, dtype: str, softcap: float = 0.0, pv: int = 1,
                          sp: int = 1) -> tirx.PrimFunc:
    """TVM's ``batch_prefill_ragged_kv`` (a chunk's queries over the chunk's own keys, causal as
    TVM's ``_causal_mask``)."""
    _check_dims(d)
    group, cap = h_q // h_kv, softcap * LOG2E
    qb, pv = _query_block(ROW_TILE * group), _value_block(ROW_TILE * group, pv)

    @T.prim_func
    def kernel(q_handle: T.handle, q_indptr_handle: T.handle, k_handle: T.handle, v_handle: T.handle,
               kv_indptr_handle: T.handle, q_rope_position_handle: T.handle,
               k_rope_pos_offset_handle: T.handle, output_handle: T.handle, lse_handle: T.handle,
               causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32,
               rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"global_symbol": "lowbit_attention_prefill_ragged_cpu", "tirx.noalias": True,
                     "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
        batch_size = T.int32()
        qo_total = T.int32()
        kv_total = T.int32()
        qi_off = T.int32()
        ki_off = T.int32()
        ko_off = T.int32()
        q = T.match_buffer(q_handle, (qo_total, h_q, d), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (batch_size + 1,), "int32", elem_offset=qi_off)
        k = T.match_buffer(k_handle, (kv_total, h_kv, d), dtype)
        v = T.match_buffer(v_handle, (kv_total, h_kv, d), dtype)
        kv_indptr = T.match_buffer(kv_indptr_handle, (batch_size + 1,), "int32", elem_offset=ki_off)
        T.match_buffer(k_rope_pos_offset_handle, (batch_size,), "int32", elem_offset=ko_off)  # binds batch_size
        output = T.match_buffer(output_handle, (qo_total, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (qo_total, h_q), "float32")
        assert rotary_mode == 0, "lowbit's CPU attention takes keys already rotated (no inline RoPE)"
        # the keys in fp32, as the pages hold them: a block [d, TILE] per tile of 16 keys, so a tile's
        # keys are one run of memory (one head dimension per row across the whole chunk put each of
        # a tile's 64 rows on its own memory page), at :func:`_chunk_tile`.
        key_t = T.alloc_buffer((h_kv, kv_total // TILE + batch_size + 1, d, TILE), "float32")
        for task in T.parallel((kv_total + TILE - 1) // TILE * h_kv):
            hk: T.let[T.int32] = task % h_kv
            for i in T.serial(TILE):
                pos: T.let[T.int32] = task // h_kv * TILE + i
                for b in T.serial(batch_size):
                    if pos >= kv_indptr[b] and pos < kv_indptr[b + 1]:
                        for j in T.serial(d):
                            key_t[hk, _chunk_tile(kv_indptr, b, pos - kv_indptr[b]), j,
                                  (pos - kv_indptr[b]) % TILE] = T.cast(k[pos, hk, j], "float32")
        row_tiles: T.let[T.int32] = (qo_total + ROW_TILE - 1) // ROW_TILE + batch_size  # an upper bound
        for task in T.parallel(row_tiles * h_kv):
            found = T.decl_buffer((2,), "int32")
            hk: T.let[T.int32] = task % h_kv
            _tile_of(q_indptr, batch_size, _zigzag(task // h_kv, row_tiles), found)
            if found[0] >= 0:
                b: T.let[T.int32] = found[0]
                row0: T.let[T.int32] = found[1] * ROW_TILE
                qo_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                kv_len: T.let[T.int32] = kv_indptr[b + 1] - kv_indptr[b]
                _attend_rows(q, output, lse, q_indptr[b] + row0, q_indptr[b] + row0, T.min(ROW_TILE, qo_len - row0),
                             lambda i: 0,
                             lambda i: T.if_then_else(causal > 0, T.max(T.min(kv_len, kv_len - qo_len + row0 + i + 1), 0),
                                                      kv_len),
                             hk,
                             lambda pos: kv_indptr[b] + pos,
                             lambda pos: 0,
                             lambda j, base, r: key_t[hk, _chunk_tile(kv_indptr, b, base), j, r],
                             lambda i, _, j: v[i, hk, j],
                             sm_scale, group, d, cap, ROW_TILE, qb, pv, sp, None)
    return kernel


def _tvm_kernels(h_kv: int, h_q: int, d: int, dtype: str, window: int, softcap: float, pv: int,
                 decode_pv: int, sp: int) -> dict:
    """TVM's CPU attention kernels, by global symbol, and lowbit's kernel for each."""
    return {
        "batch_decode_paged_kv_cpu": lambda: decode_kernel(h_kv, h_q, d, dtype, False, softcap, decode_pv, sp,
                                                           _prefetch.get()),
        "batch_decode_paged_kv_cpu_sliding_window":
            lambda: decode_kernel(h_kv, h_q, d, dtype, True, softcap, decode_pv, sp),
        "batch_prefill_paged_kv_cpu": lambda: prefill_paged_kernel(h_kv, h_q, d, dtype, False, 0, softcap, pv, sp),
        "batch_prefill_paged_kv_cpu_sliding_window":
            lambda: prefill_paged_kernel(h_kv, h_q, d, dtype, True, window, softcap, pv, sp),
        "batch_prefill_ragged_kv": lambda: prefill_ragged_kernel(h_kv, h_q, d, dtype, softcap, pv, sp),
    }


def use_lowbit_attention(mod: IRModule, target: Target, h_kv: int, h_q: int, d: int, dtype: str, window: int,
                         layers: int, softcap: float = 0.0) -> IRModule:
    """``mod`` (an exported model with a paged KV cache of ``layers`` layers, whose sliding layers
    see ``window`` keys) with TVM's CPU attention kernels replaced by lowbit's for ``target``, and the pages' keys
    stored transposed (:mod:`.kv_pages_cpu`, whose kernels replace TVM's page kernels); unchanged
    when ``d`` is not a multiple of :data:`LANES`."""
    if d % LANES:
        return mod
    mcpu = str(target.attrs.get("mcpu", ""))
    pv, decode_pv = VALUE_BLOCKS.get(mcpu, 1), _decode_value_block(h_q // h_kv, d, DECODE_VALUE_FLOATS.get(mcpu, 0))
    ours = {**_tvm_kernels(h_kv, h_q, d, dtype, window, softcap, pv, decode_pv, SCORE_CHAINS.get(mcpu, 1)),
            **page_kernels(layers, h_kv, d, dtype)}
    found = {gv: f.attrs["global_symbol"] for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and f.attrs and f.attrs.get("global_symbol") in ours}
    if len(found) != len(ours):
        raise LowbitError("the module lacks TVM's CPU attention kernels (TVM's KV cache changed)")
    for gv, symbol in found.items():
        mod[gv] = ours[symbol]().with_attr("global_symbol", symbol)
    return mod
