"""Decode GEMV with 8-bit activations on AVX2 integer dot products, for the 4-bit schemes.

``lowbit compile --decode-activations int8`` swaps this kernel in for the fused fp32 GEMV of every
4-bit linear in ``decode`` and ``batch_decode`` (x [B, 1, K], one token per sequence). Prefill
keeps fp activations. The weights stay in MLC's layout; only x is re-laid out, once per call.

Activations (:func:`lowbit.quantizer.fake_quantize_blocks_int8` is the same math in PyTorch): each
block of 32 consecutive k gets ``d = max|x| / 127`` and codes ``c = round(x · (127 / max|x|))``
(half to even; a zero block gets d = c = 0).

Why the weights need no repacking: a 4-bit row stores element k in bits 4·(k % 8) of word k // 8,
so byte j of a run of 32 bytes (64 elements, two blocks) holds element 2j (low nibble) and 2j + 1
(high nibble) of that run. One 32-byte load, ``& 0x0F`` and ``>> 4 & 0x0F``, gives the codes of
the even and of the odd elements; x is stored per pair of blocks in the same order (``xq[b, 64p +
j]`` = code of element 64p + 2j, ``xq[b, 64p + 32 + j]`` = of element 64p + 2j + 1), so two
``vpmaddubsw`` (unsigned codes × signed activations, pairs summed to int16: at most 2·15·127 each)
and one ``vpmaddwd`` by ones give eight int32 sums, lane l covering elements 64p + 8l … 8l + 7 of
one block (l < 4: block 2p, else 2p + 1). The zero point comes out as ``Σ q·c − z·Σ c`` with the
lane sums of c precomputed (``xs``); the float result is ``(Σ q·c − z·Σ c) · s_w · d`` per lane,
accumulated in eight fp32 lanes and summed once per output row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tvm import tirx
from tvm.script import tirx as T

from lowbit.compiler.schemes import AsymGroupQuant, Scheme, SymGroupQuant

PAIR = 64  # k per step: two activation blocks, 32 bytes of codes
BLOCK = 32  # k per activation scale
LANES = 8  # int32 / fp32 lanes of a 256-bit register
TASKS = 8  # parallel tasks: each allocates its accumulator once, then runs a range of rows


DECODE_ACTIVATIONS = ("fp", "int8")  # lowbit compile --decode-activations
_decode_activations: ContextVar[str] = ContextVar("lowbit_decode_activations", default="fp")


@contextmanager
def decode_activations(kind: str) -> Iterator[None]:
    """Export the model's decode GEMVs with ``kind`` activations (the linears read it)."""
    if kind not in DECODE_ACTIVATIONS:
        raise ValueError(f"decode activations {kind!r}: expected one of {DECODE_ACTIVATIONS}")
    token = _decode_activations.set(kind)
    try:
        yield
    finally:
        _decode_activations.reset(token)


def int8_decode_applies(scheme: Scheme, in_features: int) -> bool:
    """Whether a linear exported now runs its decode GEMV on this kernel."""
    return _decode_activations.get() == "int8" and supports(scheme, in_features)


def supports(scheme: Scheme, in_features: int) -> bool:
    """Whether the int8 kernel covers a linear: 4-bit codes 8 per word, whole pairs of blocks,
    and a scale group that is one block or whole pairs."""
    if not isinstance(scheme, (SymGroupQuant, AsymGroupQuant)) or scheme.bits != 4:
        return False
    group = scheme.group_size
    return in_features % PAIR == 0 and (group == BLOCK or group % PAIR == 0)


def _pair_vector(v2: tirx.PrimExpr) -> tirx.PrimExpr:
    """[a, b] → [a, a, a, a, b, b, b, b]: one value per block for the lanes of a pair."""
    return T.Shuffle([v2, v2, v2, v2], [0, 0, 0, 0, 1, 1, 1, 1])


