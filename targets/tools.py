"""Build tools a target needs: how each is found and how to install it.

A missing tool is reported in one line, naming the tool and its install command, before anything
is compiled or written.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError


def _which(*names: str) -> Callable[[], list[str] | None]:
    def find() -> list[str] | None:
        for name in names:
            if path := shutil.which(name):
                return [path]
        return None

    return find


def nvidia_wheel_binary(name: str) -> str | None:
    """``name`` from a PyPI ``nvidia-*`` wheel (``site-packages/nvidia/*/bin/NAME``), if installed."""
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations if spec else []) or []:
        for path in sorted(Path(base).glob(f"*/bin/{name}")):
            return str(path)
    return None


def _find_nvcc() -> list[str] | None:
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "bin" / "nvcc").is_file():
            return [str(Path(root) / "bin" / "nvcc")]
    path = shutil.which("nvcc") or nvidia_wheel_binary("nvcc")  # PyPI nvidia-cuda-nvcc
    return [path] if path else None


def _find_zig() -> list[str] | None:
    if importlib.util.find_spec("ziglang") is not None:  # PyPI ziglang
        return [sys.executable, "-m", "ziglang"]
    return _which("zig")()


def zig_lib_dir(zig: list[str]) -> Path | None:
    """zig's lib/ folder (its libc headers, libc++ sources and Apple's libSystem.tbd)."""
    env = subprocess.run([*zig, "env"], capture_output=True, text=True).stdout
    found = re.search(r'lib_dir"?\s*[=:]\s*"([^"]+)"', env)  # JSON before zig 0.15, ZON after
    return Path(found.group(1)).resolve() if found else None


def ios_cxx_finder(ios_min: str) -> Callable[[], list[str] | None]:
    """A C++ compiler for arm64 iOS: Xcode's clang on macOS, else zig's clang with zig's Darwin
    headers (no SDK is needed to compile objects; linking the app happens in Xcode)."""
    def find() -> list[str] | None:
        if platform.system() == "Darwin" and shutil.which("xcrun"):
            return ["xcrun", "--sdk", "iphoneos", "clang++", "-arch", "arm64", f"-mios-version-min={ios_min}"]
        zig = _find_zig()
        lib = zig and zig_lib_dir(zig)
        headers = lib / "libc" / "include" / "any-darwin-any" if lib else None  # macOS's; iOS declares the same libc
        if not headers or not headers.is_dir():
            return None
        return [*zig, "c++", "-target", f"aarch64-ios.{ios_min}", "-isystem", str(headers)]

    return find


@dataclass(frozen=True)
class Tool:
    """An external program: ``find`` returns its command line (argv prefix) or None."""

    name: str
    find: Callable[[], list[str] | None]
    install: str

    def command(self) -> list[str]:
        """The argv prefix to run the tool, or a one-line error saying how to install it."""
        found = self.find()
        if found is None:
            raise LowbitError(f"{self.name} not found: {self.install}")
        return found


HOST_CXX = Tool("g++", _which("g++", "c++", "clang++"), "install a C++ compiler (apt-get install g++)")
AARCH64_CXX = Tool("aarch64-linux-gnu-g++", _which("aarch64-linux-gnu-g++"),
                   "apt-get install g++-aarch64-linux-gnu")
NVCC = Tool("nvcc", _find_nvcc,
            "install the CUDA toolkit, or pip install nvidia-cuda-nvcc nvidia-cuda-cccl (or set CUDA_PATH)")
LLVM_AR = Tool("llvm-ar", _which("llvm-ar", *(f"llvm-ar-{v}" for v in range(22, 13, -1))),
               "apt-get install llvm (a Mach-O linker needs llvm-ar's darwin archives; GNU ar will not do)")
ZIG = Tool("zig", _find_zig, "pip install ziglang (links Mach-O and Android shared objects)")
LLVM_NM = Tool("llvm-nm", _which("llvm-nm", *(f"llvm-nm-{v}" for v in range(22, 13, -1))),
               "apt-get install llvm (reads the symbols of ELF and Mach-O archives)")
CMAKE = Tool("cmake", _which("cmake"), "apt-get install cmake (or pip install cmake)")
