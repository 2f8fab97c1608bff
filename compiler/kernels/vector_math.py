"""Elementary functions from +, ×, floor and exponent bits, so a vectorised TIR loop stays in
vector lanes: LLVM has no vector ``exp`` on CPUs and calls ``expf`` once per lane."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

LOG2E = 1.4426950408889634

# 2^f on [-0.5, 0.5] (Cephes' exp2f minimax polynomial, highest degree first): relative error ~2e-7
EXP2_POLY = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
             5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1)


def exp2(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """2^x (float32) for x ≤ 0; x below -126 gives 2^-126."""
    x = T.max(x, T.float32(-126.0))
    n = T.floor(x + T.float32(0.5))
    f = x - n
    poly = T.float32(EXP2_POLY[0])
    for c in EXP2_POLY[1:]:
        poly = poly * f + T.float32(c)
    return (poly * f + T.float32(1.0)) * T.reinterpret("float32", T.shift_left(T.cast(n, "int32") + 127, 23))


def silu(g: tirx.PrimExpr) -> tirx.PrimExpr:
    """g · σ(g) (float32), σ from t = e^-|g| ≤ 1: 1 / (1 + t) for g ≥ 0, t / (1 + t) below."""
    t = exp2(-T.abs(g) * T.float32(LOG2E))
    return g * T.Select(g >= T.float32(0), T.float32(1.0), t) / (T.float32(1.0) + t)
