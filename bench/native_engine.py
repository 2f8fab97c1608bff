"""The native engine (apps/native) on the bundled model: x86-64 natively and aarch64 under qemu,
against the Python engine's greedy tokens on the same folder.

    python bench/native_engine.py [--max-tokens 32] [--prompt "The capital of France is"]

Builds what it needs in the cache (the w4a16g128asym MLC folder, CPU and aarch64 libraries, the
native engine for both architectures, the aarch64 TVM runtime from PyPI), then runs
``lowbit-native`` three ways and writes ``bench/results/native_engine.json``: tokens equal or not,
wall time, and the engine's own prefill/decode tok/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from provenance import build_dir, record

from lowbit.cache import atomic_file, cache_dir
from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.models import resolve_model
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.targets.runtime_libs import aarch64_tvm_runtime

NATIVE = Path(__file__).resolve().parents[1] / "apps" / "native"
RESULTS = Path(__file__).parent / "results"
SCHEME = "w4a16g128asym"
SPEED = re.compile(r"prefill: (\d+) tok, ([\d.]+) tok/s; decode: (\d+) tok, ([\d.]+) tok/s")


def model_files(work: Path) -> tuple[Path, Path, Path]:
    """The bundled model's MLC folder and its llvm and aarch64 libraries (built once)."""
    mlc = work / "mlc"
    if not (mlc / "tensor-cache.json").is_file():
        convert(ConvertArgs(str(resolve_model("smollm2-135m")), SCHEME, mlc, progress=False))
    libs = {}
    for target in ("llvm", "aarch64"):
        libs[target] = work / f"{target}.so"
        if not libs[target].is_file():
            compile_model(CompileArgs(mlc, target, libs[target]), progress=False)
    return mlc, libs["llvm"], libs["aarch64"]


def build_native(build: Path, cross_runtime: Path | None = None) -> Path:
    """``lowbit-native`` built for this machine, or cross-built for aarch64 against ``cross_runtime``."""
    args, env = [], dict(os.environ)
    if cross_runtime is not None:
        args = ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
                "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++", f"-DLOWBIT_TVM_LIB_DIR={cross_runtime}",
                "-DLOWBIT_BUILD_TESTS=OFF"]
        env["PKG_CONFIG_LIBDIR"] = "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig"
    subprocess.run(["cmake", "-S", NATIVE, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *args], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "-j2", "--target", "lowbit-native"], check=True, stdout=subprocess.DEVNULL)
    return build / "lowbit-native"


def run_native(cmd: list, label: str, env: dict | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed: {proc.stderr.strip()[-500:]}")
    speed = SPEED.search(proc.stderr)
    return {"tokens": json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": round(wall, 2),
            "prefill_tok_s": float(speed[2]), "decode_tok_s": float(speed[4])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    for tool in ("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: bash targets/install-tools.sh (as root) installs it")
    work = build_dir(cache_dir() / "bench-native")
    mlc, lib_x86, lib_arm = model_files(work)

    engine = Engine(mlc, lib_x86)
    config = GenerationConfig(args.max_tokens, engine.sampling_params(temperature=0), (), engine.default_stop_token_ids())
    start = time.perf_counter()
    "".join(engine.generate(engine.tokenizer.encode(args.prompt), config))
    python = {"tokens": engine.last_stats.tokens, "wall_s": round(time.perf_counter() - start, 2),
              "prefill_tok_s": round(engine.last_stats.prefill_tok_s, 1), "decode_tok_s": round(engine.last_stats.decode_tok_s, 1)}

    common = ["--prompt", args.prompt, "--temperature", "0", "--max-tokens", str(args.max_tokens), "--tokens"]
    x86 = run_native([build_native(cache_dir() / "native-build"), mlc, lib_x86, *common], "x86-64")
    runtime = aarch64_tvm_runtime()
    arm_binary = build_native(cache_dir() / "native-build-aarch64", runtime)
    # One TVM thread under qemu-user: the runtime's worker threads spin while they wait, and
    # emulated spinning starves the thread doing the work (minutes per token instead of seconds).
    arm = run_native(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", arm_binary, mlc, lib_arm, *common],
                     "aarch64 under qemu", env={"TVM_NUM_THREADS": "1"})

    rows = {"python engine (x86-64)": python, "native (x86-64)": x86, "native (aarch64, qemu-user)": arm}
    for name, row in rows.items():
        row["tokens_equal_python"] = row["tokens"] == python["tokens"]
        print(f"{name:30s} tokens equal: {row['tokens_equal_python']!s:5s}  wall {row['wall_s']:7.2f} s  "
              f"prefill {row['prefill_tok_s']:7.1f} tok/s  decode {row['decode_tok_s']:6.1f} tok/s")
    result = {"model": "smollm2-135m", "scheme": SCHEME, "prompt": args.prompt, "max_tokens": args.max_tokens,
              "rows": rows, "provenance": record()}
    RESULTS.mkdir(exist_ok=True)
    with atomic_file(RESULTS / "native_engine.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    if not all(row["tokens_equal_python"] for row in rows.values()):
        raise SystemExit("the native engine's tokens differ from the Python engine's")


if __name__ == "__main__":
    main()
