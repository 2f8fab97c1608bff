"""Prefill GEMM with 8-bit activations on integer dot products, for 4-, 3- and 2-bit weights.

``lowbit compile --prefill-activations int8`` swaps this kernel in for the fused fp32 GEMM of
every linear it supports whose input is a prefill chunk (x [1, T, K], T tokens). Activations are
quantized as the decode kernel's (:mod:`.gemv_int8`, :func:`lowbit.quantizer.fake_quantize_blocks_int8`):
per block of 32 consecutive k, ``d = max|x| / 127``, codes ``c = round(x · 127 / max|x|)``.

Layout. Each parallel task takes a *panel* of :data:`COLS` output features and first unpacks
their codes from MLC's layout into bytes, k in natural order, four consecutive k per uint32:
``panel[k // 4, col]`` (4-bit words spread nibble → byte, 2-bit crumb → byte, 3-bit runs their
two low bits with the high plane's bit at bit 2). A step of 4 k is then one broadcast of the
row's four activation codes (one int32) against the panel's 16 columns: one 512-bit ``vpdpbusd``
(AVX-512 VNNI: unsigned codes × signed activations, 4 products summed into each int32 lane) or,
on AVX2, per 8-column half ``vpmaddubsw`` + ``vpmaddwd`` by ones (pairs at most 2·15·127, far from
int16's limit). A tile (:data:`TILES`: 8 rows on VNNI, 4 on AVX2) × 16 columns keeps its int32 sums for one activation
block (8 steps), then adds ``Σ q·c · s_w · d`` to fp32 accumulators (a convert and two multiplies
per vector); z is the group's zero point (``2^(b−1) − 1`` for symmetric codes), and its term
``z · s_w · Σ_{blocks of the group} d · Σ c`` is subtracted once per group at the end of the tile,
``d · Σ c`` summed per row and group while x is quantized. Weight groups are whole blocks (G a
multiple of 32), so one scale and zero serve a block.
Each panel is unpacked once for all T rows, its 16 columns side by side in vector lanes.

``--decode-activations int8`` also runs this GEMM for ``batch_decode`` from :data:`GEMM_MIN_ROWS`
sequences on (:func:`batch_decode_int8`: x [B, 1, K] is the same memory as [1, B, K]); fewer
sequences keep the GEMV, whose activation quantization is the same.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.artifact import PREFILL_ACTIVATIONS
from lowbit.compiler.kernels.gemv_int8 import (
    activations_during_export,
    cached_per_isa,
    gemv_body,
    has_vnni,
    linear_kernel,
)
from lowbit.compiler.schemes import AsymGroupQuant, Scheme, SymGroupQuant

BLOCK = 32  # k per activation scale
STEPS = BLOCK // 4  # 4-k dot-product steps per block
LANES = 8  # int32 / fp32 lanes of a 256-bit register
COLS = 2 * LANES  # output features per panel: two vectors side by side
# register tile, by ISA: (rows, int32 lanes per vector). AVX2: 4 rows × two 8-lane vectors;
# AVX-512 VNNI: 8 rows × one 16-lane vector (its 32 registers hold the 8 int32 and 8 fp32 sums)
TILES = {False: (4, 8), True: (8, 16)}
RUN_STEPS = {4: 2, 2: 4, 3: 8}  # 4-k steps per packed word (3-bit: per run of three words)
# batch decode: sequences from which the GEMM beats the GEMV's loop. Kernel alone, 2 threads, the
# bundled model's qkv / gate_up / down shapes, q4f16_1 and w2a16g128asym: even at 8 (0.9–1.1×),
# 1.3–1.6× at 16, 1.7–2.1× at 32. The whole model's batch_decode (q4f16_1, int8 decode): 0.73×
# at 8, 1.06× at 16, 1.45× at 32 (403 vs 279 tok/s, with another job on the cores).
GEMM_MIN_ROWS = 16

_prefill_activations: ContextVar[str] = ContextVar("lowbit_prefill_activations", default="fp")


def prefill_activations(kind: str) -> AbstractContextManager[None]:
    """Export the model's prefill matmuls with ``kind`` activations."""
    return activations_during_export(_prefill_activations, "prefill", kind, PREFILL_ACTIVATIONS)


def int8_prefill_applies(scheme: Scheme, in_features: int, out_features: int) -> bool:
    """Whether a linear exported now runs its prefill matmul on this kernel."""
    return _prefill_activations.get() == "int8" and supports(scheme, in_features, out_features)


def supports(scheme: Scheme, in_features: int, out_features: int) -> bool:
    """Whether the int8 GEMM covers a linear: 4-, 3- or 2-bit asymmetric or 4- or 2-bit
    symmetric codes, K whole activation blocks, groups of whole blocks, N whole panels."""
    bits = (2, 4) if isinstance(scheme, SymGroupQuant) else (2, 3, 4)
    return (isinstance(scheme, (SymGroupQuant, AsymGroupQuant)) and scheme.bits in bits
            and in_features % BLOCK == 0 and scheme.group_size % BLOCK == 0
            and out_features % COLS == 0)


def _spread4(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """uint32 whose byte i is nibble i of ``v``'s low 16 bits."""
    v = (v | (v << T.uint32(8))) & T.uint32(0x00FF00FF)
    return (v | (v << T.uint32(4))) & T.uint32(0x0F0F0F0F)


def _spread2(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """uint32 whose byte i is 2-bit crumb i of ``v``'s low 8 bits."""
    v = (v | (v << T.uint32(12))) & T.uint32(0x000F000F)
    return (v | (v << T.uint32(6))) & T.uint32(0x03030303)


def _spread1(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """uint32 whose byte i is bit i of ``v``'s low 4 bits."""
    v = (v | (v << T.uint32(14))) & T.uint32(0x00030003)
    return (v | (v << T.uint32(7))) & T.uint32(0x01010101)


@cached_per_isa
def gemm_int8(scheme: Scheme, n_out: int, k_in: int) -> tirx.PrimFunc:
    """``y[0, t, n] = Σ_k x̂[0, t, k] · deq(w)[n, k]`` with x̂ the int8 block quantization of x:
    x [1, T, K] (:func:`~.gemv_int8.linear_kernel`). Built for ``Target.current()``:
    ``vpdpbusd`` where it has AVX-512 VNNI, AVX2's pair sums elsewhere."""
    return linear_kernel(scheme, n_out, k_in, gemm_body(scheme, n_out, k_in), one_token_rows=False)


@cached_per_isa
def batch_decode_int8(scheme: Scheme, n_out: int, k_in: int) -> tirx.PrimFunc:
    """Batch decode's int8 linear, x [B, 1, K]: :func:`~.gemv_int8.gemv_int8`'s loop below
    :data:`GEMM_MIN_ROWS` sequences, this module's GEMM from there on (the same activation
    quantization, so the same result up to fp32 summation order)."""
    gemv, gemm = gemv_body(scheme, n_out, k_in), gemm_body(scheme, n_out, k_in)

    @T.macro
    def body(x, w, s, z, y, rows):
        if rows < GEMM_MIN_ROWS:
            gemv(x, w, s, z, y, rows)
        else:  # [B, 1, K] is [1, B, K]: the GEMM's rows
            x_rows = T.decl_buffer((1, rows, k_in), "float32", data=x.data)
            y_rows = T.decl_buffer((1, rows, n_out), "float32", data=y.data)
            gemm(x_rows, w, s, z, y_rows, rows)

    return linear_kernel(scheme, n_out, k_in, body, one_token_rows=True)


def gemm_body(scheme: Scheme, n_out: int, k_in: int):
    """The GEMM's body macro, ``body(x, w, s, z, y, T)`` over x [1, T, K]."""
    assert supports(scheme, k_in, n_out), (scheme, k_in, n_out)
    vnni = has_vnni(Target.current(allow_none=True))
    asym = isinstance(scheme, AsymGroupQuant)
    bits, group = scheme.bits, scheme.group_size
    groups, steps = -(-k_in // group), k_in // 4
    blocks = k_in // BLOCK

    rows_per_tile, width = TILES[vnni]
    vecs = COLS // width  # vectors per row of the tile

    def dot(acc, w4, x4):
        """acc (int32 × width) + per lane Σ of 4 code bytes (w4, uint) × activation bytes (x4, signed)."""
        if vnni:
            return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                                           T.reinterpret("int8x64", w4), T.reinterpret("int8x64", x4))
        pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw",
                                        T.reinterpret("int8x32", w4), T.reinterpret("int8x32", x4))
        return acc + T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.Broadcast(T.int16(1), 16))

    def codes4(w, n, step):
        """uint32: the codes of k = 4·step … 4·step + 3 of row n, one per byte."""
        if bits == 4:
            return _spread4((w[n, step // 2] >> T.uint32(16 * (step % 2))) & T.uint32(0xFFFF))
        if bits == 2:
            return _spread2((w[n, step // 4] >> T.uint32(8 * (step % 4))) & T.uint32(0xFF))
        # 3-bit: per run of 32 elements, lows of 0–15, lows of 16–31, then the 32 high bits
        run, j = step // 8, (step % 8) * 4
        low = (w[n, run * 3 + j // 16] >> T.uint32(2 * (j % 16))) & T.uint32(0xFF)
        high = (w[n, run * 3 + 2] >> T.uint32(j)) & T.uint32(0xF)
        return _spread2(low) | (_spread1(high) << T.uint32(2))

    def zero_of(z, n, g):
        return T.cast(z[n, g], "int32") if asym else T.int32(scheme.max_int)

    @T.macro
    def quantize_x(x, xq, xd, xsd, rows):
        """xq [rows, K/4] (four codes per int32), xd [rows, K/32]: the blocks' scales, xsd
        [rows, groups]: Σ d · Σ c over each weight group's blocks; one parallel task per row."""
        for t in T.parallel(rows):
            amax = T.decl_buffer((LANES,), "float32")
            code = T.decl_buffer((BLOCK,), "int8")
            total = T.decl_buffer((1,), "int32")
            for g in T.serial(groups):
                xsd[t, g] = T.float32(0)
            for blk in T.serial(blocks):
                for lane in T.vectorized(LANES):
                    amax[lane] = T.abs(x[0, t, blk * BLOCK + lane])
                for i, lane in T.grid(BLOCK // LANES - 1, LANES):
                    amax[lane] = T.max(amax[lane], T.abs(x[0, t, blk * BLOCK + (i + 1) * LANES + lane]))
                for lane in T.serial(1, LANES):
                    amax[0] = T.max(amax[0], amax[lane])
                inv: T.let[T.float32] = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
                xd[t, blk] = amax[0] / T.float32(127)
                for i in T.vectorized(BLOCK):
                    code[i] = T.cast(T.round(x[0, t, blk * BLOCK + i] * inv), "int8")
                total[0] = 0
                for i in T.serial(BLOCK):
                    total[0] = total[0] + T.cast(code[i], "int32")
                xsd[t, blk * BLOCK // group] = xsd[t, blk * BLOCK // group] + xd[t, blk] * T.cast(total[0], "float32")
                for i in T.serial(STEPS):
                    xq[t, blk * STEPS + i] = T.reinterpret("int32", code[T.ramp(4 * i, 1, 4)])

    @T.macro
    def body(x, w, s, z, y, rows):
        xq = T.alloc_buffer((rows, steps), "int32")
        xd = T.alloc_buffer((rows, blocks), "float32")
        xsd = T.alloc_buffer((rows, groups), "float32")
        quantize_x(x, xq, xd, xsd, rows)
        for p in T.parallel(n_out // COLS):
            panel = T.decl_buffer((steps, COLS), "uint32")
            scale = T.decl_buffer((groups, COLS), "float32")
            zero = T.decl_buffer((groups, COLS), "float32")  # z · s_w
            acc = T.decl_buffer((rows_per_tile * vecs, width), "int32")
            out = T.decl_buffer((rows_per_tile * vecs, width), "float32")
            # the panel's 16 columns side by side in vector lanes, the steps that share a word
            # (or a 3-bit run's three) unrolled together, so each word is loaded once
            for run in T.serial(steps // RUN_STEPS[bits]):
                for i in T.unroll(RUN_STEPS[bits]):
                    for c in T.vectorized(COLS):
                        panel[run * RUN_STEPS[bits] + i, c] = codes4(w, p * COLS + c, run * RUN_STEPS[bits] + i)
            for g, c in T.grid(groups, COLS):
                scale[g, c] = T.cast(s[p * COLS + c, g], "float32")
                zero[g, c] = T.cast(zero_of(z, p * COLS + c, g), "float32") * scale[g, c]
            for tile in T.serial((rows + rows_per_tile - 1) // rows_per_tile):
                for a in T.unroll(rows_per_tile * vecs):
                    out[a, T.ramp(0, 1, width)] = T.Broadcast(T.float32(0), width)
                for blk in T.serial(blocks):
                    for a in T.unroll(rows_per_tile * vecs):
                        acc[a, T.ramp(0, 1, width)] = T.Broadcast(T.int32(0), width)
                    for i in T.unroll(STEPS):
                        for r in T.unroll(rows_per_tile):  # rows past T read row T − 1; not stored
                            for v in T.unroll(vecs):
                                acc[r * vecs + v, T.ramp(0, 1, width)] = dot(
                                    acc[r * vecs + v, T.ramp(0, 1, width)],
                                    panel[blk * STEPS + i, T.ramp(v * width, 1, width)],
                                    T.Broadcast(xq[T.min(tile * rows_per_tile + r, rows - 1), blk * STEPS + i], width))
                    g: T.let[T.int32] = blk * BLOCK // group
                    for r in T.unroll(rows_per_tile):
                        row: T.let = T.min(tile * rows_per_tile + r, rows - 1)  # rows: int64 in a model
                        for v in T.unroll(vecs):
                            out[r * vecs + v, T.ramp(0, 1, width)] = out[r * vecs + v, T.ramp(0, 1, width)] + T.cast(
                                acc[r * vecs + v, T.ramp(0, 1, width)], f"float32x{width}") * (
                                scale[g, T.ramp(v * width, 1, width)] * T.Broadcast(xd[row, blk], width))
                for g in T.serial(groups):
                    for r in T.unroll(rows_per_tile):
                        row: T.let = T.min(tile * rows_per_tile + r, rows - 1)  # rows: int64 in a model
                        for v in T.unroll(vecs):
                            out[r * vecs + v, T.ramp(0, 1, width)] = out[r * vecs + v, T.ramp(0, 1, width)] - (
                                zero[g, T.ramp(v * width, 1, width)] * T.Broadcast(xsd[row, g], width))
                for r in T.serial(rows_per_tile):
                    if tile * rows_per_tile + r < rows:
                        for c in T.vectorized(COLS):
                            y[0, tile * rows_per_tile + r, p * COLS + c] = out[r * vecs + c // width, c % width]

    return body
