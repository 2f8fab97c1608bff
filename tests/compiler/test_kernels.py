"""Fused dequant→matmul kernels with their CPU schedules vs a NumPy port of each packing layout.

The NumPy side packs codes itself (independently of ``compiler/packing.py``), following the layouts
of ``docs/FORMAT.md``: symmetric plain words (8 or 10 codes), asymmetric plain words (8 or 16) and
3-bit bit-planes per run of 32 (asymmetric and NF3), and dequantizes by ``s·(q − z)`` or by NF3
table lookup. K is odd or not a multiple of the group (partial last group).
Each form is built with a symbolic row axis where the model has one: tokens (prefill, GEMM) or
sequences (batch decode).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from quant_reference import quantized_case, scheme_named
from tvm import s_tir, te

from lowbit.compiler.kernels.cpu_schedule import BATCH_TILES, GEMM_TILES, QuantMatmulCPU
from lowbit.compiler.kernels.quant_matmul import (
    BATCH,
    FORM_ATTR,
    GEMM,
    GEMV,
    MATMUL_BLOCK,
    q_embed_te,
    q_matmul_te,
)
from lowbit.compiler.schemes import HEAD_Q8, NoQuant, get_scheme
from lowbit.targets.presets import LLVM_ISA, host_runs

TARGET = tvm.target.Target({"kind": "llvm"})


def _build(f, inputs: list[np.ndarray], symbolic: int | None, target=TARGET):
    """(compiled kernel, schedule, form) of ``f`` for x shaped like ``inputs[0]``, with axis
    ``symbolic`` of x (0: sequences, 1: tokens) a variable."""
    shape = list(inputs[0].shape)
    if symbolic is not None:
        shape[symbolic] = te.var("rows", "int64")
    x = te.placeholder(shape, "float32", name="x")
    ps = [te.placeholder(a.shape, str(a.dtype), name=f"p{i}") for i, a in enumerate(inputs[1:])]
    func = te.create_prim_func([x, *ps, f(x, *ps)])
    plain = s_tir.Schedule(func)
    form = str(plain.get(plain.get_sblock(MATMUL_BLOCK)).annotations[FORM_ATTR])
    sch = QuantMatmulCPU().apply(func, target, False)
    mod = sch.mod if sch is not None else tvm.IRModule({"main": func})
    return tvm.compile(mod, target=target), sch, form


def _call(lib, inputs: list[np.ndarray], out_shape) -> np.ndarray:
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    lib(*[tvm.runtime.tensor(a, dev) for a in inputs], out)
    return out.numpy()


def _run(f, inputs: list[np.ndarray], out_shape, m_symbolic: bool, target=TARGET):
    lib, sch, _ = _build(f, inputs, 1 if m_symbolic else None, target)
    return _call(lib, inputs, out_shape), sch


SCHEMES = ["q4f16_1", "q3f16_1", "q4f32_1", "w4a16g128asym", "w3a16g64asym", "w2a16g32asym",
           "w3a16g32asym", "nf3a16g128", "nf3a16g64", HEAD_Q8.name]


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("m", [1, 5, 8])  # decode GEMV; prefill GEMM with a partial / whole row tiles
def test_fused_matmul_matches_numpy(name, m):
    rng = np.random.default_rng(zlib.crc32(repr((name, m)).encode()))
    scheme = scheme_named(name)
    n, k = 37, 200  # odd N, K not a multiple of 32/40/64/128
    params, w = quantized_case(scheme, n, k, rng)
    x = rng.standard_normal((1, m, k)).astype(np.float32)
    got, sch = _run(q_matmul_te(scheme, k), [x, *params], (1, m, n), m_symbolic=m > 1)
    assert sch is not None, "the CPU schedule did not apply"
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("name", ["q4f16_1", "w3a16g64asym"])
@pytest.mark.parametrize("n", [48, 96, 40])  # whole 32- and 16-wide tiles; 8-wide tiles
@pytest.mark.parametrize("m", [3, 13])  # rows padded to the tile
def test_gemm_register_tiles(isa, name, n, m):
    """Each ISA's GEMM register tile (``GEMM_TILES``) on N that it divides (and one it does not)."""
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    target = tvm.target.Target(LLVM_ISA[isa])
    assert isa != "avx512" or str(target.attrs["mcpu"]) in GEMM_TILES
    rng = np.random.default_rng(zlib.crc32(repr((isa, name, n, m)).encode()))
    scheme = scheme_named(name)
    params, w = quantized_case(scheme, n, 136, rng)
    x = rng.standard_normal((1, m, 136)).astype(np.float32)
    got, _ = _run(q_matmul_te(scheme, 136), [x, *params], (1, m, n), True, target)
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


BATCHES = [1, 3, 8, 17, 32]  # sequences: one, a partial row tile, whole tiles, one past, the most


