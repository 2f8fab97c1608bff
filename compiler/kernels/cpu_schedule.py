"""Hand CPU schedules for the fused quantized matmul (:mod:`.quant_matmul`), as a dlight rule.

* GEMV (decode: one token per sequence): the reduction is split into vectors of ``lanes`` consecutive k
  (the block's ``lowbit.vector_lanes`` annotation: one packed word's codes, so every lane reads
  the same word and scale and only its shift differs) with ``rfactor``; output rows in chunks of
  ``rows`` (4), chunks in parallel, each chunk's lanes summed right after it (TVM-NOTES' recipe).
  The weight is dequantized inline, never stored.
* GEMM (prefill: a symbolic row count, padded to :data:`GEMM_ROWS`): output features in tiles of
  ``tn``, tiles in parallel. Each tile first dequantizes its ``tn × K`` weight panel once, k-major
  (the ``q_dequant`` block, for every row of x; the whole weight is never materialised), then a
  register micro-kernel runs over the rows: ``tm`` rows × ``tn`` features of fp32 accumulators,
  per k one broadcast of x and ``tm`` vector FMAs against the panel's ``tn`` floats. The tile
  (:data:`GEMM_TILES`) depends on the vector registers of the target's ``mcpu``.

Other blocks of the fused PrimFunc are inlined (casts, reshapes) or placed after each tile
(bias / residual adds, the padded-row copy).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from lowbit.compiler.kernels.quant_matmul import (
    DEQUANT_BLOCK,
    GEMM_ROWS,
    LANES_ATTR,
    MATMUL_BLOCK,
    PAD_BLOCK,
)


def _find(sch: s_tir.Schedule, name: str) -> s_tir.schedule.SBlockRV | None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [b for b in blocks if sch.get(b).name_hint == name]
    return found[0] if len(found) == 1 else None


def _split_others(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, keep: tuple = ()) -> list:
    """Inline every block that can be (casts, reshapes, the bias cast); return the rest, the
    epilogues that write the outputs (bias add, residual add), in order.

    Epilogues cannot be inlined into a reduction block; the schedules place them right after
    each output tile instead.
    """
    skip = {sch.get(main).name_hint, *keep}
    epilogues = []
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint in skip:
            continue
        try:
            sch.compute_inline(b)
        except s_tir.schedule.ScheduleError:
            epilogues.append(b)
    return epilogues


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


@dataclass(frozen=True)
class QuantMatmulCPU(dlight.ScheduleRule):
    """dlight rule scheduling every PrimFunc whose reduction block is ``q_matmul``."""

    rows: int = 4  # GEMV: output rows per parallel chunk

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        main = _find(sch, MATMUL_BLOCK)
        if main is None:
            return None
        deq = _find(sch, DEQUANT_BLOCK)
        epilogues = _split_others(sch, main, keep=(DEQUANT_BLOCK, PAD_BLOCK))
        if deq is None:
            self._gemv(sch, main, epilogues)
        else:
            self._gemm(sch, main, deq, epilogues, *gemm_tile(target))
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
