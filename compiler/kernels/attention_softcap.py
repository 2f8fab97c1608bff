"""Attention logit soft-capping (Gemma 2) in TVM's paged-KV-cache CPU attention kernels.

Gemma 2 caps every attention score as ``cap · tanh(s / cap)``, ``s = q·k · sm_scale``, before the
softmax. TVM's KV-cache kernels take only ``sm_scale``, so the capping is added to the kernels
themselves: in each CPU attention kernel the one store of the scaled score (in log2 units,
``s · log2 e``) becomes ``c · tanh(score / c)`` with ``c = cap · log2 e``, which is the capped
score in the same units. Masked scores (constants) are left alone, so masking stays exact.

Only the CPU kernels are rewritten: the GPU kernels accumulate partial products, where a
per-store rewrite would cap partial sums, so a GPU target is refused. lowbit's own kernels
(:mod:`.attention_cpu`) take the cap when they are built and are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm_ffi
from tvm import IRModule, tirx
from tvm.ir.expr import TensorLoad
from tvm.target import Target

from lowbit.compiler.kernels.attention_cpu import LOWBIT_KERNEL
from lowbit.errors import LowbitError

SCALE_PARAM = "sm_scale"  # the kernels' score-scale argument


def _contains(expr, match: Callable[[object], bool]) -> bool:
    found = []

    def visit(node):
        if match(node):
            found.append(node)
        return node

    tvm_ffi.structural_map(expr, visit)
    return bool(found)


def _softcap_kernel(func: tirx.PrimFunc, cap: float) -> tirx.PrimFunc:
    """``func`` with its scaled-score store capped; exactly one such store is expected."""
    scale = next(p for p in func.params if p.name == SCALE_PARAM)
    c = tirx.FloatImm("float32", cap * math.log2(math.e))
    rewritten = []

    def store(s: tirx.BufferStore) -> tirx.BufferStore:
        is_score = _contains(s.value, lambda x: isinstance(x, tirx.Var) and x.same_as(scale)) and \
            _contains(s.value, lambda x: isinstance(x, TensorLoad))
        if not is_score:
            return s
        rewritten.append(s)
        return tirx.BufferStore(s.buffer, c * tirx.tanh(s.value / c), s.indices)

    out = tvm_ffi.structural_map(func, (tirx.BufferStore, store))
    if len(rewritten) != 1:
        name = func.attrs["global_symbol"] if func.attrs and "global_symbol" in func.attrs else "?"
        raise LowbitError(f"attention soft-capping: kernel {name} has {len(rewritten)} score stores, "
                          "expected 1 (TVM's KV-cache kernels changed)")
    return out


def softcap_attention(mod: IRModule, cap: float, target: Target) -> IRModule:
    """``mod`` with every KV-cache attention kernel (a PrimFunc taking ``sm_scale``) capping its
    scores at ``cap``; a one-line refusal for non-CPU targets."""
    if target.kind.name != "llvm":
        raise LowbitError(f"attention soft-capping is implemented for CPU targets only, "
                          f"not {target.kind.name}")
    kernels = [gv for gv, f in mod.functions.items()
               if isinstance(f, tirx.PrimFunc) and any(p.name == SCALE_PARAM for p in f.params)
               and not (f.attrs and f.attrs.get(LOWBIT_KERNEL))]  # lowbit's own take the cap as built
    if not kernels:
        raise LowbitError("attention soft-capping: the module has no KV-cache attention kernel")
    for gv in kernels:
        mod[gv] = _softcap_kernel(mod[gv], cap)
    return mod
