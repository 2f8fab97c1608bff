"""Decode GEMV with 8-bit activations on AVX2 (or VNNI) integer dot products, for 4-, 3-, 2- and 8-bit weights.

``lowbit compile --decode-activations int8`` swaps this kernel in for the fused fp32 GEMV of every
linear it supports whose input is one token per sequence (x [B, 1, K]: ``decode``,
``batch_decode``, and prefill's lm_head over the last position). Prefill's other matmuls keep fp
activations. The weights stay in MLC's layout; only x is re-laid out, once per call.

Activations (:func:`lowbit.quantizer.fake_quantize_blocks_int8` is the same math in PyTorch): each
block of 32 consecutive k gets ``d = max|x| / 127`` and codes ``c = round(x · (127 / max|x|))``
(half to even; a zero block gets d = c = 0). ``--decode-activations int8x2`` adds a second code per
element for what the first leaves, ``c₂ = round((x · 127 / max|x| − c) · 254)``, with scale d / 254:
the activations' rounding error shrinks 254-fold. Each sequence becomes two activation rows that
share every loaded run of weight codes, as batch decode's sequences do, and their lane sums meet
in int32 as ``254 · Σ q·c + Σ q·c₂``, scaled once by ``s_w · d / 254``.

Why the weights need no repacking: a b-bit row (b = 4 or 2, plain packing) stores element k in
bits b·(k % E) of word k // E, E = 32 / b. A *run* of 8 words (32 bytes) holds R = 256 / b
elements, and byte j of it holds elements P·j + i in bits b·i, for the P = 8 / b *planes* i. One
32-byte load, shifted by b·i and masked per byte, gives the codes of plane i; x is stored per run
in the same order (``xq[b, R·r + 32·i + j]`` = code of element R·r + P·j + i), so P
``vpmaddubsw`` (unsigned codes × signed activations, pairs summed to int16: at most
P·2·(2^b − 1)·127 ≤ 7620) and one ``vpmaddwd`` by ones give eight int32 sums, lane l covering
elements R·r + (R/8)·l … of one activation block. On targets with AVX-512 VNNI (``+avx512vnni``,
:func:`has_vnni`) one ``vpdpbusd`` per plane does both steps, accumulating in int32. The zero point comes out as ``Σ q·c − z·Σ c``
with the lane sums of c precomputed (``xs``); the float result is ``(Σ q·c − z·Σ c) · s_w · d``
per lane, accumulated in eight fp32 lanes and summed once per output row.

Work is split over :data:`TASKS` parallel tasks by output rows. One sequence runs its rows one
after the other; several (``batch_decode``, below :data:`.gemm_int8.GEMM_MIN_ROWS` sequences,
where the int8 GEMM takes over) take each row in turn for all of them, four at a time with their
accumulators side by side, so each run of codes is loaded and unpacked once per four sequences
and the row stays in L1 for the rest.

3-bit weights (``w3a16g*asym``) store each run of 32 elements as two words of 2-bit lows
(elements 0–15, 16–31) and one word of high bits. The low words of four such runs, in order, are
exactly a 2-bit row's run of R = 128 elements, so a step loads those 12 words (three 16-byte
loads), shuffles the eight low words into one register and treats them as 2-bit codes, and adds
each element's high bit: the four high words are 128 bits, bit e for element e; byte j of plane i
needs bit 4j + i, so each high byte is duplicated (byte j = high byte j // 2), and plane i tests
bit 4·(j % 2) + i of byte j and adds 4 to the code where it is set (on AVX-512 a ``vptestnmb`` and
a masked byte move per plane). Codes up to 7: pairs at most 2·7·127, four planes at most 7112.

8-bit weights (the ``…_q8head`` schemes' lm_head, symmetric: ``w = (q − 127)·s``) are one plane
of 32 codes per 32-byte load, so x keeps its order. Unsigned codes up to 254 times activations up
to 127 would overflow ``vpmaddubsw``'s int16 pairs, so each load becomes the signed ``q − 127``
and takes the activations' signs (``vpsignb``), against ``|c|`` (pairs at most 2·127² < 2^15),
as llama.cpp's Q8_0 dot product does; the zero point is then already subtracted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from functools import cache, wraps

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from lowbit.artifact import DECODE_ACTIVATIONS, INT8_CODES
from lowbit.compiler.schemes import AsymGroupQuant, Scheme, SymGroupQuant

RUN_BYTES = 32  # packed bytes per step: one 256-bit load
BLOCK = 32  # k per activation scale
LANES = 8  # int32 / fp32 lanes of a 256-bit register
SEQS = 4  # batch decode: activation rows (sequences × terms) sharing each loaded run of codes
RESIDUAL = 254  # int8x2: the second code counts 1/254 of the first's step
TASKS = 8  # parallel tasks: each allocates its accumulator once, then runs a range of rows


_decode_activations: ContextVar[str] = ContextVar("lowbit_decode_activations", default="fp")


@contextmanager
def activations_during_export(var: ContextVar[str], what: str, kind: str,
                              kinds: tuple[str, ...]) -> Iterator[None]:
    """Within the block, ``var`` (which the linears read at export) says ``what`` matmuls run on
    ``kind`` activations, one of ``kinds``."""
    if kind not in kinds:
        raise ValueError(f"{what} activations {kind!r}: expected one of {kinds}")
    token = var.set(kind)
    try:
        yield
    finally:
        var.reset(token)


def decode_activations(kind: str) -> AbstractContextManager[None]:
    """Export the model's decode GEMVs with ``kind`` activations."""
    return activations_during_export(_decode_activations, "decode", kind, DECODE_ACTIVATIONS)


