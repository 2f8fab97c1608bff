"""GPU schedules for the fused quantized matmul (:mod:`.quant_matmul`'s GPU forms), as a dlight rule.

* GEMV (decode): a workgroup of ``rows × threads`` takes ``rows`` output features; the
  ``threads`` of a row split its reduction. Each step a thread reads one chunk of the row (the
  block's ``lowbit.gpu_chunk``: whole packed words, e.g. 4 words = 32 codes at 4 bits) with one
  vector load into registers, and the matching slice of x likewise, then dequantizes and
  accumulates it in fp32; the partial sums of a row meet in a cross-thread reduction (shared
  memory, or warp shuffles where the target has them).
* GEMM (prefill, batch decode: a symbolic row count): output tiles of :data:`TILE_M` rows ×
  :data:`TILE_N` features per workgroup, a ``TILE_M/THREADS_M × TILE_N/THREADS_N`` register tile per
  thread. Per step of ``bk`` along K the workgroup stages the x tile and the weight panel in shared
  memory: the panel is dequantized there once for all the tile's rows, each thread reading whole
  words (``lowbit.word_elems`` codes per load).

Epilogues (residual or bias adds, the cast back to fp16) run on the threads that own each
output, from registers. Every bound that is not a multiple of its tile is predicated.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from lowbit.compiler.kernels.quant_matmul import (
    CHUNK_ATTR,
    DEQUANT_BLOCK,
    GEMM,
    WORD_ATTR,
)
from lowbit.compiler.kernels.schedule_blocks import open_fused_matmul

GEMV_THREADS = 128  # threads per workgroup (rows × threads along K)
TILE_M, TILE_N = 32, 64  # GEMM output tile per workgroup
THREADS_M, THREADS_N = 8, 16  # GEMM threads per workgroup: a 4 × 4 register tile each
MIN_BK = 32  # GEMM: K per shared-memory stage, at least (a whole number of words)
MAX_LANES = 4  # widest vector load (WGSL has vectors of 2 to 4): 16 bytes of words or fp32
# the matmul block's reads: x first, then the weight (its packed words, or unquantized values)
X_READ, WEIGHT_READ = 0, 1


def _vectorize_innermost(sch: s_tir.Schedule, block) -> None:
    """Vectorize a cache block's innermost copy loop with the widest load that divides it."""
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    vec = next(v for v in (MAX_LANES, 2, 1) if extent % v == 0)
    if vec > 1:
        _, inner = sch.split(loop, [None, vec])
        sch.vectorize(inner)