def gemv_int8(scheme: Scheme, n_out: int, k_in: int) -> tirx.PrimFunc:
    """``y[b, 0, n] = Σ_k x̂[b, 0, k] · deq(w)[n, k]`` with x̂ the int8 block quantization of x.

    Arguments: x [B, 1, K] fp32, the scheme's parameters (packed words [N, K/8], scales [N, G],
    zero points [N, G] for the asymmetric schemes), y [B, 1, N] fp32; B is symbolic.
    """
    assert supports(scheme, k_in), (scheme, k_in)
    asym = isinstance(scheme, AsymGroupQuant)
    group = scheme.group_size
    groups = (k_in + group - 1) // group
    words = scheme.words_per_row(k_in)  # padded to whole groups in some layouts: never read
    pairs = k_in // PAIR
    scale_dtype = scheme.model_dtype
    sym_zero = 0 if asym else scheme.max_int

    def scale_vec(s, n, p):
        if group == BLOCK:
            return T.cast(_pair_vector(s[n, T.ramp(p * 2, 1, 2)]), "float32x8")
        return T.Broadcast(T.cast(s[n, p * PAIR // group], "float32"), LANES)

    def zero_vec(z, n, p):
        if not asym:
            return T.Broadcast(T.int32(sym_zero), LANES)
        if group == BLOCK:
            return T.cast(_pair_vector(z[n, T.ramp(p * 2, 1, 2)]), "int32x8")
        return T.Broadcast(T.cast(z[n, p * PAIR // group], "int32"), LANES)

    @T.macro
    def quantize_x(x, xq, xd, xs, B):
        amax = T.decl_buffer((LANES,), "float32")
        code = T.decl_buffer((BLOCK,), "float32")
        for b, blk in T.grid(B, pairs * 2):
            for lane in T.vectorized(LANES):
                amax[lane] = T.abs(x[b, 0, blk * BLOCK + lane])
            for i, lane in T.grid(BLOCK // LANES - 1, LANES):
                amax[lane] = T.max(amax[lane], T.abs(x[b, 0, blk * BLOCK + (i + 1) * LANES + lane]))
            for lane in T.serial(1, LANES):
                amax[0] = T.max(amax[0], amax[lane])
            inv: T.float32 = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            for lane in T.vectorized(LANES // 2):
                xd[b, blk * LANES // 2 + lane] = amax[0] / T.float32(127)
            for i in T.vectorized(BLOCK):
                code[i] = T.round(x[b, 0, blk * BLOCK + i] * inv)
            for half, j in T.grid(2, BLOCK // 2):
                xq[b, blk // 2 * PAIR + half * BLOCK + blk % 2 * (BLOCK // 2) + j] = T.cast(code[2 * j + half], "int8")
        for b, p, lane in T.grid(B, pairs, LANES):
            xs[b, p * LANES + lane] = 0
            for half, j in T.grid(2, 4):
                xs[b, p * LANES + lane] = xs[b, p * LANES + lane] + T.cast(xq[b, p * PAIR + half * BLOCK + 4 * lane + j], "int32")

    @T.macro
    def dot_row(xq, xd, xs, w, s, z, y, acc, b, n):
        acc[T.ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
        for p in T.serial(pairs):
            v = w[n, T.ramp(p * 8, 1, 8)]
            low = T.reinterpret("int8x32", v & T.Broadcast(T.uint32(0x0F0F0F0F), 8))
            high = T.reinterpret("int8x32", (v >> T.Broadcast(T.uint32(4), 8)) & T.Broadcast(T.uint32(0x0F0F0F0F), 8))
            pairs16 = (T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", low, xq[b, T.ramp(p * PAIR, 1, BLOCK)])
                       + T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", high, xq[b, T.ramp(p * PAIR + BLOCK, 1, BLOCK)]))
            dots = T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs16, T.Broadcast(T.int16(1), 16))
            sums = xs[b, T.ramp(p * LANES, 1, LANES)]
            acc[T.ramp(0, 1, LANES)] = acc[T.ramp(0, 1, LANES)] + T.cast(dots - sums * zero_vec(z, n, p), "float32x8") * (
                scale_vec(s, n, p) * xd[b, T.ramp(p * LANES, 1, LANES)])
        total = T.decl_buffer((1,), "float32")
        total[0] = T.float32(0)
        for lane in T.serial(LANES):
            total[0] = total[0] + acc[lane]
        y[b, 0, n] = total[0]

    @T.macro
    def body(x, w, s, z, y, B):
        xq = T.alloc_buffer((B, pairs * PAIR), "int8")
        xd = T.alloc_buffer((B, pairs * LANES), "float32")
        xs = T.alloc_buffer((B, pairs * LANES), "int32")
        quantize_x(x, xq, xd, xs, B)
        for task in T.parallel(TASKS):
            acc = T.decl_buffer((LANES,), "float32")
            for n in T.serial(task * n_out // TASKS, (task + 1) * n_out // TASKS):
                for b in T.serial(B):  # the row's words stay in L1 for every sequence
                    dot_row(xq, xd, xs, w, s, z, y, acc, b, n)

    if asym:
        @T.prim_func
        def kernel(x_handle: T.handle, w: T.Buffer((n_out, words), "uint32"),
                   s: T.Buffer((n_out, groups), scale_dtype), z: T.Buffer((n_out, groups), "uint8"),
                   y_handle: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            B = T.int64()
            x = T.match_buffer(x_handle, (B, 1, k_in), "float32")
            y = T.match_buffer(y_handle, (B, 1, n_out), "float32")
            body(x, w, s, z, y, B)
    else:
        @T.prim_func
        def kernel(x_handle: T.handle, w: T.Buffer((n_out, words), "uint32"),
                   s: T.Buffer((n_out, groups), scale_dtype), y_handle: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            B = T.int64()
            x = T.match_buffer(x_handle, (B, 1, k_in), "float32")
            y = T.match_buffer(y_handle, (B, 1, n_out), "float32")
            body(x, w, s, None, y, B)
    return kernel.without_attr("global_symbol")  # relax names each call site's copy
