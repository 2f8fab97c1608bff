"""``--decode-activations int8``: the AVX2 int8 GEMV (``compiler/kernels/gemv_int8.py``).

The kernel against NumPy (x quantized per 32 as the docstring says, weights dequantized from the
packed layout) for the 4-, 3-, 2- and 8-bit layouts, odd row counts, one sequence, whole and
partial groups of four sequences (the batch path), and a partial last scale group; then a tiny Llama compiled with int8 decode against the PyTorch reference that
fake-quantizes the same linears' inputs in incremental decoding.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.kernels.gemm_int8 import GEMM_MIN_ROWS, batch_decode_int8, gemm_int8
from lowbit.compiler.kernels.gemm_int8 import supports as gemm_supports
from lowbit.compiler.kernels.gemv_int8 import gemv_int8, supports
from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.compiler.schemes import HEAD_Q8, get_scheme
from lowbit.errors import LowbitError
from lowbit.quantizer import fake_quantize_blocks_int8
from lowbit.runtime.engine import Engine
from lowbit.targets.presets import LLVM_ISA, host_runs

needs_avx2 = pytest.mark.skipif(not host_runs("avx2"), reason="the int8 kernel needs an AVX2 host")


def dequantized(scheme, words: np.ndarray, scales: np.ndarray, zeros, k: int) -> np.ndarray:
    n, b = words.shape[0], scheme.bits
    if b == 3:  # per 32 elements: lows of 0–15, lows of 16–31, then the 32 high bits
        w = words.reshape(n, -1, 3)[:, :, :, None]
        lows = (w[:, :, :2] >> (2 * np.arange(16, dtype=np.uint32))) & 3
        highs = (w[:, :, 2] >> np.arange(32, dtype=np.uint32)) & 1
        codes = (lows.reshape(n, -1, 32) | highs << 2).reshape(n, -1)[:, :k]
    else:
        shifts = b * np.arange(32 // b, dtype=np.uint32)
        codes = ((words[:, :, None] >> shifts) & ((1 << b) - 1)).reshape(n, -1)[:, :k]
    g = scheme.group_size
    s = np.repeat(scales.astype(np.float32), g, axis=1)[:, :k]
    z = np.repeat(zeros.astype(np.float32), g, axis=1)[:, :k] if zeros is not None else scheme.max_int
    return (codes.astype(np.float32) - z) * s


def blocks_int8(x: np.ndarray, terms: int = 1) -> np.ndarray:
    """NumPy's own x̂ (not the PyTorch function under test); ``terms=2`` adds the residual code
    round((t − c) · 254) of scale d / 254. The scaled values t in fp32, as the kernel has them."""
    xb = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    amax = np.abs(xb).max(-1, keepdims=True)
    t = xb * np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    codes = np.round(t).astype(np.float64)
    if terms == 2:
        codes += np.round((t - np.round(t)) * np.float32(254)) / 254
    return (codes * amax.astype(np.float64) / 127).reshape(x.shape)


def scales_and_zeros(scheme, n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    groups = -(-k // scheme.group_size)
    scales = (rng.random((n, groups)) * 0.02).astype(scheme.model_dtype)
    zeros = rng.integers(0, 1 << scheme.bits, (n, groups)).astype("uint8") if "asym" in scheme.name else None
    return scales, zeros


def run_kernel(kernel, isa: str, scheme, x: np.ndarray, words: np.ndarray, scales: np.ndarray,
               zeros: np.ndarray | None, n: int, **options) -> np.ndarray:
    """``kernel(scheme, n, K)`` built for ``isa`` (``vpdpbusd`` in its code exactly when VNNI),
    run on x [B, T, K]: y [B, T, n]."""
    import tvm

    target = tvm.target.Target(LLVM_ISA[isa])
    with target:  # the kernel picks its dot product from the target
        func = kernel(scheme, n, x.shape[-1], **options).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    assert ("vpdpbusd" in lib.mod.inspect_source("asm")) == (isa == "avx512vnni")
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((*x.shape[:-1], n), "float32"), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in [x, words, scales] + ([zeros] if zeros is not None else [])], y)
    return y.numpy()


@pytest.mark.parametrize("name,n,k,batch", [
    ("q4f16_1", 7, 64, 1), ("q4f16_1", 20, 576, 9), ("q4f32_1", 9, 128, 2),
    ("w4a16g32asym", 12, 192, 2), ("w4a16g64asym", 5, 128, 1), ("w4a16g128asym", 4, 576, 3),
    ("w2a16g32asym", 6, 256, 2), ("w2a16g64asym", 3, 384, 1), ("w2a16g128asym", 9, 576, 4),
    ("w3a16g128asym", 7, 576, 2), ("w3a16g64asym", 5, 256, 1), ("w3a16g32asym", 9, 384, 6),
    ("w3a16g128asym", 4, 1536, 1),
    (HEAD_Q8.name, 5, 64, 1), (HEAD_Q8.name, 13, 576, 5),
])
@pytest.mark.parametrize("isa", ["avx2", "avx512vnni"])
def test_kernel_matches_numpy(isa, name, n, k, batch):
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    scheme = HEAD_Q8 if name == HEAD_Q8.name else get_scheme(name)
    rng = np.random.default_rng(n * 1000 + k)
    x = rng.standard_normal((batch, 1, k)).astype("float32")
    x[0, 0, :32] = 0  # an all-zero block
    if scheme.bits == 8:  # symmetric codes 0 … 254, both ends present
        codes = rng.integers(0, 255, (n, 4 * scheme.words_per_row(k)), dtype=np.uint8)
        codes[0, :2] = (0, 254)
        words = codes.view(np.uint32)
    else:
        words = rng.integers(0, 2**32, (n, scheme.words_per_row(k)), dtype=np.uint64).astype(np.uint32)
    scales, zeros = scales_and_zeros(scheme, n, k, rng)
    y = run_kernel(gemv_int8, isa, scheme, x, words, scales, zeros, n)
    want = blocks_int8(x[:, 0]) @ dequantized(scheme, words, scales, zeros, k).T.astype(np.float64)
    np.testing.assert_allclose(y[:, 0], want, rtol=0, atol=2e-6 * np.abs(want).max())
    assert np.abs(x[:, 0] @ dequantized(scheme, words, scales, zeros, k).T - want).max() > 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("name,n,k,batch", [
    ("q4f16_1", 20, 576, 1), ("q4f16_1", 9, 128, 3), ("w4a16g128asym", 4, 576, 1),
    ("w3a16g128asym", 7, 576, 5), ("w2a16g64asym", 3, 384, 2), (HEAD_Q8.name, 13, 576, 1),
])
@pytest.mark.parametrize("isa", ["avx2", "avx512vnni"])
def test_two_term_kernel_matches_numpy(isa, name, n, k, batch):
    """``int8x2``: each sequence's codes and residual codes share the loaded weights (one
    sequence, an odd batch over the pairs); the result is the two-term x̂'s, and it is far closer
    to the fp product than the one-term kernel's."""
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    scheme = HEAD_Q8 if name == HEAD_Q8.name else get_scheme(name)
    rng = np.random.default_rng(zlib.crc32(repr((name, n, k, batch)).encode()))
    x = rng.standard_normal((batch, 1, k)).astype("float32")
    x[0, 0, :32] = 0
    if scheme.bits == 8:
        words = rng.integers(0, 255, (n, 4 * scheme.words_per_row(k)), dtype=np.uint8).view(np.uint32)
    else:
        words = rng.integers(0, 2**32, (n, scheme.words_per_row(k)), dtype=np.uint64).astype(np.uint32)
    scales, zeros = scales_and_zeros(scheme, n, k, rng)
    deq = dequantized(scheme, words, scales, zeros, k).T.astype(np.float64)
    y = run_kernel(gemv_int8, isa, scheme, x, words, scales, zeros, n, terms=2)
    want = blocks_int8(x[:, 0], terms=2) @ deq
    np.testing.assert_allclose(y[:, 0], want, rtol=0, atol=2e-6 * np.abs(want).max())
    exact = x[:, 0].astype(np.float64) @ deq
    assert np.abs(want - exact).max() * 50 < np.abs(blocks_int8(x[:, 0]) @ deq - exact).max()


