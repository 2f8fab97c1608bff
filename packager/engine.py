"""The engine (apps/native's C API) compiled for a device into one static archive, with CMake.

Built in the cache and kept between runs (CMake rebuilds what changed). Only the tvm-ffi headers
and nlohmann-json's headers (found by apps/native's CMake) are needed: the app links the TVM
runtime itself.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

from lowbit.cache import cache_dir
from lowbit.errors import LowbitError
from lowbit.targets.presets import Preset
from lowbit.targets.tools import CMAKE, LLVM_AR

NATIVE = Path(__file__).resolve().parents[1] / "apps" / "native"
ENGINE_ARCHIVE = "liblowbit_engine_static.a"


def native_source() -> Path:
    """apps/native of this lowbit checkout (the engine is built from source, not shipped in the wheel)."""
    if not (NATIVE / "CMakeLists.txt").is_file():
        raise LowbitError(f"lowbit package builds the engine from apps/native of a lowbit source checkout "
                          f"(pip install -e .); {NATIVE} is missing")
    return NATIVE


def tvm_ffi_include() -> list[Path]:
    """The installed tvm-ffi's headers and its DLPack header (the ABI the model libraries use)."""
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or not spec.submodule_search_locations:
        raise LowbitError("tvm_ffi is not installed: pip install apache-tvm")
    root = Path(spec.submodule_search_locations[0])
    return [root / "include", root / "3rdparty" / "dlpack" / "include"]


def _toolchain(workdir: Path, cxx: list[str], ar_format: str) -> Path:
    """A CMake toolchain for the device: the compiler line carries the target, so CMake's platform
    is Generic (its iOS platform module wants Xcode, which the zig route does not have)."""
    wrapper = workdir / "cxx"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(cxx)} \"$@\"\n")
    wrapper.chmod(0o755)
    ar = LLVM_AR.command()[0]
    toolchain = workdir / "toolchain.cmake"
    toolchain.write_text("\n".join([
        "set(CMAKE_SYSTEM_NAME Generic)",
        "set(CMAKE_SYSTEM_PROCESSOR arm64)",
        f'set(CMAKE_CXX_COMPILER "{wrapper}")',
        f'set(CMAKE_AR "{ar}")',
        f'set(CMAKE_CXX_ARCHIVE_CREATE "<CMAKE_AR> --format={ar_format} qc <TARGET> <LINK_FLAGS> <OBJECTS>")',
        f'set(CMAKE_CXX_ARCHIVE_APPEND "<CMAKE_AR> --format={ar_format} q <TARGET> <LINK_FLAGS> <OBJECTS>")',
        f'set(CMAKE_CXX_ARCHIVE_FINISH "<CMAKE_AR> --format={ar_format} s <TARGET>")',
        "set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)",
        "",
    ]))
    return toolchain


def _run(argv: list, what: str) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
        raise LowbitError(f"{what} failed: {(errors or (proc.stderr or proc.stdout).strip().splitlines() or ['?'])[0]}")


def build_engine(preset: Preset, ar_format: str) -> Path:
    """liblowbit_engine_static.a for ``preset``'s device, built with its ``app_cxx``."""
    assert preset.app_cxx is not None
    cxx = preset.app_cxx.command()
    cmake = CMAKE.command()
    source = native_source()
    workdir = cache_dir() / "engine-build" / preset.name
    workdir.mkdir(parents=True, exist_ok=True)
    toolchain = _toolchain(workdir, cxx, ar_format)
    build = workdir / "build"
    _run([*cmake, "-S", source, "-B", build, f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DCMAKE_BUILD_TYPE=Release",
          "-DLOWBIT_ENGINE_ONLY=ON", f"-DLOWBIT_TVM_FFI_INCLUDE={';'.join(map(str, tvm_ffi_include()))}"],
         f"configuring the engine for {preset.name}")
    _run([*cmake, "--build", build, "-j", str(os.cpu_count() or 2), "--target", "lowbit_engine_static"],
         f"compiling the engine for {preset.name}")
    return build / ENGINE_ARCHIVE
