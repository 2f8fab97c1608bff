"""The MLP's gate on CPU targets: ``silu(gate) · up`` from the fused gate/up projection, in one
vectorised pass whose exponential stays in vector lanes (:func:`.vector_math.silu`).

Stock legalization computes the sigmoid with ``expf`` once per element (LLVM has no vector
``exp`` on CPUs), a scalar loop that took 3 % of a one-thread decode step on the bundled model
and more of a batch step. Rows (tokens × sequences) run in parallel from
:data:`PARALLEL_ROWS` on; fewer stay on the calling thread, where a parallel launch costs more
than the work.
"""

from __future__ import annotations

from functools import cache

from tvm import tirx
from tvm.relax.frontend.nn import Tensor, op
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.compiler.kernels.kv_pages_cpu import LOWBIT_KERNEL
from lowbit.compiler.kernels.vector_math import silu

PARALLEL_ROWS = 16
LANES = 16  # fp32 elements per vectorised step


@cache  # parsing TVMScript takes ~0.1 s, and every layer of every exported method asks
def silu_multiply_kernel(inter: int, dtype: str) -> tirx.PrimFunc:
    """``y[b, t, i] = silu(x[b, t, i]) · x[b, t, inter + i]`` for x [B, T, 2·inter]."""
    steps, lanes = (inter // LANES, LANES) if inter % LANES == 0 else (inter, 1)

    @T.macro
    def row(x, y, b, t):
        for i0 in T.serial(steps):
            for i1 in T.vectorized(lanes):
                y[b, t, i0 * lanes + i1] = T.Cast(dtype, silu(T.Cast("float32", x[b, t, i0 * lanes + i1]))
                                                  * T.Cast("float32", x[b, t, inter + i0 * lanes + i1]))

    @T.prim_func(private=True, s_tir=True)
    def kernel(x_handle: T.handle, y_handle: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
        batch, seq = T.int64(), T.int64()
        x = T.match_buffer(x_handle, (batch, seq, 2 * inter), dtype)
        y = T.match_buffer(y_handle, (batch, seq, inter), dtype)
        with T.sblock("root"):  # relax's analyses of a call_tir'd PrimFunc expect a root block
            if batch * seq >= PARALLEL_ROWS:
                for r in T.parallel(batch * seq):
                    row(x, y, r // seq, r % seq)
            else:
                for r in T.serial(batch * seq):
                    row(x, y, r // seq, r % seq)

    return kernel


def gated_silu(gate_up: Tensor) -> Tensor:
    """``silu(gate) · up`` of ``gate_up`` [B, T, 2·I] (gate first): this module's kernel when
    exporting for an llvm target, nn ops elsewhere."""
    target = Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        gate, up = op.split(gate_up, 2, axis=-1)
        return op.silu(gate) * up
    b, s, width = gate_up.shape
    return op.tensor_ir_op(silu_multiply_kernel(width // 2, gate_up.dtype), "silu_multiply", args=[gate_up],
                           out=Tensor.placeholder((b, s, width // 2), gate_up.dtype))