@pytest.mark.parametrize("terms", [1, 2])
def test_torch_quantizer_matches_numpy(terms):
    x = torch.randn(3, 2, 96, generator=torch.Generator().manual_seed(0))
    x[0, 0, 32:64] = 0
    np.testing.assert_allclose(fake_quantize_blocks_int8(x, terms).numpy(), blocks_int8(x.numpy(), terms),
                               atol=1e-6)


def test_supports():
    assert supports(get_scheme("q4f16_1"), 576) and supports(get_scheme("w4a16g128asym"), 576)
    assert supports(get_scheme("w2a16g128asym"), 576)  # its rows are padded to 640
    assert supports(HEAD_Q8, 576) and supports(get_scheme("w2a16g128asym_q8head").edge, 576)
    assert not supports(get_scheme("q4f16_1"), 96)  # not whole 64-element runs
    assert not supports(get_scheme("w2a16g64asym"), 576)  # rows of 4.5 runs
    assert supports(get_scheme("w3a16g128asym"), 576) and supports(get_scheme("w3a16g32asym"), 1536)
    assert not supports(get_scheme("w3a16g32asym"), 576)  # rows of 4.5 steps of 128
    assert not supports(get_scheme("q3f16_1"), 576) and not supports(get_scheme("nf3a16g128"), 576)


