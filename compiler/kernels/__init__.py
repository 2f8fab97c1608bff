"""lowbit's kernels: fused dequantize→matmul (TE) with their schedules, and hand-written TIR for CPUs.

In the TIR kernels a scalar is bound with ``x: T.let[T.int32] = …``. A plain ``x: T.int32 = …``
(or ``x = …``) is a mutable local that TVM 0.27 lowers to a 4-byte workspace allocation, and inside
a ``T.parallel`` loop that is a heap allocation and free on every pass through it: the decode
attention spent a third of its time there. ``T.decl_buffer`` (scope "global", under 1 KiB) stays on
the stack.

A function that builds a kernel from TVMScript parses its source on every call (~0.1 s). One that
a layer's ``forward`` calls is asked once per layer and exported method (305 times for the
bundled model's norms), so it is ``functools.cache``d on its (hashable) arguments: TIR functions
are immutable, and the same object may appear in many modules.
"""
