"""The CPU backend's relax pipeline: stock legalization and fusion, our schedules, lowering.

Used by the ``llvm`` (host) and ``aarch64`` targets.

Phases (as ``relax.backend.cpu_generic``, with phase 3 added):
1. library dispatch (sampling, sort/scan);
2. legalize + fuse (the fused dequant→matmul PrimFuncs take their bias/SiLU epilogues here);
3. schedule: :class:`QuantMatmulCPU` for every fused quantized matmul, :class:`OneRowSerial`
   for one-row reductions (a decode norm that ``compiler/kernels/norm_cpu.py`` does not take),
   dlight's CPU GEMV and Reduction rules for the rest
   (norms over many rows, softmax);
4. dataflow lowering and VM finalization.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir
from tvm.s_tir import dlight

from lowbit.compiler.kernels.cpu_schedule import QuantMatmulCPU
from lowbit.targets.phases import phased_pipeline


class OneRowSerial(dlight.ScheduleRule):
    """Leave a reduction over a single row (an RMS norm of one token: a few hundred floats) as
    plain serial loops. dlight's CPU Reduction rule parallelizes such a function over the
    weight-cast block's axis and recomputes the whole norm inside it, once per element (576× on
    the bundled model: half of a decode step)."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        reductions = [b for b in blocks if any(iv.iter_type == tvm.tirx.IterVar.CommReduce
                                               for iv in sch.get(b).iter_vars)]
        if not reductions:
            return None
        one_row = all(isinstance(iv.dom.extent, tvm.tirx.IntImm) and int(iv.dom.extent) == 1
                      for b in reductions for iv in sch.get(b).iter_vars
                      if iv.iter_type == tvm.tirx.IterVar.DataPar)
        return sch if one_row else None


@tvm.transform.module_pass(opt_level=0, name="MarkAllNoAlias")
def mark_all_noalias(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Give every PrimFunc ``tirx.noalias`` (its buffer arguments never overlap).

    TVM 0.27's LLVM codegen reads a function's noalias flag when it first *declares* it, and it
    declares every function before emitting any: all bodies are then emitted with the flag of the
    last function declared. When that one lacks it (the paged KV cache's TVMScript kernels do), no
    function gets alias information, LLVM keeps the GEMM accumulators in memory and prefill runs
    2.3× slower. Every function here takes distinct buffers, so the flag is true for all of them.
    """
    out = tvm.IRModule(attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and not func.attrs.get("tirx.noalias", False):
            func = func.with_attr("tirx.noalias", True)
        out[gv] = func
    return out


_RESHAPE = tvm.ir.Op.get("relax.reshape")


@relax.expr_functor.mutator
class _ReshapeOfReshape(relax.PyExprMutator):
    """Rewrites ``reshape(v, b)`` where v is bound to ``reshape(x, a)`` into ``reshape(x, b)``."""

    merged = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op == _RESHAPE and isinstance(call.args[0], relax.Var):
            inner = self.lookup_binding(call.args[0])
            if isinstance(inner, relax.Call) and inner.op == _RESHAPE:
                self.merged += 1
                return relax.op.reshape(inner.args[0], call.args[1])
        return call


@tvm.transform.module_pass(opt_level=0, name="MergeReshapes")
def merge_reshapes(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """``reshape(reshape(x, a), b)`` → ``reshape(x, b)`` in every relax function.

    The paged KV cache's attention reshapes the model's [b, s, heads, head_dim] q/k/v to
    [b·s, heads, head_dim], and its output back, beside the model's own reshapes. Stock fusion
    makes each such pair one copy kernel with its output allocated (60 per decode step of the
    bundled model); one reshape stays a view of its input (``RewriteDataflowReshape``). A
    one-pass mutator, not a ``relax.dpl`` rewrite: that took 3 s of the bundled model's compile.
    """
    out = tvm.IRModule(mod.functions, attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator = _ReshapeOfReshape()
            merged = mutator.visit_expr(func)
            if mutator.merged:  # the inner reshapes are left unused
                out[gv] = relax.analysis.remove_all_unused(merged)
    return out


def schedule_rules() -> tvm.transform.Pass:
    """Phase 3: the first rule that applies schedules each PrimFunc."""
    return dlight.ApplyDefaultSchedule(QuantMatmulCPU(), OneRowSerial(), dlight.cpu.GEMV(),
                                       dlight.cpu.Reduction())


def pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """The relax pipeline for an llvm target: stock legalization and fusion, then our schedules."""
    from tvm.relax.backend.cpu_generic import pipeline as stock

    return phased_pipeline(target, stock, [merge_reshapes, *stock.legalize_passes(target), schedule_rules(),
                                           mark_all_noalias])