def _k_threads(chunks: int) -> int:
    """Threads along K for a row of ``chunks`` steps: the most (≤ 32) that leave at most a
    quarter of the steps idle."""
    return next(t for t in (32, 16, 8, 4, 2, 1) if t <= chunks and (-chunks) % t <= chunks // 4)


def _rows_per_group(n: int, k_threads: int) -> int:
    rows = GEMV_THREADS // k_threads
    while rows > 1 and n % rows:
        rows //= 2
    return rows


@dataclass(frozen=True)
class QuantMatmulGPU(dlight.ScheduleRule):
    """dlight rule scheduling every PrimFunc whose reduction block is ``q_matmul`` (GPU forms)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        fused = open_fused_matmul(func, keep=(DEQUANT_BLOCK,))
        if fused is None:
            return None
        if fused.form == GEMM:
            self._gemm(fused.sch, fused.main, fused.deq)  # its epilogues are inlined into the write-back
        else:
            self._gemv(fused.sch, fused.main, fused.epilogues)
        return fused.sch

    def _gemv(self, sch: s_tir.Schedule, block, epilogues: list) -> None:
        annotations = sch.get(block).annotations
        chunk = int(annotations[CHUNK_ATTR])
        *lead, n, k = sch.get_loops(block)
        n_extent, k_extent = int(sch.get(n).extent), int(sch.get(k).extent)
        k_threads = _k_threads(-(-k_extent // chunk))
        rows = _rows_per_group(n_extent, k_threads)
        row = sch.fuse(*lead, n) if lead else n
        _, tx, _ = sch.split(k, [None, k_threads, chunk])
        rf = sch.rfactor(tx, 0)  # rf block: each thread's partial sum of its row
        row, ko, tx, ki = sch.get_loops(rf)
        bx, ty = sch.split(row, [None, rows])
        sch.reorder(bx, ty, tx, ko, ki)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        # one vector load per chunk: the packed words always (the chunk is whole words inside the
        # stored row), x where the chunk divides K (else its last chunk would read past x)
        for index in [WEIGHT_READ] + ([X_READ] if k_extent % chunk == 0 else []):
            cache = sch.cache_read(rf, index, "local")
            sch.compute_at(cache, ko)
            _vectorize_innermost(sch, cache)
        sch.unroll(ki)
        sch.set_scope(rf, 0, "local")
        sch.decompose_reduction(rf, ko)
        sch.reverse_compute_at(block, bx)  # the cross-thread sum of each row
        tr, tyr = sch.get_loops(block)[1:]
        sch.reorder(tyr, tr)
        sch.bind(tyr, "threadIdx.y")
        sch.bind(tr, "threadIdx.x")
        if epilogues:
            sch.set_scope(block, 0, "local")
        for ep in epilogues:
            sch.reverse_compute_at(ep, bx)
            loops = sch.get_loops(ep)[1:]
            sch.bind(sch.fuse(*loops) if len(loops) > 1 else loops[0], "threadIdx.y")

    def _gemm(self, sch: s_tir.Schedule, block, deq) -> None:
        word = int(sch.get(block).annotations[WORD_ATTR])
        bk = -(-MIN_BK // word) * word
        *lead, n, k = sch.get_loops(block)
        # pad the symbolic row axis (tokens or sequences), N and K to whole tiles: x gets a
        # zero-padded producer and the output a copy-back, both inlined below (tiles of a
        # symbolic extent cannot be allocated)
        symbolic = [not isinstance(sch.get(lp).extent, tirx.IntImm) for lp in lead]
        sch.pad_einsum(block, [TILE_M if s else 1 for s in symbolic] + [TILE_N, bk])
        producers = sch.get_producers(block)
        panel = next(b for b in producers if sch.get(b).name_hint.startswith(DEQUANT_BLOCK))
        x_pad = next(b for b in producers if not sch.get(b).name_hint.startswith(DEQUANT_BLOCK))
        if sch.get(panel).name_hint != DEQUANT_BLOCK:  # N or K padded: dequantize into the padded panel
            sch.compute_inline(deq)
        *lead, n, k = sch.get_loops(block)
        m = lead[symbolic.index(True)]
        mo, my, mi = sch.split(m, [None, THREADS_M, TILE_M // THREADS_M])
        no, nx, ni = sch.split(n, [None, THREADS_N, TILE_N // THREADS_N])
        ko, ki = sch.split(k, [None, bk])
        sch.reorder(mo, no, my, nx, ko, ki, mi, ni)
        sch.bind(mo, "blockIdx.y")
        sch.bind(no, "blockIdx.x")
        sch.bind(my, "threadIdx.y")
        sch.bind(nx, "threadIdx.x")
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, nx)
        # the copy-back to the unpadded output and the epilogues read the accumulators directly
        consumers = sch.get_consumers(acc)
        while consumers:
            sch.reverse_compute_inline(consumers[0])
            consumers = sch.get_consumers(acc)
        outer = len(lead) - 1 + 5  # the unit lead loops, mo, no, my, nx, ko
        x_tile = sch.cache_read(block, X_READ, "shared")
        sch.compute_at(x_tile, ko)
        sch.compute_inline(x_pad)
        # unrolled, not vectorized: a vector copy trips TVM's WGSL storage rewrite
        self._cooperative(sch, x_tile, MAX_LANES, outer)
        # the weight panel, dequantized into shared memory: each thread takes whole words
        sch.set_scope(panel, 0, "shared")
        sch.compute_at(panel, ko)
        self._cooperative(sch, panel, word, outer)
        sch.unroll(ki)
        sch.unroll(mi)
        sch.unroll(ni)
        sch.decompose_reduction(block, ko)

    @staticmethod
    def _cooperative(sch: s_tir.Schedule, cache, inner: int, outer: int) -> None:
        """Spread a shared-memory stage's copy (its loops below the ``outer`` enclosing ones) over
        the workgroup, ``inner`` consecutive elements a thread (unrolled)."""
        loops = sch.get_loops(cache)[outer:]
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = int(sch.get(fused).extent)
        inner = next(v for v in (inner, 4, 2, 1) if extent % v == 0)
        _, ty, tx, vec = sch.split(fused, [None, THREADS_M, THREADS_N, inner])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        if inner > 1:
            sch.unroll(vec)
