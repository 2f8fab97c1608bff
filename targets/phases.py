"""The relax pipeline's phases, shared by every backend; a backend supplies the middle one.

1. library dispatch (sampling, sort/scan), 2. the backend's legalization, fusion and schedules,
3. dataflow lowering, 4. VM finalization — phases 1, 3 and 4 from TVM's stock backend module
(``relax.backend.cpu_generic`` or ``gpu_generic``) of the same name.
"""

from __future__ import annotations

import tvm


def phased_pipeline(target: tvm.target.Target, stock, schedule: list) -> tvm.transform.Pass:
    """The module pass :func:`tvm.compile` runs as ``relax_pipeline``: ``stock``'s phases around
    ``schedule`` (legalize → fuse → schedule passes), all inside ``with target``."""

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                stock.library_dispatch_passes(target)
                + schedule
                + stock.dataflow_lower_passes(target)
                + stock.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline
