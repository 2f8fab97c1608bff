"""Fused dequantize→matmul: ONE ``te.compute`` per quantized linear, for every scheme's layout.

``y[..., n] = Σ_k x[..., k] · deq(w)[n, k]`` with the dequantization written inline in the
reduction, so the kernel reads the packed uint32 words, scales and zero points directly and no
dequantized weight is ever materialised (TVM-NOTES, "what does fuse"). ``FuseOps`` folds a following
elementwise op (bias add, SiLU) into the same PrimFunc; :mod:`.cpu_schedule` schedules it.

Layouts (``compiler/schemes.py``, drawn in ``docs/FORMAT.md``), weight [N, K], group G:

* symmetric (MLC ``q4f16_1``/``q4f32_1``/``q3f16_1``): ``E = 32 // b`` codes per word, element
  ``k`` at word ``k // E``, bits ``b·(k % E)``; ``w = (q − (2^(b−1) − 1))·s[n, k // G]``.
* asymmetric ``w{2,4}a16g*asym``: the same plain packing (16 or 8 codes per word);
  ``w{3}a16g*asym``: per run of 32 elements three words, two planes of 2-bit lows (elements 0–15,
  16–31) and one plane of high bits; ``w = (q − z[n, k // G])·s[n, k // G]``.
* NF3 ``nf3a16g*``: codes packed as ``w3a16g*asym``; ``w = level[q]·s[n, k // G, q > 3 ? 0 : 1]``,
  ``level`` the 8-entry NF3 table (:func:`nf3_dequant`).
* unquantized (``q0f16``/``q0f32``): ``w[n, k]`` cast to the compute dtype.

Padding codes past K are never read: the reduction runs over the real K only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tvm import te, tirx
from tvm.target import Target

from lowbit.compiler.schemes import (
    STORAGE_BITS,
    NF3GroupQuant,
    NoQuant,
    PackedScheme,
    Scheme,
    SymGroupQuant,
)
from lowbit.quantizer import NF3_LEVELS

MATMUL_BLOCK = "q_matmul"  # the schedule rule finds fused kernels by this block name
DEQUANT_BLOCK = "q_dequant"  # GEMM / batch: the weight panel the schedule dequantizes per N tile
PAD_BLOCK = "q_pad_rows"  # GEMM / batch: x with its rows padded to a multiple of the row tile
LANES_ATTR = "lowbit.vector_lanes"  # block annotation: how many k to vectorize together
GROUP_ATTR = "lowbit.group_size"  # block annotation (padded forms): k per scale
FORM_ATTR = "lowbit.form"  # block annotation: the schedule the form is for
WORD_ATTR = "lowbit.word_elems"  # block annotation (GPU): elements one thread takes from one word
CHUNK_ATTR = "lowbit.gpu_chunk"  # block annotation (GPU GEMV): elements per thread per step
GPU_ACC = "float32"  # GPU kernels accumulate (and dequantize) in fp32, whatever x's dtype
GEMV, GEMM, BATCH = "gemv", "gemm", "batch"
RUN = 32  # 3-bit (asymmetric, NF3): elements per run of three bit-plane words
GEMM_ROWS = 8  # rows of x per GEMM tile: prefill row counts are padded to a multiple of this
BATCH_ROWS = 2  # batch decode: sequence counts are padded to a multiple of this


def _u32(v) -> tirx.PrimExpr:
    return tirx.Cast("uint32", v) if not isinstance(v, int) else tirx.const(v, "uint32")


def _bits(word: tirx.PrimExpr, shift, width: int) -> tirx.PrimExpr:
    return (word >> _u32(shift)) & tirx.const((1 << width) - 1, "uint32")


def _planes(w: te.Tensor, n, k) -> tuple[tirx.PrimExpr, tirx.PrimExpr, tirx.PrimExpr, tirx.PrimExpr]:
    """3-bit bit planes: (low-plane word, shift of the code's bits 1..0 in it, high-plane word,
    shift of its bit 2) for element (n, k)."""
    run, j = k // RUN, k % RUN
    return w[n, run * 3 + j // 16], (j % 16) * 2, w[n, run * 3 + 2], j


def code_expr(w: te.Tensor, n, k, scheme: PackedScheme) -> tirx.PrimExpr:
    """The integer code of element (n, k) read from the packed words ``w`` [N, W] (uint32)."""
    b = scheme.bits
    if not isinstance(scheme, SymGroupQuant) and b == 3:
        low, low_shift, high, high_shift = _planes(w, n, k)
        return _bits(low, low_shift, 2) | (_bits(high, high_shift, 1) << tirx.const(2, "uint32"))
    per_word = STORAGE_BITS // b
    return _bits(w[n, k // per_word], (k % per_word) * b, b)


def _bit_set(word: tirx.PrimExpr, pos) -> tirx.PrimExpr:
    # a mask test rather than (word >> pos) & 1: vectorized over k, the low plane's ``1 << pos``
    # folds to a constant vector
    return (word & (tirx.const(1, "uint32") << _u32(pos))) != tirx.const(0, "uint32")


def nf3_dequant(w: te.Tensor, s: te.Tensor, n, k, group: int, dtype: str) -> tirx.PrimExpr:
    """``NF3_LEVELS[q]·s[n, k // group, q > 3 ? 0 : 1]`` for the 3-bit code q of (n, k).

    The lookup in the constant 8-entry table is a select tree on q's three bits, read straight
    from the bit planes (bits 0, 1 from the low-plane word, bit 2 from the high-plane word); it
    vectorizes to blends, where a table in memory would need a gather per lane.
    """
    low, low_shift, high, high_shift = _planes(w, n, k)
    bits = [_bit_set(low, low_shift), _bit_set(low, low_shift + 1), _bit_set(high, high_shift)]

    def pick(lo: int, bit: int) -> tirx.PrimExpr:
        if bit < 0:
            return tirx.const(NF3_LEVELS[lo], dtype)
        return tirx.Select(bits[bit], pick(lo + (1 << bit), bit - 1), pick(lo, bit - 1))

    pos, neg = s[n, k // group, 0].astype(dtype), s[n, k // group, 1].astype(dtype)
    return pick(0, 2) * tirx.Select(bits[2], pos, neg)  # q > 3 ⇔ bit 2


def dequant_fn(
    scheme: Scheme, params: Sequence[te.Tensor], dtype: str
) -> Callable[[tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr]:
    """``deq(n, k)`` in ``dtype`` for the scheme's parameter tensors.

    ``params``: ``[weight]`` (unquantized), ``[q_weight, q_scale]`` (symmetric, NF3) or
    ``[q_weight, q_scale, q_zero]`` (asymmetric).
    """
    if isinstance(scheme, NoQuant):
        (w,) = params
        return lambda n, k: w[n, k].astype(dtype)
    w, s = params[0], params[1]
    g = scheme.group_size
    if isinstance(scheme, NF3GroupQuant):
        return lambda n, k: nf3_dequant(w, s, n, k, g, dtype)
    if isinstance(scheme, SymGroupQuant):
        offset = tirx.const(scheme.max_int, dtype)
        return lambda n, k: (code_expr(w, n, k, scheme).astype(dtype) - offset) * s[n, k // g].astype(dtype)
    z = params[2]
    groups = s.shape[1]
    return lambda n, k: (
        (code_expr(w, n, k, scheme).astype(dtype) - zero_point(z, n, k // g, groups).astype(dtype))
        * s[n, k // g].astype(dtype)
    )


def zero_point(z: te.Tensor, n, group, groups) -> tirx.PrimExpr:
    """Zero point of (n, group): z uint8 [N, G], or the same bytes viewed as uint32 words [N·G/4]
    (:func:`zero_points_as_words`), byte i of the row-major bytes at bits 8·(i % 4) of word i // 4."""
    if z.dtype == "uint8":
        return z[n, group]
    i = n * groups + group
    return _bits(z[i // 4], (i % 4) * 8, 8)


def zero_points_as_words() -> bool:
    """Whether the target in scope reads the uint8 zero points as words: WGSL has no 8-bit
    storage buffers."""
    target = Target.current(allow_none=True)
    return target is not None and target.kind.name == "webgpu"


def vector_lanes(scheme: Scheme, k: int) -> int:
    """How many consecutive k to vectorize: the codes of one word (so the word index and the
    group are the same for every lane and each lane only shifts), or 16 unquantized floats."""
    if isinstance(scheme, NoQuant):
        lanes = 16
    elif not isinstance(scheme, SymGroupQuant) and scheme.bits == 3:
        lanes = 16  # one 2-bit plane word; the high-bit word covers 32
    else:
        lanes = STORAGE_BITS // scheme.bits
    return math.gcd(lanes, k)


def word_elems(scheme: Scheme) -> int:
    """Elements whose codes sit in one word (a 2-bit plane word for the 3-bit bit-plane layouts;
    4 floats unquantized): what one GPU thread dequantizes from one load."""
    if isinstance(scheme, NoQuant):
        return 4
    if not isinstance(scheme, SymGroupQuant) and scheme.bits == 3:
        return 16
    return STORAGE_BITS // scheme.bits


def packed_k(scheme: Scheme, k: int) -> int:
    """Elements the stored row covers: K rounded up to whole groups (codes past K are 0)."""
    if isinstance(scheme, NoQuant):
        return k
    return scheme.num_groups(k) * scheme.group_size


def gpu_chunk(scheme: Scheme, k: int) -> int:
    """GPU GEMV: elements one thread reduces per step, read as whole words (a vector load).

    4 words for the plain packings (32 codes at 4 bits, 64 at 2); up to 4 runs of 32 for the bit
    planes (12 words: 3 vector loads); 8 floats unquantized. The chunk divides the packed row, so
    the last chunk that starts before K never reads past the stored words.
    """
    padded = packed_k(scheme, k)
    if isinstance(scheme, NoQuant):
        units, unit = (8, 4, 2, 1), 1
    elif not isinstance(scheme, SymGroupQuant) and scheme.bits == 3:
        units, unit = (4, 2, 1), RUN
    else:
        units, unit = (4, 2, 1), STORAGE_BITS // scheme.bits
    return next(unit * u for u in units if padded % (unit * u) == 0)


def _gpu_matmul(x: te.Tensor, params: Sequence[te.Tensor], scheme: Scheme, k_dim: int, symbolic: bool) -> te.Tensor:
    """The GPU forms (:mod:`.gpu_schedule`), accumulated in :data:`GPU_ACC`.

    Decode (no symbolic axis): :data:`GEMV`, the dequantization inline in the reduction. Prefill
    and batch decode: :data:`GEMM`, the weight in its own ``q_dequant`` block, which the schedule
    computes one tile at a time into shared memory.
    """
    deq = dequant_fn(scheme, params, GPU_ACC)
    *lead, _ = x.shape
    n_dim = params[0].shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    attrs = {FORM_ATTR: GEMM if symbolic else GEMV, WORD_ATTR: word_elems(scheme),
             CHUNK_ATTR: gpu_chunk(scheme, k_dim)}
    w = te.compute((n_dim, k_dim), deq, name=DEQUANT_BLOCK) if symbolic else None
    weight = (lambda n, kk: w[n, kk]) if symbolic else deq
    y = te.compute((*lead, n_dim), lambda *i: te.sum(x[(*i[:-1], k)].astype(GPU_ACC) * weight(i[-1], k), axis=k),
                   name=MATMUL_BLOCK, attrs=attrs)
    if x.dtype == GPU_ACC:
        return y
    return te.compute(y.shape, lambda *i: y[i].astype(x.dtype), name="q_matmul_cast")


def _cpu_schedule() -> bool:
    """Whether the kernel is being exported for the CPU schedule (no GPU target in scope)."""
    target = Target.current(allow_none=True)
    return target is None or target.kind.name == "llvm"


def q_matmul_te(scheme: Scheme, in_features: int) -> Callable[..., te.Tensor]:
    """A TE function ``f(x, *params) -> y`` for ``op.tensor_expr_op``: x [..., K] → y [..., N].

    The form depends on which leading axis of x is symbolic (the block's ``lowbit.form``):

    * none (decode, one row): :data:`GEMV`, the dequantization inline in the reduction;
    * the last, tokens (prefill): :data:`GEMM`, rows padded to :data:`GEMM_ROWS`;
    * an earlier one, sequences (batch decode, x [B, 1, K]): :data:`BATCH`, rows padded to
      :data:`BATCH_ROWS`.

    In the padded forms x is copied with zero rows appended, the weight gets its own
    ``q_dequant`` block (which the schedule computes one N tile at a time, for all rows) and a
    copy block keeps the real rows, so the scheduled row tiles need no bounds predicate. Exported
    under a GPU target (``with target:``) the kernels take the GPU forms instead
    (:func:`_gpu_matmul`).
    """

    def f(x: te.Tensor, *params: te.Tensor) -> te.Tensor:
        deq = dequant_fn(scheme, params, x.dtype)
        *lead, k_dim = x.shape
        if int(k_dim) != in_features:
            raise ValueError(f"input has K={k_dim}, weight expects {in_features}")
        n_dim = params[0].shape[0]
        k = te.reduce_axis((0, in_features), name="k")
        lanes = vector_lanes(scheme, in_features)
        symbolic = [a for a, d in enumerate(lead) if not isinstance(d, (int, tirx.IntImm))]
        if not _cpu_schedule():
            return _gpu_matmul(x, params, scheme, in_features, bool(symbolic))
        if not symbolic:
            return te.compute(
                (*lead, n_dim), lambda *i: te.sum(x[(*i[:-1], k)] * deq(i[-1], k), axis=k),
                name=MATMUL_BLOCK, attrs={LANES_ATTR: lanes, FORM_ATTR: GEMV},
            )
        axis = symbolic[-1]
        form, tile = (GEMM, GEMM_ROWS) if axis == len(lead) - 1 else (BATCH, BATCH_ROWS)
        rows = lead[axis]
        group = getattr(scheme, "group_size", lanes)
        padded = [*lead[:axis], (rows + tile - 1) // tile * tile, *lead[axis + 1:]]
        w = te.compute((n_dim, in_features), deq, name=DEQUANT_BLOCK)
        xp = te.compute(
            (*padded, in_features),
            lambda *i: tirx.if_then_else(i[axis] < rows, x[i], tirx.const(0, x.dtype)),
            name=PAD_BLOCK,
        )
        y = te.compute(
            (*padded, n_dim), lambda *i: te.sum(xp[(*i[:-1], k)] * w[i[-1], k], axis=k),
            name=MATMUL_BLOCK, attrs={LANES_ATTR: lanes, FORM_ATTR: form, GROUP_ATTR: group},
        )
        return te.compute((*lead, n_dim), lambda *i: y[i], name="q_matmul_rows")

    return f


def q_embed_te(scheme: Scheme, hidden: int, dtype: str) -> Callable[..., te.Tensor]:
    """A TE function ``f(ids, *params) -> rows``: dequantize only the looked-up rows."""

    def f(ids: te.Tensor, *params: te.Tensor) -> te.Tensor:
        deq = dequant_fn(scheme, params, dtype)
        return te.compute((*ids.shape, hidden), lambda *i: deq(ids[i[:-1]], i[-1]), name="q_embed")

    return f
