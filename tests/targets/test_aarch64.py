"""The aarch64 library runs under qemu with PyPI's aarch64 TVM runtime and gives the x86 logits.

The host is ``vm_runner.cc`` (tvm-ffi C++ API, no Python), cross-compiled here; the runtime
libraries come from PyPI's aarch64 wheels of the installed TVM versions (``aarch64_tvm_runtime``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from required_tools import require

from lowbit.artifact import LibraryMetadata
from lowbit.cli import main
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.runtime.engine import Engine
from lowbit.targets.runtime_libs import aarch64_tvm_runtime

HERE = Path(__file__).parent
IDS = [5, 17, 300, 2, 9, 44, 101]


def build_runner(out: Path, runtime: Path) -> Path:
    cxx = require("aarch64-linux-gnu-g++", "cross-compiles the aarch64 host")
    ffi = Path(importlib.util.find_spec("tvm_ffi").submodule_search_locations[0])  # headers: any arch
    # --no-as-needed: nothing calls libtvm_runtime directly, but loading it registers the relax VM.
    subprocess.run([cxx, "-std=c++17", "-O1", str(HERE / "vm_runner.cc"), "-o", str(out),
                    f"-I{ffi / 'include'}", f"-I{ffi / '3rdparty' / 'dlpack' / 'include'}", f"-L{runtime}",
                    "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime", "-Wl,--as-needed",
                    f"-Wl,-rpath,{runtime}"], check=True)
    return out


def write_params(mlc: Path, metadata: LibraryMetadata, folder: Path) -> tuple[Path, Path]:
    """The folder's weights in the library's argument order: a manifest and the raw bytes."""
    arrays, _ = read_tensor_cache(mlc)
    manifest, blob = folder / "params.txt", folder / "params.bin"
    with manifest.open("w") as txt, blob.open("wb") as raw:
        for p in metadata.params:
            a = np.ascontiguousarray(arrays[p["name"]])
            txt.write(f"{p['name']} {p['dtype']} {a.ndim} {' '.join(map(str, a.shape))}\n")
            raw.write(a.tobytes())
    return manifest, blob


@pytest.mark.parametrize("scheme", ["w4a16g128asym"])
def test_aarch64_logits_equal_x86_under_qemu(tiny_mlc, tmp_path, scheme):
    qemu = require("qemu-aarch64", "runs aarch64 binaries (Debian qemu-user)")
    mlc = tiny_mlc(scheme)
    for target in ("aarch64", "llvm"):
        result = CliRunner().invoke(main, ["compile", str(mlc), "--target", target, "-o", str(tmp_path / f"{target}.so")])
        assert result.exit_code == 0, result.output
    arm = tmp_path / "aarch64.so"
    assert arm.read_bytes()[:4] == b"\x7fELF" and int.from_bytes(arm.read_bytes()[18:20], "little") == 183
    engine = Engine(mlc, tmp_path / "llvm.so")
    engine.add_sequence(0)
    want = engine.all_logits(0, IDS)
    assert engine.metadata.target == "llvm" and engine.device.dlpack_device_type() == 1

    runtime = aarch64_tvm_runtime()
    runner = build_runner(tmp_path / "vm_runner", runtime)
    manifest, blob = write_params(mlc, engine.metadata, tmp_path)
    out = tmp_path / "logits.bin"
    # One TVM thread: under qemu-user the runtime's spinning worker threads starve the one working.
    proc = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", str(runner), str(arm), str(manifest), str(blob),
                           ",".join(map(str, IDS)), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TVM_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.fromfile(out, dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 0.1  # real logits, not zeros on both sides