@pytest.mark.parametrize("name", [*SCHEMES, "q0f16", "q0f32"])
@pytest.mark.parametrize(("n", "k"), [(37, 200), (40, 320)])
def test_batch_decode_matmul_matches_numpy(name, n, k):
    """Batch decode (x [B, 1, K], B symbolic): one kernel for every B. N = 37 leaves no whole
    feature tile, N = 40 is an odd number of 8-feature chunks; K = 200 ends in a partial group (and
    a partial 3-bit run), K = 320 is whole groups of each scheme (64 of the 128-groups, as K = 576
    is at g128), the path that loads each scale once per group."""
    rng = np.random.default_rng(zlib.crc32(repr((name, n, k)).encode()))
    scheme = scheme_named(name)
    if isinstance(scheme, NoQuant):
        params = [rng.standard_normal((n, k)).astype(scheme.model_dtype)]
        w = params[0].astype(np.float32)
    else:
        params, w = quantized_case(scheme, n, k, rng)
    xs = {b: rng.standard_normal((b, 1, k)).astype(np.float32) for b in BATCHES}
    lib, sch, form = _build(q_matmul_te(scheme, k), [xs[1], *params], symbolic=0)
    assert form == BATCH and sch is not None
    for b, x in xs.items():
        got = _call(lib, [x, *params], (b, 1, n))
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4, err_msg=f"B={b}")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("name", ["q4f16_1", "w3a16g64asym", "nf3a16g128"])
def test_batch_register_tiles(isa, name):
    """Each ISA's batch-decode tile (``BATCH_TILES``: its k lanes divide K = 576, as the bundled
    model's) on whole and partial row tiles."""
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    target = tvm.target.Target(LLVM_ISA[isa])
    assert isa == "generic" or str(target.attrs["mcpu"]) in BATCH_TILES
    rng = np.random.default_rng(zlib.crc32(repr((isa, name)).encode()))
    scheme = scheme_named(name)
    params, w = quantized_case(scheme, 48, 576, rng)
    xs = [rng.standard_normal((b, 1, 576)).astype(np.float32) for b in (4, 5)]
    lib, _, _ = _build(q_matmul_te(scheme, 576), [xs[0], *params], 0, target)
    for x in xs:
        got = _call(lib, [x, *params], (len(x), 1, 48))
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("symbolic", "form"), [(None, GEMV), (1, GEMM), (0, BATCH)])
def test_form_follows_the_symbolic_axis(symbolic, form):
    """decode [1, 1, K] keeps the GEMV; prefill [1, tokens, K] the GEMM; batch decode
    [sequences, 1, K] the batch form."""
    scheme = get_scheme("q4f16_1")
    params, _ = quantized_case(scheme, 8, 64, np.random.default_rng(4))
    x = np.zeros((1, 1, 64), np.float32)
    assert _build(q_matmul_te(scheme, 64), [x, *params], symbolic)[2] == form


def test_fused_matmul_padding_codes_not_read():
    """Garbage in the padding codes past K (here 100 of a 128-group) must not change the result."""
    rng = np.random.default_rng(1)
    scheme = get_scheme("w4a16g128asym")
    params, w = quantized_case(scheme, 8, 100, rng)
    params[0][:, 12] |= np.uint32(0xFFFF0000)  # codes 100–103
    params[0][:, 13:] = np.uint32(0xFFFFFFFF)  # codes 104–127
    x = rng.standard_normal((1, 1, 100)).astype(np.float32)
    got, _ = _run(q_matmul_te(scheme, 100), [x, *params], (1, 1, 8), m_symbolic=False)
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m", [1, 9])
def test_unquantized_matmul(m):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((19, 48)).astype(np.float16)
    x = rng.standard_normal((1, m, 48)).astype(np.float32)
    got, _ = _run(q_matmul_te(NoQuant("q0f16", "float16"), 48), [x, w], (1, m, 19), m_symbolic=m > 1)
    np.testing.assert_allclose(got, x @ w.astype(np.float32).T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["q4f16_1", "q3f16_1", HEAD_Q8.name])
def test_quantized_embedding_rows(name):
    rng = np.random.default_rng(3)
    scheme = scheme_named(name)
    params, w = quantized_case(scheme, 50, 72, rng)
    ids = np.array([3, 49, 0, 3, 17], np.int32)
    x = te.placeholder((5,), "int32", name="ids")
    ps = [te.placeholder(a.shape, str(a.dtype)) for a in params]
    lib = tvm.compile(te.create_prim_func([x, *ps, q_embed_te(scheme, 72, "float32")(x, *ps)]), target=TARGET)
    out = tvm.runtime.tensor(np.zeros((5, 72), np.float32), tvm.cpu())
    lib(*[tvm.runtime.tensor(a, tvm.cpu()) for a in [ids, *params]], out)
    np.testing.assert_array_equal(out.numpy(), w[ids])
