"""lowbit's WebGPU runtime for TVM (``runtime/wgpu/wgpu_runtime.cc``): runs the WGSL kernels of
a ``vulkan``-target library on wgpu-native (Vulkan here; lavapipe on a machine without a GPU).

The C++ is built on first use, into the cache, with the machine's C++ compiler, against the
installed TVM runtime and tvm-ffi headers and the wgpu-native library that PyPI's ``wgpu`` wheel
ships (``webgpu.h`` changes between releases: the wheel's version is pinned). It is then loaded
into the process before any library that holds WebGPU kernels, registering the ``webgpu`` device
and the loader of those kernels with the TVM runtime.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from lowbit.cache import cache_dir
from lowbit.errors import LowbitError

SOURCE = Path(__file__).parent / "wgpu" / "wgpu_runtime.cc"
LIBRARY = "liblowbit_wgpu.so"
WGPU_NATIVE = "libwgpu_native-release.so"
# how TVM's library format names a WebGPU device module: its kind as a length-prefixed string
WEBGPU_MODULE_KIND = len(b"webgpu").to_bytes(8, "little") + b"webgpu"
FP16_SHADERS = b"enable f16;"


def load_for_library(path: Path) -> None:
    """Load the runtime if the library holds WebGPU kernels (TVM cannot load it otherwise); a
    one-line error where this machine's adapter cannot run them."""
    data = Path(path).read_bytes()
    if WEBGPU_MODULE_KIND not in data:
        return
    adapter = load_runtime()
    import tvm

    if FP16_SHADERS in data and not tvm.get_global_func("lowbit.wgpu.has_f16")():
        raise LowbitError(f"{Path(path).name} computes in fp16, which the WebGPU adapter {adapter} "
                          "cannot (no shader-f16)")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise LowbitError(f"the WebGPU runtime needs the Python package {name}: pip install {name}")
    return Path(spec.origin).parent


def _build_inputs() -> tuple[list[str], str]:
    """(compiler flags, cache key) for building the runtime here."""
    tvm_dir, ffi_dir, wgpu_dir = (_package_dir(n) for n in ("tvm", "tvm_ffi", "wgpu"))
    wgpu_lib = wgpu_dir / "resources" / WGPU_NATIVE
    if not wgpu_lib.is_file():
        raise LowbitError(f"the installed wgpu package has no {WGPU_NATIVE}: pip install 'wgpu==0.32.0'")
    flags = [
        "-std=c++17", "-O2", "-fPIC", "-shared",
        f"-I{ffi_dir / 'include'}", f"-I{tvm_dir / 'include'}", f"-I{wgpu_dir / 'resources'}",
        f"-L{ffi_dir / 'lib'}", f"-L{tvm_dir / 'lib'}", "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime",
        str(wgpu_lib), f"-Wl,-rpath,{ffi_dir / 'lib'}:{tvm_dir / 'lib'}:{wgpu_lib.parent}",
    ]
    versions = [importlib.metadata.version(n) for n in ("apache-tvm", "apache-tvm-ffi", "wgpu")]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *versions, *flags]).encode()).hexdigest()[:16]
    return flags, key


def build_runtime() -> Path:
    """The runtime library, built into the cache once per source and package versions."""
    flags, key = _build_inputs()
    out = cache_dir() / "wgpu-runtime" / key / LIBRARY
    if out.is_file():
        return out
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise LowbitError("building the WebGPU runtime needs a C++ compiler: apt-get install g++")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / LIBRARY
        proc = subprocess.run([cxx, str(SOURCE), "-o", str(staged), *flags], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LowbitError(f"building the WebGPU runtime failed: {proc.stderr.strip()[-400:]}")
        staged.rename(out)  # whole or not at all
    return out


@cache
def load_runtime() -> str:
    """Build (once) and load the runtime into this process; the adapter's description, or a
    one-line error naming the driver to install where there is none."""
    ctypes.CDLL(str(build_runtime()), mode=ctypes.RTLD_GLOBAL)
    import tvm

    adapter = str(tvm.get_global_func("lowbit.wgpu.adapter")())
    if not adapter:
        raise LowbitError("no WebGPU adapter on this machine: install a Vulkan driver (Debian: "
                          "mesa-vulkan-drivers, lavapipe on the CPU)")
    return adapter
