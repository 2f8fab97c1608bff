"""The GPU backends' relax pipeline: TVM's stock GPU phases, lowbit's fused-matmul schedules,
dlight's GPU rules for everything else.

Used by ``cuda``, ``metal``, ``iphone``, ``opencl``, ``android``, ``vulkan``, ``vulkan-aarch64``
and ``webgpu``. Every fused dequantize→matmul kernel is scheduled by :class:`QuantMatmulGPU`
(vectorised word loads and a cross-thread reduction for decode, shared-memory tiles for prefill).
The other kernels take the stock list of ``relax.backend.gpu_generic`` (Matmul, GEMV, Reduction,
GeneralReduction, Fallback) with two changes:

* a rule that raises on a kernel counts as "does not apply" and the next rule is tried;
* Metal leaves Matmul out: its simdgroup tensorization crashes the process (TVM-NOTES).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.s_tir import dlight

from lowbit.compiler.kernels.gpu_schedule import QuantMatmulGPU
from lowbit.targets.phases import phased_pipeline

logger = logging.getLogger(__name__)


class FallThrough(dlight.ScheduleRule):
    """``rule``, except that an exception while scheduling means "not applicable"."""

    def __init__(self, rule: dlight.ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except RuntimeError as e:  # ScheduleError and TVM's internal errors
            name = func.attrs.get("global_symbol", "?") if func.attrs else "?"
            logger.debug("%s does not schedule %s: %s", type(self.rule).__name__, name,
                         str(e).strip().splitlines()[-1])
            return None

    def is_target_available(self, target) -> bool:
        return self.rule.is_target_available(target)


def schedule_rules(target: tvm.target.Target) -> list[dlight.ScheduleRule]:
    """The GPU rules for ``target``, in the order they are tried: ours for the fused quantized
    matmuls, then dlight's."""
    rules = [dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]
    if target.kind.name != "metal":
        rules.insert(0, dlight.gpu.Matmul())
    return [QuantMatmulGPU(), *(FallThrough(r) for r in rules)]


def pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """The relax pipeline for a GPU target: stock legalization and fusion, dlight's GPU rules."""
    from tvm.relax.backend.gpu_generic import pipeline as stock

    return phased_pipeline(target, stock, [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(),
        dlight.ApplyDefaultSchedule(*schedule_rules(target)),
    ])