@pytest.fixture(scope="module")
def int8_llama_dir(tmp_path_factory):
    from tiny_models import save_tiny, tiny_llama_config

    # K = 128 and 192 (whole pairs of blocks): every linear, and the tied q4f16_1 / 8-bit head, runs int8
    cfg = tiny_llama_config(hidden_size=128, intermediate_size=192, head_dim=32)
    return save_tiny(tmp_path_factory.mktemp("llama_int8"), cfg)


# w3a16g64asym: K = 192 is 1.5 steps of 128, so down_proj (and the fp16 head) keep the fp kernel.
# int8x2: its reference is nearly the fp one, so matching it shows the residual codes are used;
# the library's int8 GEMVs show it is not an fp build.
@pytest.mark.parametrize("scheme,activations", [("q4f16_1", "int8"), ("w4a16g128asym_q8head", "int8"),
                                                ("w3a16g64asym", "int8"), ("q4f16_1", "int8x2")])
@needs_avx2
def test_compiled_int8_decode_matches_torch(int8_llama_dir, scheme, activations, tmp_path):
    mlc = tmp_path / "mlc"
    convert(ConvertArgs(str(int8_llama_dir), scheme, mlc, progress=False))
    lib = compile_model(CompileArgs(mlc, "llvm", tmp_path / "m.so", decode_activations=activations), progress=False)
    assert b"q_gemv_int8" in lib.read_bytes()
    engine = Engine(mlc, lib, max_batch_size=GEMM_MIN_ROWS + 4, context_window=64)
    assert engine.metadata.decode_activations == activations
    ref, fp_ref = load_mlc_model(mlc, activations), load_mlc_model(mlc)
    ids = np.random.default_rng(0).integers(0, 512, 12).tolist()
    engine.add_sequence(0)
    logits = engine.prefill(0, ids)
    with torch.no_grad():
        # prefill's linears see the whole prompt (fp); its lm_head sees the last position alone
        out = ref(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        past, fp_past = out.past_key_values, fp_ref(torch.tensor([ids]), use_cache=True).past_key_values
        scale = out.logits.abs().max().item()
        assert np.abs(logits - out.logits[0, -1].numpy()).max() <= 1e-4 * scale
        gap = 0.0
        for step in range(8):
            token = int(np.argmax(logits))
            logits = engine.decode(0, token)
            out = ref(torch.tensor([[token]]), cache=past, use_cache=True)
            fp_out = fp_ref(torch.tensor([[token]]), cache=fp_past, use_cache=True)
            past, fp_past = out.past_key_values, fp_out.past_key_values
            assert np.abs(logits - out.logits[0, -1].numpy()).max() <= 1e-4 * scale, f"decode step {step}"
            gap = max(gap, np.abs(logits - fp_out.logits[0, -1].numpy()).max())
    if activations == "int8":
        assert gap > 1e-3 * scale  # the int8 activations are visible: an fp kernel would fail above
    else:
        assert gap < 2e-4 * scale  # the residual codes take the int8 rounding away
    # batch_decode quantizes activations the same way, with the GEMV for one sequence and the
    # GEMM from GEMM_MIN_ROWS: each row ≡ decode of its twin alone
    a, b = engine.fork_sequence(0), engine.fork_sequence(0)
    rows = engine.decode_batch([a], [5])
    np.testing.assert_allclose(rows[0], engine.decode(b, 5), atol=1e-5 * scale)
    many = [engine.fork_sequence(0) for _ in range(GEMM_MIN_ROWS)]
    rows = engine.decode_batch(many, list(range(GEMM_MIN_ROWS)))
    twin = engine.fork_sequence(0)
    np.testing.assert_allclose(rows[3], engine.decode(twin, 3), atol=1e-5 * scale)


@needs_avx2
def test_a_model_parses_each_int8_kernel_once(int8_llama_dir, tmp_path):
    """Every layer's linears ask for the same few int8 kernels (5 shapes here: q/k/v, o,
    gate/up, down, the head); TVMScript parses each once per ISA (a bundled-model int8 build took
    109 s to compile, 22 s with the cache, beside two jobs)."""
    import json

    from lowbit.compiler.compile import export_model
    from lowbit.targets.presets import BuildOptions, get_preset

    mlc = convert(ConvertArgs(str(int8_llama_dir), "q4f16_1", tmp_path / "mlc", progress=False)).out
    preset = get_preset("llvm")
    builders = (gemv_int8, batch_decode_int8, gemm_int8)
    for builder in builders:
        builder.cache_clear()
    export_model(json.loads((mlc / "mlc-chat-config.json").read_text()), preset, preset.tvm_target(BuildOptions()),
                 activations="int8", prefill="int8")
    for builder in builders:
        info = builder.cache_info()
        assert 0 < info.misses <= 5 < info.hits + info.misses, (builder.__name__, info)


@pytest.mark.parametrize("scheme", ["q4f16_1", "w3a16g64asym"])
@needs_avx2
def test_compiled_int8_prefill_matches_torch(int8_llama_dir, scheme, tmp_path):
    """``--prefill-activations int8``: every position's prefill logits against the PyTorch
    reference whose linears fake-quantize their several-token inputs; the fp reference differs."""
    mlc = tmp_path / "mlc"
    convert(ConvertArgs(str(int8_llama_dir), scheme, mlc, progress=False))
    lib = compile_model(CompileArgs(mlc, "llvm", tmp_path / "m.so", prefill_activations="int8"), progress=False)
    engine = Engine(mlc, lib, context_window=64)
    assert engine.metadata.config["prefill_activations"] == "int8"
    assert engine.metadata.decode_activations == "fp"
    ids = np.random.default_rng(1).integers(0, 512, 21).tolist()
    engine.add_sequence(0)
    logits = engine.all_logits(0, ids)
    with torch.no_grad():
        want = load_mlc_model(mlc, prefill_activations="int8")(torch.tensor([ids])).logits[0].numpy()
        fp = load_mlc_model(mlc)(torch.tensor([ids])).logits[0].numpy()
    scale = np.abs(want).max()
    assert np.abs(logits - want).max() <= 1e-4 * scale
    assert np.abs(logits - fp).max() > 1e-3 * scale  # an fp prefill kernel would fail above


def test_int8_refused_off_x86(tmp_path):
    from tvm.target import Target

    from lowbit.compiler.compile import check_int8_activations

    with pytest.raises(LowbitError, match="AVX2"):
        check_int8_activations("--decode-activations", "int8", Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
    with pytest.raises(LowbitError, match="--prefill-activations int8 needs an x86-64"):
        check_int8_activations("--prefill-activations", "int8", Target({"kind": "opencl"}))
    with pytest.raises(LowbitError, match="--decode-activations int8x2 needs an x86-64"):
        check_int8_activations("--decode-activations", "int8x2", Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
    check_int8_activations("--decode-activations", "fp", Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))


@pytest.mark.parametrize("name,n,k,rows", [
    ("q4f16_1", 16, 64, 1), ("q4f16_1", 32, 576, 9), ("q4f32_1", 16, 128, 4),
    ("w4a16g32asym", 48, 192, 5), ("w4a16g128asym", 16, 576, 13),
    ("w2a16g64asym", 32, 384, 3), ("w2a16g128asym", 16, 576, 8),
    ("w3a16g128asym", 32, 576, 7), ("w3a16g32asym", 16, 384, 2), ("w3a16g128asym", 16, 1536, 4),
])
@pytest.mark.parametrize("isa", ["avx2", "avx512vnni"])
def test_gemm_kernel_matches_numpy(isa, name, n, k, rows):
    """Prefill's int8 GEMM (``gemm_int8``) against NumPy: row counts that fill the 4-row tiles and
    ones that leave a partial tile, a zero activation block, a partial last weight group."""
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    scheme = get_scheme(name)
    rng = np.random.default_rng(zlib.crc32(repr((name, n, k, rows)).encode()))
    x = rng.standard_normal((1, rows, k)).astype("float32")
    x[0, 0, :32] = 0
    words = rng.integers(0, 2**32, (n, scheme.words_per_row(k)), dtype=np.uint64).astype(np.uint32)
    scales, zeros = scales_and_zeros(scheme, n, k, rng)
    y = run_kernel(gemm_int8, isa, scheme, x, words, scales, zeros, n)
    deq = dequantized(scheme, words, scales, zeros, k).T.astype(np.float64)
    want = blocks_int8(x[0]) @ deq
    np.testing.assert_allclose(y[0], want, rtol=0, atol=2e-6 * np.abs(want).max())
    assert np.abs(x[0] @ deq - want).max() > 1e-4 * np.abs(want).max()  # int8 x differs from fp


@pytest.mark.parametrize("name,n,k,batch", [
    ("q4f16_1", 32, 576, 3), ("q4f16_1", 16, 576, GEMM_MIN_ROWS), ("w3a16g128asym", 32, 576, GEMM_MIN_ROWS + 1),
    ("w2a16g64asym", 16, 384, GEMM_MIN_ROWS + 5),
])
@pytest.mark.parametrize("isa", ["avx2", "avx512vnni"])
def test_batch_decode_kernel_matches_numpy(isa, name, n, k, batch):
    """Batch decode's int8 linear, x [B, 1, K]: the GEMV below GEMM_MIN_ROWS sequences, the GEMM
    on the same memory from there."""
    if not host_runs(isa):
        pytest.skip(f"host cannot run {isa} code")
    scheme = get_scheme(name)
    rng = np.random.default_rng(zlib.crc32(repr((name, n, k, batch)).encode()))
    x = rng.standard_normal((batch, 1, k)).astype("float32")
    words = rng.integers(0, 2**32, (n, scheme.words_per_row(k)), dtype=np.uint64).astype(np.uint32)
    scales, zeros = scales_and_zeros(scheme, n, k, rng)
    y = run_kernel(batch_decode_int8, isa, scheme, x, words, scales, zeros, n)
    want = blocks_int8(x[:, 0]) @ dequantized(scheme, words, scales, zeros, k).T.astype(np.float64)
    np.testing.assert_allclose(y[:, 0], want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_gemm_supports():
    assert gemm_supports(get_scheme("q4f16_1"), 576, 960)
    assert gemm_supports(get_scheme("w3a16g128asym"), 576, 3072)
    assert not gemm_supports(get_scheme("q4f16_1"), 576, 49160)  # N not whole 16-column panels
    assert not gemm_supports(get_scheme("q3f16_1"), 576, 960)  # 10 codes per word
    assert not gemm_supports(get_scheme("nf3a16g128"), 576, 960)  # non-uniform levels
    assert not gemm_supports(get_scheme("w4a16g128asym"), 600, 960)  # K not whole 32-blocks
