"""Block lookups shared by the CPU and GPU schedule rules of the fused quantized matmul."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from lowbit.compiler.kernels.quant_matmul import DEQUANT_BLOCK, FORM_ATTR, MATMUL_BLOCK


def find_block(sch: s_tir.Schedule, name: str) -> s_tir.schedule.SBlockRV | None:
    """The root's one child block called ``name``, else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [b for b in blocks if sch.get(b).name_hint == name]
    return found[0] if len(found) == 1 else None


def inline_all_but(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, keep: tuple = ()) -> list:
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


@dataclass
class FusedMatmul:
    """A fused quantized-matmul PrimFunc opened for scheduling: its reduction block, its
    dequantized-weight block (None in the inline forms) and the epilogues left after inlining."""

    sch: s_tir.Schedule
    main: s_tir.schedule.SBlockRV
    deq: s_tir.schedule.SBlockRV | None
    epilogues: list
    form: str


def open_fused_matmul(func, keep: tuple) -> FusedMatmul | None:
    """The PrimFunc's ``q_matmul`` block and its companions, every other block inlined where it
    can be (``keep`` excepted); None when ``func`` is not a fused quantized matmul."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    main = find_block(sch, MATMUL_BLOCK)
    if main is None:
        return None
    form = str(sch.get(main).annotations.get(FORM_ATTR, ""))
    deq = find_block(sch, DEQUANT_BLOCK)
    return FusedMatmul(sch, main, deq, inline_all_but(sch, main, keep=keep), form)
