"""The int8-activation kernels against their alternatives, kernel alone, at the bundled model's
shapes (qkv, o, gate_up, down):

    TVM_NUM_THREADS=1 python bench/int8_kernels.py        # both, q4f16_1 and w3/w2 asym g128
    python bench/int8_kernels.py --kernels gemm --rows 128,512

* ``gemv``: decode's int8 GEMV built for AVX2 (``vpmaddubsw`` + ``vpmaddwd``) and for AVX-512
  VNNI (``vpdpbusd``), with one int8 code per activation (``int8``) and two (``int8x2``). Weights are random, in enough copies (≥ 64 MB) that each call reads them
  from DRAM, not cache.
* ``gemm``: prefill's matmul over ``--rows`` tokens: the fp32 fused kernel (dequantized panels,
  :mod:`lowbit.compiler.kernels.cpu_schedule`) against the int8 GEMM built for AVX2 and for VNNI.

Each ISA level is built only where this host runs it; the variants alternate for ``--rounds``
rounds and each keeps its best. Rows go to ``bench/results/int8_kernels.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from provenance import record

RESULTS = Path(__file__).parent / "results" / "int8_kernels.json"
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (N, K): qkv, o, gate_up, down
ISAS = ("avx2", "avx512vnni")


def random_params(scheme, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    groups = -(-k // scheme.group_size)
    params = [rng.integers(0, 2**32, (n, scheme.words_per_row(k)), dtype=np.uint64).astype(np.uint32),
              (rng.random((n, groups)) * 0.02).astype(scheme.model_dtype)]
    if "asym" in scheme.name:
        params.append(rng.integers(0, 1 << scheme.bits, (n, groups)).astype("uint8"))
    return params


def build(kernel: Callable, scheme, n: int, k: int, isa: str):
    """``kernel(scheme, n, k)`` (a TVMScript PrimFunc) compiled for ``isa``."""
    import tvm

    from lowbit.targets.presets import LLVM_ISA

    target = tvm.target.Target(LLVM_ISA[isa])
    with target:
        func = kernel(scheme, n, k).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]


def fp32_gemm(scheme, n: int, k: int, isa: str):
    """The fused fp32 prefill kernel, scheduled as ``lowbit compile`` schedules it."""
    import tvm
    from tvm import te

    from lowbit.compiler.kernels.cpu_schedule import QuantMatmulCPU
    from lowbit.compiler.kernels.quant_matmul import q_matmul_te
    from lowbit.targets.presets import LLVM_ISA

    target = tvm.target.Target(LLVM_ISA[isa])
    x = te.placeholder((1, te.var("rows", "int64"), k), "float32", name="x")
    params = [te.placeholder(a.shape, str(a.dtype)) for a in random_params(scheme, n, k, np.random.default_rng(0))]
    func = te.create_prim_func([x, *params, q_matmul_te(scheme, k)(x, *params)])
    return tvm.compile(QuantMatmulCPU().apply(func, target, False).mod, target=target)["main"]


def best_times(variants: dict[str, Callable], calls: list[list], rounds: int, reps: int) -> dict[str, float]:
    """Best seconds per call of each variant, alternating, cycling through the argument lists."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, f in variants.items():
            f(*calls[0])
            start = time.perf_counter()
            for _ in range(reps):
                for args in calls:
                    f(*args)
            best[name] = min(best[name], (time.perf_counter() - start) / (reps * len(calls)))
    return best


def gemv_rows(scheme, isas: list[str], rounds: int, rng: np.random.Generator) -> list[dict]:
    import tvm

    from lowbit.artifact import INT8_CODES
    from lowbit.compiler.kernels.gemv_int8 import gemv_int8

    dev, rows = tvm.cpu(), []
    for n, k in SHAPES:
        variants = {f"{kind}-{isa}": build(partial(gemv_int8, terms=terms), scheme, n, k, isa)
                    for kind, terms in INT8_CODES.items() if terms for isa in isas}
        nbytes = n * scheme.words_per_row(k) * 4
        copies = max(4, int(64e6 // nbytes))
        params = [[tvm.runtime.tensor(a, dev) for a in random_params(scheme, n, k, rng)] for _ in range(copies)]
        x = tvm.runtime.tensor(rng.standard_normal((1, 1, k)).astype("float32"), dev)
        y = tvm.runtime.tensor(np.zeros((1, 1, n), "float32"), dev)
        best = best_times(variants, [[x, *p, y] for p in params], rounds, 3)
        rows.append({"kernel": "gemv", "scheme": scheme.name, "n": n, "k": k, "rows": 1,
                     "weight_bytes": nbytes, **{f"{v}_us": round(s * 1e6, 2) for v, s in best.items()}})
        print(f"gemv {scheme.name} {n}×{k}: " + "  ".join(
            f"{v} {s * 1e6:.1f} µs ({nbytes / s / 1e9:.1f} GB/s)" for v, s in best.items()), flush=True)
    return rows


def gemm_rows(scheme, isas: list[str], tokens: list[int], rounds: int, rng: np.random.Generator) -> list[dict]:
    import tvm

    from lowbit.compiler.kernels.gemm_int8 import gemm_int8

    dev, rows = tvm.cpu(), []
    for n, k in SHAPES:
        variants = {"fp32": fp32_gemm(scheme, n, k, isas[-1]),
                    **{f"int8-{isa}": build(gemm_int8, scheme, n, k, isa) for isa in isas}}
        params = [tvm.runtime.tensor(a, dev) for a in random_params(scheme, n, k, rng)]
        for m in tokens:
            x = tvm.runtime.tensor(rng.standard_normal((1, m, k)).astype("float32"), dev)
            y = tvm.runtime.tensor(np.zeros((1, m, n), "float32"), dev)
            best = best_times(variants, [[x, *params, y]], rounds, 5)
            ops = 2 * m * n * k
            rows.append({"kernel": "gemm", "scheme": scheme.name, "n": n, "k": k, "rows": m,
                         **{f"{v}_us": round(s * 1e6, 2) for v, s in best.items()}})
            print(f"gemm {scheme.name} {m}×{n}×{k}: " + "  ".join(
                f"{v} {s * 1e3:.2f} ms ({ops / s / 1e9:.0f} GOP/s)" for v, s in best.items()), flush=True)
    return rows


def main() -> None:
    from lowbit.cache import atomic_file
    from lowbit.compiler.schemes import get_scheme
    from lowbit.targets.presets import host_runs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default="gemv,gemm")
    ap.add_argument("--schemes", default="q4f16_1,w3a16g128asym,w2a16g128asym")
    ap.add_argument("--rows", default="128,512", help="gemm: prefill tokens")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    isas = [isa for isa in ISAS if host_runs(isa)]
    if not isas:
        raise SystemExit("the int8 kernels need an x86-64 host with AVX2")
    rng = np.random.default_rng(0)
    rows = []
    for name in args.schemes.split(","):
        scheme = get_scheme(name)
        if "gemv" in args.kernels:
            rows += gemv_rows(scheme, isas, args.rounds, rng)
        if "gemm" in args.kernels:
            rows += gemm_rows(scheme, isas, [int(m) for m in args.rows.split(",")], args.rounds, rng)
    prov = record()
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps([{**r, "provenance": prov} for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
