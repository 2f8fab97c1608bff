"""Hand CPU schedules for the fused quantized matmul (:mod:`.quant_matmul`), as a dlight rule.

* GEMV (decode: one token of one sequence): the reduction is split into vectors of ``lanes`` consecutive k
  (the block's ``lowbit.vector_lanes`` annotation: one packed word's codes, so every lane reads
  the same word and scale and only its shift differs) with ``rfactor``; output rows in chunks of
  ``rows`` (4), chunks in parallel, each chunk's lanes summed right after it (TVM-NOTES' recipe).
  The weight is dequantized inline, never stored.
* GEMM (prefill: a symbolic token count, padded to :data:`GEMM_ROWS`): output features in tiles of
  ``tn``, tiles in parallel. Each tile first dequantizes its ``tn × K`` weight panel once, k-major
  (the ``q_dequant`` block, for every row of x; the whole weight is never materialised), then a
  register micro-kernel runs over the rows: ``tm`` rows × ``tn`` features of fp32 accumulators,
  per k one broadcast of x and ``tm`` vector FMAs against the panel's ``tn`` floats. The tile
  (:data:`GEMM_TILES`) depends on the vector registers of the target's ``mcpu``.
* Batch decode (one token for each of a symbolic number of sequences, padded to
  :data:`BATCH_ROWS`): output features in chunks of :data:`BATCH_CHUNK`, chunks in parallel. Each
  chunk first dequantizes its weight rows once, k-contiguous and a packed word per vector as in
  the GEMV, then a register micro-kernel runs over the rows: ``tm`` rows × ``tn`` features of
  ``lanes``-wide accumulators (partial sums over k, an ``rfactor``), per k vector ``tm`` loads of
  x, ``tn`` of the panel and ``tm × tn`` FMAs, the lanes summed once per tile (:data:`BATCH_TILES`).

Other blocks of the fused PrimFunc are inlined (casts, reshapes) or placed after each tile
(bias / residual adds, the padded-row copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import dlight
from tvm.target import Target

from lowbit.compiler.kernels.quant_matmul import (
    BATCH,
    BATCH_ROWS,
    DEQUANT_BLOCK,
    GEMM,
    GEMM_ROWS,
    GROUP_ATTR,
    LANES_ATTR,
    PAD_BLOCK,
)
from lowbit.compiler.kernels.schedule_blocks import open_fused_matmul

# GEMM register tile (rows of x, output features) by llvm ``mcpu``: AVX-512's 32 zmm registers
# hold 8 × 32 fp32 accumulators (16 registers); AVX2's 16 ymm registers hold 4 × 16 (8). Each was
# the fastest of {4, 8} × {8, 16, 32} on the bundled model's layer shapes at 128 rows. Rows must
# divide GEMM_ROWS.
GEMM_TILES = {"x86-64-v4": (8, 32)}
DEFAULT_GEMM_TILE = (4, 16)


def gemm_tile(target: Target) -> tuple[int, int]:
    tile = GEMM_TILES.get(str(target.attrs.get("mcpu", "")), DEFAULT_GEMM_TILE)
    assert GEMM_ROWS % tile[0] == 0
    return tile


# Batch-decode register tile (rows of x, output features, k lanes) by llvm ``mcpu``: rows × features
# vector accumulators of k lanes, summed across lanes once per tile. On AVX2, at the bundled model's
# shapes, 2 × 4 (8 registers, rows padded to 2) matched 4 × 2 (rows padded to 4) at 8 and 32
# sequences and was ~15% faster at one; 1 × 8, 1 × 4, 2 × 2, 4 × 1 and 4 × 3 were slower. AVX-512
# takes the same tile with 16 lanes (not measured: no AVX-512 host). Rows must divide BATCH_ROWS.
BATCH_TILES = {"x86-64-v4": (2, 4, 16), "x86-64-v3": (2, 4, 8)}
DEFAULT_BATCH_TILE = (2, 4, 4)
BATCH_CHUNK = 8  # batch decode: output features per parallel task (its dequantized panel)


def batch_tile(target: Target) -> tuple[int, int, int]:
    tile = BATCH_TILES.get(str(target.attrs.get("mcpu", "")), DEFAULT_BATCH_TILE)
    assert BATCH_ROWS % tile[0] == 0
    return tile


@dataclass(frozen=True)
class QuantMatmulCPU(dlight.ScheduleRule):
    """dlight rule scheduling every PrimFunc whose reduction block is ``q_matmul``."""

    rows: int = 4  # GEMV: output rows per parallel chunk

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        fused = open_fused_matmul(func, keep=(DEQUANT_BLOCK, PAD_BLOCK))
        if fused is None:
            return None
        sch, main, deq, epilogues, form = fused.sch, fused.main, fused.deq, fused.epilogues, fused.form
        if form == GEMM:
            self._gemm(sch, main, deq, epilogues, *gemm_tile(target))
        elif form == BATCH:
            self._batch(sch, main, deq, epilogues, *batch_tile(target))
        else:
            self._gemv(sch, main, epilogues)
        return sch

    def _gemv(self, sch, block, epilogues) -> None:
        *lead, n, k = sch.get_loops(block)
        lanes = int(sch.get(block).annotations.get(LANES_ATTR, 1))
        _, ki = sch.split(k, [None, lanes])
        rf = sch.rfactor(ki, len(lead) + 1)  # rf block: lanes partial sums per row (innermost)
        *lead, n, ko, ki = sch.get_loops(rf)
        no, ni = sch.split(n, [None, self.rows])
        par = sch.fuse(*lead, no) if lead else no
        sch.parallel(par)
        sch.reorder(par, ni, ko, ki)
        sch.vectorize(ki)
        sch.decompose_reduction(rf, ko)
        sch.reverse_compute_at(block, par)  # sum the lanes of each row chunk right after it
        for ep in epilogues:
            sch.reverse_compute_at(ep, par)

    def _gemm(self, sch, block, deq, epilogues, tm: int, tn: int) -> None:
        *lead, n, k = sch.get_loops(block)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        n_extent = int(sch.get(n).extent)
        tn = next(t for t in (tn, 16, 8, 4, 2, 1) if n_extent % t == 0)
        acc = sch.cache_write(block, 0, "local")
        mo, mi = sch.split(m, [None, tm])
        no, ni = sch.split(n, [None, tn])
        sch.reorder(no, mo, k, mi, ni)
        sch.parallel(no)
        sch.reverse_compute_at(acc, mo)  # the tm × tn accumulators stay in registers
        sch.unroll(mi)
        sch.vectorize(ni)
        sch.decompose_reduction(block, k)
        # the weight panel of this N tile, dequantized once for every row of x, stored k-major so
        # the micro-kernel reads tn consecutive floats per k
        sch.transform_layout(deq, ("write", 0), lambda nn, kk: (kk, nn))
        sch.compute_at(deq, no)
        if tn > 1:  # (with tn == 1 compute_at leaves no n loop)
            dn, dk = sch.get_loops(deq)[-2:]
            sch.reorder(dk, dn)
            sch.vectorize(dn)
        for ep in epilogues:
            sch.reverse_compute_at(ep, no)

    def _batch(self, sch, block, deq, epilogues, tm: int, tn: int, width: int) -> None:
        *lead, n, k = sch.get_loops(block)
        k_extent = int(sch.get(k).extent)
        _, ki = sch.split(k, [None, math.gcd(width, k_extent)])
        rf = sch.rfactor(ki, len(lead) + 1)  # rf block: lanes partial sums per (row, feature)
        *lead, n, ko, ki = sch.get_loops(rf)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        n_extent = int(sch.get(n).extent)
        tn = next(t for t in (tn, 2, 1) if n_extent % t == 0)
        chunk = next(c for c in (BATCH_CHUNK, 4, 2, 1) if c % tn == 0 and n_extent % c == 0)
        mo, mi = sch.split(m, [None, tm])
        no, nt, ni = sch.split(n, [None, chunk // tn, tn])
        # row tiles outside feature tiles: a row tile of x stays in L1 while the chunk's panel
        # streams past it (the other order re-reads all of x from L2 for each feature tile)
        sch.reorder(no, mo, nt, ko, mi, ni, ki)
        sch.parallel(no)
        sch.unroll(mi)
        sch.unroll(ni)
        sch.vectorize(ki)
        sch.decompose_reduction(rf, ko)
        sch.reverse_compute_at(block, nt)  # sum the lanes of each register tile right after it
        # the chunk's weight rows, dequantized once for all rows of x, k-contiguous: one packed
        # word's codes per vector as in the GEMV, in a loop per scale group so that the scale is
        # loaded and converted once per group
        sch.compute_at(deq, no)
        dk = sch.get_loops(deq)[-1]
        word = int(sch.get(block).annotations.get(LANES_ATTR, 1))
        group = math.gcd(int(sch.get(block).annotations.get(GROUP_ATTR, word)), k_extent)
        if group > word and group % word == 0:
            _, _, dki = sch.split(dk, [None, group // word, word])
        else:
            _, dki = sch.split(dk, [None, word])
        sch.vectorize(dki)
        for ep in epilogues:
            sch.reverse_compute_at(ep, no)
