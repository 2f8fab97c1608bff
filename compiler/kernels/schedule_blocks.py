"""Block lookups shared by the CPU and GPU schedules of the fused quantized matmul."""

from __future__ import annotations

from tvm import s_tir


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