def int8_decode_applies(scheme: Scheme, in_features: int) -> bool:
    """Whether a linear exported now runs its decode GEMV on this kernel."""
    return INT8_CODES[_decode_activations.get()] > 0 and supports(scheme, in_features)


def decode_terms() -> int:
    """int8 codes per activation of the decode GEMVs exported now (1: int8, 2: int8x2)."""
    return INT8_CODES[_decode_activations.get()]


def _step(bits: int) -> tuple[int, int]:
    """(elements, packed words) of one kernel step: one 32-byte register of codes per plane."""
    if bits == 3:
        return 128, 12  # four 3-bit runs: their 2-bit lows fill the register as 2-bit codes would
    return RUN_BYTES * 8 // bits, RUN_BYTES // 4


def supports(scheme: Scheme, in_features: int) -> bool:
    """Whether the int8 kernel covers a linear: 4-, 3- or 2-bit asymmetric or 4-, 2- or 8-bit
    symmetric codes (MLC's layouts), K whole activation blocks, rows stored with whole steps (a
    last partial step reads the row's padding to whole groups, against zero activations), scale
    groups that are whole steps or whole lanes of one."""
    bits = (2, 4, 8) if isinstance(scheme, SymGroupQuant) else (2, 3, 4)
    if not isinstance(scheme, (SymGroupQuant, AsymGroupQuant)) or scheme.bits not in bits:
        return False
    run, words = _step(scheme.bits)
    group = scheme.group_size
    runs = -(-in_features // run)
    return (in_features % BLOCK == 0 and scheme.words_per_row(in_features) >= runs * words
            and (group % run == 0 or (run % group == 0 and group % (run // LANES) == 0)))


def has_vnni(target: Target | None) -> bool:
    """Whether ``target`` is an llvm target with AVX-512 VNNI (``vpdpbusd``)."""
    return (target is not None and target.kind.name == "llvm"
            and "+avx512vnni" in [str(a) for a in target.attrs.get("mattr", [])])


def cached_per_isa(builder: Callable[..., tirx.PrimFunc]) -> Callable[..., tirx.PrimFunc]:
    """``builder`` cached on its arguments and on whether ``Target.current()`` has VNNI, the one
    thing of the target these kernels read: every layer's linears ask for the same few."""
    built = cache(lambda vnni, args, options: builder(*args, **dict(options)))

    @wraps(builder)
    def build(*args, **options) -> tirx.PrimFunc:
        return built(has_vnni(Target.current(allow_none=True)), args, tuple(sorted(options.items())))

    build.cache_info, build.cache_clear = built.cache_info, built.cache_clear  # type: ignore[attr-defined]
    return build


def _per_lane(values: tirx.PrimExpr, count: int, run: int, group: int) -> tirx.PrimExpr:
    """The ``count`` per-group values of one run spread over the lanes: lane l gets the value of
    the group holding its elements (run/8 of them, from (run/8)·l)."""
    return T.Shuffle([values] * (LANES // count), [(lane * (run // LANES)) // group for lane in range(LANES)])


def linear_kernel(scheme: Scheme, n_out: int, k_in: int, body, one_token_rows: bool) -> tirx.PrimFunc:
    """The PrimFunc of an int8-activation linear: arguments x fp32, the scheme's parameters
    (packed words [N, W], scales [N, G], zero points [N, G] for the asymmetric schemes), y fp32;
    x [B, 1, K] and y [B, 1, N] (``one_token_rows``: decode) or x [1, T, K] and y [1, T, N]
    (prefill), the rows symbolic. Its body is ``body(x, w, s, z, y, rows)`` (z None when
    symmetric)."""
    words, groups, scale_dtype = scheme.words_per_row(k_in), scheme.num_groups(k_in), scheme.model_dtype

    if isinstance(scheme, AsymGroupQuant):
        @T.prim_func
        def kernel(x_handle: T.handle, w: T.Buffer((n_out, words), "uint32"),
                   s: T.Buffer((n_out, groups), scale_dtype), z: T.Buffer((n_out, groups), "uint8"),
                   y_handle: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            rows = T.int64()
            x = T.match_buffer(x_handle, (rows, 1, k_in) if one_token_rows else (1, rows, k_in), "float32")
            y = T.match_buffer(y_handle, (rows, 1, n_out) if one_token_rows else (1, rows, n_out), "float32")
            body(x, w, s, z, y, rows)
    else:
        @T.prim_func
        def kernel(x_handle: T.handle, w: T.Buffer((n_out, words), "uint32"),
                   s: T.Buffer((n_out, groups), scale_dtype), y_handle: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            rows = T.int64()
            x = T.match_buffer(x_handle, (rows, 1, k_in) if one_token_rows else (1, rows, k_in), "float32")
            y = T.match_buffer(y_handle, (rows, 1, n_out) if one_token_rows else (1, rows, n_out), "float32")
            body(x, w, s, None, y, rows)
    return kernel.without_attr("global_symbol")  # relax names each call site's copy


@cached_per_isa
def gemv_int8(scheme: Scheme, n_out: int, k_in: int, terms: int = 1) -> tirx.PrimFunc:
    """``y[b, 0, n] = Σ_k x̂[b, 0, k] · deq(w)[n, k]`` with x̂ the int8 block quantization of x in
    ``terms`` codes (:func:`lowbit.quantizer.fake_quantize_blocks_int8`): x [B, 1, K]
    (:func:`linear_kernel`)."""
    return linear_kernel(scheme, n_out, k_in, gemv_body(scheme, n_out, k_in, terms), one_token_rows=True)


def gemv_body(scheme: Scheme, n_out: int, k_in: int, terms: int = 1):
    """The GEMV's body macro, ``body(x, w, s, z, y, B)`` over x [B, 1, K] (:func:`linear_kernel`);
    built for ``Target.current()``. With ``terms`` = 2 each sequence is two activation rows,
    its codes and its residual codes (scale d / 254), dotted with each run of weight codes as it
    is loaded, as batch decode's sequences are."""
    assert supports(scheme, k_in) and terms in (1, 2), (scheme, k_in, terms)
    vnni = has_vnni(Target.current(allow_none=True))
    asym = isinstance(scheme, AsymGroupQuant)
    bits, group = scheme.bits, scheme.group_size
    signed = bits == 8  # the codes become signed in the dot product, which subtracts the zero point
    run, step_words = _step(bits)  # elements and packed words per step
    planes = run // RUN_BYTES
    low_bits = 2 if bits == 3 else bits  # bits per code in the plain-packed register
    runs = -(-k_in // run)  # a partial last run reads padding codes, against zero activations
    blocks_per_run = run // BLOCK
    mask = T.Broadcast(T.uint32(int.from_bytes(bytes([(1 << low_bits) - 1]) * 4, "little")), 8)
    per_run = run // group  # groups in a run (0: a group spans runs)
    seqs = SEQS // terms  # batch decode: sequences per loaded run of codes

    def scale_vec(s, n, r):
        if per_run <= 1:
            return T.Broadcast(T.cast(s[n, r * run // group], "float32"), LANES)
        return T.cast(_per_lane(s[n, T.ramp(r * per_run, 1, per_run)], per_run, run, group), "float32x8")

    def zero_vec(z, n, r):
        if not asym:
            return T.Broadcast(T.int32(scheme.max_int), LANES)
        if per_run <= 1:
            return T.Broadcast(T.cast(z[n, r * run // group], "int32"), LANES)
        return T.cast(_per_lane(z[n, T.ramp(r * per_run, 1, per_run)], per_run, run, group), "int32x8")

    def load(w, n, r):
        """The step's codes as one uint32x8 of plain-packed codes, and (3-bit) its high-bit words."""
        if bits != 3:
            return w[n, T.ramp(r * 8, 1, 8)], None
        parts = [w[n, T.ramp(r * step_words + 4 * i, 1, 4)] for i in range(3)]
        return T.Shuffle(parts, [0, 1, 3, 4, 6, 7, 9, 10]), T.Shuffle(parts, [2, 5, 8, 11])

    def high_pairs(high):
        """uint8x32 whose bytes 2m and 2m + 1 are both byte m of the 128 high bits."""
        return T.Shuffle([T.reinterpret("uint8x16", high)] * 2, [k // 2 for k in range(32)])

    def with_high_plane(plain, pairs, i):
        """Plane i's codes with their high bits: byte j of the plane is element 4j + i, whose
        high bit is bit 4·(j % 2) + i of pair byte j; where it is set, the code gains 4 (one
        byte test and one masked add on AVX-512)."""
        select = T.reinterpret("uint8x32", T.Broadcast(T.uint16((1 << i) | (1 << (12 + i))), 16))
        codes = T.reinterpret("uint8x32", plain)
        return T.Select((pairs & select) != T.Broadcast(T.uint8(0), RUN_BYTES),
                        codes | T.Broadcast(T.uint8(4), RUN_BYTES), codes)

    def dot_sum(pairs):
        """int32x8: lane l sums bytes 4l … 4l + 3 of every (unsigned, signed) int8x32 pair."""
        if vnni:  # one vpdpbusd per pair, accumulating in int32
            acc = T.Broadcast(T.int32(0), LANES)
            for a, b in pairs:
                acc = T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx512.vpdpbusd.256", acc, a, b)
            return acc
        pairs16 = None  # vpmaddubsw per pair, summed in int16 (bounded above), one vpmaddwd
        for a, b in pairs:
            part = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", a, b)
            pairs16 = part if pairs16 is None else pairs16 + part
        return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs16, T.Broadcast(T.int16(1), 16))

    def dots(words, xq, b, r):
        """int32x8 lane sums of codes (``q − 127`` when ``signed``) × activation codes over one run."""
        v, high = words
        if signed:
            xr = xq[b, T.ramp(r * run, 1, RUN_BYTES)]
            codes = T.reinterpret("int8x32", v) - T.Broadcast(T.int8(scheme.max_int), RUN_BYTES)
            return dot_sum([(T.abs(xr), T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", codes, xr))])
        highs = None if high is None else high_pairs(high)
        pairs = []
        for i in range(planes):
            plain = (v >> T.Broadcast(T.uint32(low_bits * i), 8)) & mask
            codes = T.reinterpret("int8x32", plain if high is None else with_high_plane(plain, highs, i))
            pairs.append((codes, xq[b, T.ramp(r * run + i * RUN_BYTES, 1, RUN_BYTES)]))
        return dot_sum(pairs)

    def centred_dots(words, xq, xs, z, b, n, r):
        """int32x8 lane sums of (q − z) × activation codes over one run."""
        if signed:
            return dots(words, xq, b, r)
        return dots(words, xq, b, r) - xs[b, T.ramp(r * LANES, 1, LANES)] * zero_vec(z, n, r)

    @T.macro
    def store_codes(xq, a, blk, code):
        for t in T.serial(BLOCK):  # element e of the run: plane e % planes, byte e // planes
            xq[a, blk // blocks_per_run * run + (blk % blocks_per_run * BLOCK + t) % planes * RUN_BYTES
               + (blk % blocks_per_run * BLOCK + t) // planes] = T.cast(code[t], "int8")

    @T.macro
    def quantize_x(x, xq, xd, xs, B):
        """Activation row b·terms + t: sequence b's codes (t = 0) and residual codes (t = 1); xd
        row b: the scale of its last term (d, or d / 254 for int8x2), which scales its sums."""
        amax = T.decl_buffer((LANES,), "float32")
        code = T.decl_buffer((BLOCK,), "float32")
        scaled = T.decl_buffer((BLOCK,), "float32")
        for a, i in T.grid(B * terms, runs * run):  # padding past K: zero codes, zero scales
            xq[a, i] = T.int8(0)
        for b, i in T.grid(B, runs * LANES):
            xd[b, i] = T.float32(0)
        for b, blk in T.grid(B, k_in // BLOCK):
            for lane in T.vectorized(LANES):
                amax[lane] = T.abs(x[b, 0, blk * BLOCK + lane])
            for i, lane in T.grid(BLOCK // LANES - 1, LANES):
                amax[lane] = T.max(amax[lane], T.abs(x[b, 0, blk * BLOCK + (i + 1) * LANES + lane]))
            for lane in T.serial(1, LANES):
                amax[0] = T.max(amax[0], amax[lane])
            inv: T.let[T.float32] = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            for lane in T.vectorized(LANES // blocks_per_run):  # the lanes of this block's elements
                xd[b, blk // blocks_per_run * LANES + blk % blocks_per_run * (LANES // blocks_per_run) + lane] = (
                    amax[0] / T.float32(127) / T.float32(RESIDUAL ** (terms - 1)))
            for i in T.vectorized(BLOCK):
                scaled[i] = x[b, 0, blk * BLOCK + i] * inv
                code[i] = T.round(scaled[i])
            store_codes(xq, b * terms, blk, code)
            if terms == 2:
                for i in T.vectorized(BLOCK):
                    code[i] = T.round((scaled[i] - code[i]) * T.float32(RESIDUAL))
                store_codes(xq, b * terms + 1, blk, code)
        for a, r, lane in T.grid(B * terms, runs, LANES):
            xs[a, r * LANES + lane] = 0
            for i, j in T.grid(planes, 4):
                xs[a, r * LANES + lane] = xs[a, r * LANES + lane] + T.cast(xq[a, r * run + i * RUN_BYTES + 4 * lane + j], "int32")

    def sequence_dots(words, xq, xs, z, b, n, r):
        """int32x8 lane sums of (q − z) × sequence b's codes over one run, in units of its last
        term's scale: int8x2 gives 254 · (first codes' sums) + (residual codes' sums), at most
        255 · 4 · 127² < 2^24 per lane (the 8-bit head's four elements per lane; exact in fp32)."""
        first = centred_dots(words, xq, xs, z, b * terms, n, r)
        if terms == 1:
            return first
        return first * T.Broadcast(T.int32(RESIDUAL), LANES) + centred_dots(words, xq, xs, z, b * terms + 1, n, r)

    @T.macro
    def dot_rows(xq, xd, xs, w, s, z, y, acc, b0, n, count):
        """Row n for sequences b0 … b0 + count − 1, their accumulators side by side; the run's
        codes are loaded and unpacked once for all (the unrolled copies are one expression to LLVM)."""
        for i in T.unroll(count):
            acc[T.ramp(i * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
        for r in T.serial(runs):
            for i in T.unroll(count):
                acc[T.ramp(i * LANES, 1, LANES)] = acc[T.ramp(i * LANES, 1, LANES)] + T.cast(sequence_dots(load(w, n, r), xq, xs, z, b0 + i, n, r), "float32x8") * (
                    scale_vec(s, n, r) * xd[b0 + i, T.ramp(r * LANES, 1, LANES)])
        for i in T.unroll(count):  # the lanes' sum as a tree: halves added, three adds deep
            half = T.decl_buffer((LANES // 2,), "float32")
            half[T.ramp(0, 1, 4)] = acc[T.ramp(i * LANES, 1, 4)] + acc[T.ramp(i * LANES + 4, 1, 4)]
            half[T.ramp(0, 1, 2)] = half[T.ramp(0, 1, 2)] + half[T.ramp(2, 1, 2)]
            y[b0 + i, 0, n] = half[0] + half[1]

    @T.macro
    def body(x, w, s, z, y, B):
        xq = T.alloc_buffer((B * terms, runs * run), "int8")
        xd = T.alloc_buffer((B, runs * LANES), "float32")
        xs = T.alloc_buffer((B * terms, runs * LANES), "int32")
        quantize_x(x, xq, xd, xs, B)
        for task in T.parallel(TASKS):
            acc = T.decl_buffer((SEQS * LANES,), "float32")
            if B == 1:
                for n in T.serial(task * n_out // TASKS, (task + 1) * n_out // TASKS):
                    dot_rows(xq, xd, xs, w, s, z, y, acc, 0, n, 1)
            else:  # each row's codes, loaded once, serve every sequence from L1
                for n in T.serial(task * n_out // TASKS, (task + 1) * n_out // TASKS):
                    for group in T.serial(B // seqs):
                        dot_rows(xq, xd, xs, w, s, z, y, acc, group * seqs, n, seqs)
                    for b in T.serial(B // seqs * seqs, B):
                        dot_rows(xq, xd, xs, w, s, z, y, acc, b, n, 1)

    return body
