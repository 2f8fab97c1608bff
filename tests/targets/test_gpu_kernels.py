"""The fused quantized matmul's GPU kernels (``compiler/kernels/gpu_schedule.py``) run for real on
this machine's CPU drivers and match NumPy, for every packing at the bundled model's shapes:

* OpenCL C on PoCL through pyopencl, fp32 (PoCL has no fp16: the scales are given as fp32, so
  ``q4f16_1`` runs as ``q4f32_1`` does);
* WGSL on lavapipe through wgpu, in fp16 (activations, scales, output; fp32 accumulation) and fp32.
  WGSL has no 8-bit storage: the asymmetric schemes' uint8 zero points go in as words, as the
  model passes them on ``webgpu``;
* the same WGSL through lowbit's own WebGPU runtime (``runtime/wgpu``, over wgpu-native) in fp16:
  compiled with an x86-64 host into a shared library, loaded and called by the TVM runtime on the
  ``webgpu`` device, as a ``vulkan``-target model library is.

Forms: the decode GEMV (x [1, 1, K]), the prefill GEMM (x [1, T, K], T symbolic, here 37: not a
whole tile) and batch decode (x [B, 1, K], B symbolic, here 5).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from gpu_launch import lower, run_opencl, run_wgsl
from quant_reference import quantized_case, scheme_named
from required_tools import require, require_module
from tvm import te

from lowbit.compiler.kernels.gpu_schedule import QuantMatmulGPU
from lowbit.compiler.kernels.quant_matmul import q_matmul_te
from lowbit.compiler.schemes import NoQuant

SCHEMES = ["q4f16_1", "q3f16_1", "w4a16g128asym", "w3a16g128asym", "w2a16g64asym", "nf3a16g128",
           "q8f16_g32", "q0f16"]
# (API, dtype, form, N, K, rows) at the bundled model's qkv (960 × 576: a K of 18 chunks, the last
# round of threads partly idle) and down (576 × 1536) projections; every scheme runs each
CASES = [
    ("opencl", "float32", "gemv", 960, 576, 1),
    ("opencl", "float32", "gemm", 960, 576, 37),
    ("webgpu", "float16", "gemv", 576, 1536, 1),
    ("webgpu", "float16", "gemm", 960, 576, 37),
    ("webgpu", "float16", "batch", 576, 1536, 5),
    ("webgpu", "float32", "gemv", 960, 576, 1),
    ("webgpu", "float32", "batch", 576, 1536, 5),
    ("vulkan", "float16", "gemv", 960, 576, 1),
    ("vulkan", "float16", "gemm", 576, 1536, 37),
    ("vulkan", "float16", "batch", 960, 576, 5),
]
TOLERANCE = {"float32": 2e-5, "float16": 3e-3}  # max |error| / max |y|


@pytest.fixture(scope="module")
def opencl():
    cl = require_module("pyopencl", "runs OpenCL on PoCL")
    if not any("Portable Computing Language" in p.name for p in cl.get_platforms()):
        require("pocl-opencl-icd-is-missing", "PoCL runs OpenCL on the CPU")
    return cl


@pytest.fixture(scope="module")
def wgsl_device():
    wgpu = require_module("wgpu", "runs WGSL on lavapipe")
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        require("mesa-vulkan-drivers-missing", "lavapipe runs Vulkan on the CPU")
    return wgpu, adapter.request_device_sync(required_features=["shader-f16"])


def run_native(mod: tvm.IRModule, target, arrays: dict[str, np.ndarray], out: str, tmp_path) -> None:
    """Export the kernel with its x86-64 host, load it and run it on the ``webgpu`` device."""
    with target:
        library = tvm.compile(mod, target=target)
    path = tmp_path / "kernel.so"
    library.export_library(str(path))
    dev = tvm.runtime.device("webgpu", 0)
    names = ["x", *(n for n in "wsz" if n in arrays), out]
    tensors = [tvm.runtime.tensor(arrays[n], dev) for n in names]
    tvm.runtime.load_module(str(path))["main"](*tensors)
    arrays[out] = tensors[-1].numpy()


def _case(scheme_name: str, form: str, n: int, k: int, rows: int, kind: str, dtype: str):
    """(scheduled module, arrays by buffer name, output name, expected y, symbolic sizes)."""
    scheme = scheme_named(scheme_name)
    rng = np.random.default_rng(zlib.crc32(repr((scheme_name, form, n, k)).encode()))
    if isinstance(scheme, NoQuant):
        weight = (rng.standard_normal((n, k)) * 0.05).astype(np.float16).astype(np.float32)
        params, w = [weight.astype(dtype)], weight
    else:
        params, w = quantized_case(scheme, n, k, rng)
        params[1] = params[1].astype(dtype)  # PoCL and the fp32 WGSL kernels take fp32 scales
        if len(params) == 3 and kind != "opencl":
            params[2] = params[2].reshape(-1).view(np.uint32)  # zero points as words
    shape = {"gemv": (1, 1, k), "gemm": (1, rows, k), "batch": (rows, 1, k)}[form]
    x = rng.standard_normal(shape).astype(dtype)
    target = tvm.target.Target({"kind": "webgpu" if kind == "vulkan" else kind}, host="llvm")
    sizes = {"t": rows} if form != "gemv" else {}
    x_shape = {"gemv": shape, "gemm": (1, te.var("t", "int64"), k), "batch": (te.var("t", "int64"), 1, k)}[form]
    with target:
        xt = te.placeholder(x_shape, dtype, name="x")
        ps = [te.placeholder(p.shape, str(p.dtype), name=name) for p, name in zip(params, "wsz", strict=False)]
        y = q_matmul_te(scheme, k)(xt, *ps)
        func = te.create_prim_func([xt, *ps, y])
    sch = QuantMatmulGPU().apply(func, target, False)
    assert sch is not None
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    arrays = {"x": x, **dict(zip("wsz", params, strict=False)), y.op.name: np.zeros(expected.shape, dtype)}
    return sch.mod, target, arrays, y.op.name, expected, sizes


def _error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("kind,dtype,form,n,k,rows", CASES, ids=["-".join(map(str, c[:5])) for c in CASES])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gpu_kernel_matches_numpy(scheme, kind, dtype, form, n, k, rows, request, tmp_path):
    mod, target, arrays, out, expected, sizes = _case(scheme, form, n, k, rows, kind, dtype)
    if kind == "vulkan":
        request.getfixturevalue("webgpu_runtime")
        run_native(mod, target, arrays, out, tmp_path)
    elif kind == "opencl":
        run_opencl(lower(mod, target, sizes), arrays, sizes, request.getfixturevalue("opencl"))
    else:
        wgpu, device = request.getfixturevalue("wgsl_device")
        run_wgsl(lower(mod, target, sizes), arrays, sizes, device, wgpu)
    err = _error(arrays[out], expected)
    print(f"\nGPU-KERNEL {scheme} {form} {n}x{k} {kind} {dtype} {err:.2e}")
    assert err < TOLERANCE[dtype]
