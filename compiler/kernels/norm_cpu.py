"""RMS norms on CPU targets: the weight read in its stored dtype, and the residual add fused.

Stock legalization of ``rms_norm(x, w.astype(x.dtype))`` casts the fp16 weight into a new fp32
tensor first, on every call, and a decoder layer's residual ``h + attn(...)`` is its own kernel
before the norm that reads it: three kernels, each with its output allocated by the VM, where
one pass over the row does it. On the bundled model a decode step ran 61 casts, 60 adds and 61
norms. Here :func:`rms_norm` is one kernel, and :func:`add_rms_norm` returns both the sum (the
residual stream) and its norm from one.

The arithmetic is TVM's (``topi.nn.rms_norm``): ``x · rsqrt(Σ x² / H + eps) · w`` in fp32, the
sum of squares taken over :data:`LANES` partial sums. Rows (tokens × sequences) run in parallel
from :data:`PARALLEL_ROWS` on; fewer stay on the calling thread, where a parallel launch costs
more than the work.
"""

from __future__ import annotations

from functools import cache

from tvm import tirx
from tvm.relax.frontend.nn import Tensor, op
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.compiler.kernels.kv_pages_cpu import LOWBIT_KERNEL

PARALLEL_ROWS = 16
LANES = 16  # fp32 partial sums of squares, one vector (the tree that adds them is written for 16)


def _on_cpu(x: Tensor) -> bool:
    """Whether the norm of ``x`` runs on this module's kernels: an llvm target, fp32 rows of a
    width that whole vectors cover, [batch, seq, hidden]."""
    target = Target.current(allow_none=True)
    return (target is not None and target.kind.name == "llvm" and x.dtype == "float32"
            and len(x.shape) == 3 and isinstance(x.shape[2], int) and x.shape[2] % LANES == 0)


@cache  # parsing TVMScript takes ~0.1 s, and every layer of every exported method asks
def rms_norm_kernel(hidden: int, weight_dtype: str, eps: float, add: bool) -> tirx.PrimFunc:
    """``y = s · rsqrt(Σ s² / hidden + eps) · w`` per row of x [B, T, hidden] (fp32) with w
    [hidden] (``weight_dtype``), where s = x (``add`` False: arguments x, w, y) or s = x + d,
    also written out (``add`` True: arguments x, d, w, s, y)."""
    steps = hidden // LANES

    @T.macro
    def row(a, b, w, s, y, i, t):
        """Row (i, t): s = a + b when ``add`` (else s is a), y its norm."""
        part = T.decl_buffer((LANES,), "float32")
        for lane in T.vectorized(LANES):
            part[lane] = T.float32(0)
        for k0 in T.serial(steps):
            for lane in T.vectorized(LANES):
                if add:
                    s[i, t, k0 * LANES + lane] = a[i, t, k0 * LANES + lane] + b[i, t, k0 * LANES + lane]
                    part[lane] = part[lane] + s[i, t, k0 * LANES + lane] * s[i, t, k0 * LANES + lane]
                else:
                    part[lane] = part[lane] + a[i, t, k0 * LANES + lane] * a[i, t, k0 * LANES + lane]
        for lane in T.vectorized(8):  # the 16 partial sums as a tree
            part[lane] = part[lane] + part[lane + 8]
        for lane in T.vectorized(4):
            part[lane] = part[lane] + part[lane + 4]
        for lane in T.vectorized(2):
            part[lane] = part[lane] + part[lane + 2]
        inv: T.let[T.float32] = T.rsqrt((part[0] + part[1]) / T.float32(hidden) + T.float32(eps))
        for k0 in T.serial(steps):
            for lane in T.vectorized(LANES):
                y[i, t, k0 * LANES + lane] = s[i, t, k0 * LANES + lane] * inv * T.Cast(
                    "float32", w[k0 * LANES + lane])

    @T.macro
    def every_row(a, b, w, s, y, batch, seq):
        """Every row, in parallel from PARALLEL_ROWS rows on."""
        if batch * seq >= PARALLEL_ROWS:
            for r in T.parallel(batch * seq):
                row(a, b, w, s, y, r // seq, r % seq)
        else:
            for r in T.serial(batch * seq):
                row(a, b, w, s, y, r // seq, r % seq)

    if add:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x_handle: T.handle, d_handle: T.handle, w: T.Buffer((hidden,), weight_dtype),
                   s_handle: T.handle, y_handle: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
            batch, seq = T.int64(), T.int64()
            x = T.match_buffer(x_handle, (batch, seq, hidden), "float32")
            d = T.match_buffer(d_handle, (batch, seq, hidden), "float32")
            s = T.match_buffer(s_handle, (batch, seq, hidden), "float32")
            y = T.match_buffer(y_handle, (batch, seq, hidden), "float32")
            with T.sblock("root"):  # relax's analyses of a call_tir'd PrimFunc expect a root block
                every_row(x, d, w, s, y, batch, seq)
    else:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x_handle: T.handle, w: T.Buffer((hidden,), weight_dtype), y_handle: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True, LOWBIT_KERNEL: True})
            batch, seq = T.int64(), T.int64()
            x = T.match_buffer(x_handle, (batch, seq, hidden), "float32")
            y = T.match_buffer(y_handle, (batch, seq, hidden), "float32")
            with T.sblock("root"):
                every_row(x, None, w, x, y, batch, seq)

    return kernel


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The RMS norm of ``x`` over its last axis, ``weight`` in its stored dtype: this module's
    kernel on CPU targets (:func:`_on_cpu`), nn ops elsewhere."""
    if not _on_cpu(x):
        return op.rms_norm(x, weight.astype(x.dtype), axes=[-1], epsilon=eps)
    kernel = rms_norm_kernel(x.shape[2], weight.dtype, eps, add=False)
    return op.tensor_ir_op(kernel, "rms_norm", args=[x, weight], out=Tensor.placeholder(x.shape, x.dtype))


def add_rms_norm(x: Tensor, d: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x + d, rms_norm(x + d))``: the residual stream and its norm, in one kernel on CPU
    targets (:func:`_on_cpu`), nn ops elsewhere."""
    if not _on_cpu(x):
        s = x + d
        return s, op.rms_norm(s, weight.astype(s.dtype), axes=[-1], epsilon=eps)
    kernel = rms_norm_kernel(x.shape[2], weight.dtype, eps, add=True)
    s, y = op.tensor_ir_op(kernel, "add_rms_norm", args=[x, d, weight],
                           out=[Tensor.placeholder(x.shape, x.dtype), Tensor.placeholder(x.shape, x.dtype)])
    return s, y
