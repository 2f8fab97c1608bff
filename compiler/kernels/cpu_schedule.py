"""Hand CPU schedules for the fused quantized matmul (:mod:`.quant_matmul`), as a dlight rule.

Both split the reduction into vectors of ``lanes`` consecutive k (the block's
``lowbit.vector_lanes`` annotation: one packed word's codes, so every lane reads the same word and
scale and only its shift differs) with ``rfactor``, keep the lane partial sums innermost, and
vectorize them:

* GEMV (decode: every leading dimension statically 1): output rows in chunks of ``rows`` (4),
  chunks in parallel, each chunk's lanes summed right after it (TVM-NOTES' recipe: rfactor,
  vectorized lanes, parallel row chunks, partial sums on the stack).
* GEMM (prefill): additionally ``tm`` (:data:`GEMM_ROWS`) rows of x per tile, unrolled, so each
  dequantized weight vector feeds ``tm`` FMAs; (row tile, ``tn`` output rows) tiles in parallel.
  The kernel pads a symbolic row count to a multiple of ``tm`` so tiles carry no predicate.

Other blocks of the fused PrimFunc are inlined (casts, reshapes) or placed after each tile
(bias / residual adds, the padded-row copy).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from lowbit.compiler.kernels.quant_matmul import GEMM_ROWS, LANES_ATTR, MATMUL_BLOCK


def _find_matmul(sch: s_tir.Schedule) -> s_tir.schedule.SBlockRV | None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [b for b in blocks if sch.get(b).name_hint == MATMUL_BLOCK]
    return found[0] if len(found) == 1 else None


def _split_others(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV) -> list:
    """Inline every block that can be (casts, reshapes, the bias cast); return the rest, the
    epilogues that write the outputs (bias add, residual add), in order.

    Epilogues cannot be inlined into a reduction block; the schedules place them right after
    each output tile instead.
    """
    main_name = sch.get(main).name_hint
    epilogues = []
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint == main_name:
            continue
        try:
            sch.compute_inline(b)
        except s_tir.schedule.ScheduleError:
            epilogues.append(b)
    return epilogues


def _static_one(extent: tirx.PrimExpr) -> bool:
    return isinstance(extent, tirx.IntImm) and int(extent) == 1


@dataclass(frozen=True)
class QuantMatmulCPU(dlight.ScheduleRule):
    """dlight rule scheduling every PrimFunc whose reduction block is ``q_matmul``."""

    rows: int = 4
    tm: int = GEMM_ROWS
    tn: int = 4

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        main = _find_matmul(sch)
        if main is None:
            return None
        epilogues = _split_others(sch, main)
        *lead, n, k = sch.get_loops(main)
        extents = [sch.get(loop).extent for loop in lead]
        k_extent = int(sch.get(k).extent)
        if all(_static_one(e) for e in extents):
            self._gemv(sch, main, epilogues, lead, n, k, k_extent)
        else:
            self._gemm(sch, main, epilogues, lead, n, k, k_extent)
        return sch

    def _gemv(self, sch, block, epilogues, lead, n, k, k_extent: int) -> None:
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

    def _gemm(self, sch, block, epilogues, lead, n, k, k_extent: int) -> None:
        lanes = int(sch.get(block).annotations.get(LANES_ATTR, 1))
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        _, ki = sch.split(k, [None, lanes])
        rf = sch.rfactor(ki, len(lead) + 1)
        m, n, ko, ki = sch.get_loops(rf)
        mo, mi = sch.split(m, [None, self.tm])
        no, ni = sch.split(n, [None, self.tn])
        # each dequantized vector of `lanes` weights feeds `tm` rows of x
        sch.reorder(mo, no, ni, ko, mi, ki)
        par = sch.fuse(mo, no)
        sch.parallel(par)
        sch.unroll(mi)
        sch.vectorize(ki)
        sch.decompose_reduction(rf, ko)
        sch.reverse_compute_at(block, par)
        for ep in epilogues:
            sch.reverse_compute_at(ep, par)
