"""Exporters: a built executable → the file a target ships (shared library, archive, objects).

Each takes ``(executable, out, options)`` and writes ``out`` only; ``lowbit compile`` runs it on a
temporary path that is renamed at the end.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import LowbitError
from lowbit.targets.tools import AARCH64_CXX, LLVM_AR, ZIG

MACOS_MIN = "13.0"  # minimum macOS of the metal preset's objects (LC_BUILD_VERSION)
IOS_MIN = "14.0"  # minimum iOS of the iphone preset's objects
MACOS_ZIG_TARGET = f"aarch64-macos.{MACOS_MIN}"

if TYPE_CHECKING:
    from lowbit.targets.presets import BuildOptions


def run_tool(argv: list[str], what: str) -> None:
    """Run a build tool; its failure becomes a one-line error with the tool's last line."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise LowbitError(f"{what} failed ({Path(argv[0]).name} exit {proc.returncode}): {last[0]}")


def tvm_export(executable, out: Path, _options: BuildOptions) -> None:
    """TVM's own export, by suffix: a shared library linked by the host C++ compiler (``.so``)
    or the host objects, device code embedded in ``devc.o``, in a tar (``.tar``)."""
    executable.export_library(str(out))


def aarch64_shared_library(executable, out: Path, _options: BuildOptions) -> None:
    """An aarch64 Linux shared library, cross-linked with ``aarch64-linux-gnu-g++``."""
    from tvm.support import cc

    executable.export_library(str(out), fcompile=cc.cross_compiler(AARCH64_CXX.command()[0]))


def _objects(executable, workdir: Path) -> list[Path]:
    tar = workdir / "objects.tar"
    executable.export_library(str(tar))
    with tarfile.open(tar) as t:
        t.extractall(workdir / "objects", filter="data")
    return sorted((workdir / "objects").glob("*.o"))


def _archive(executable, out: Path, ar_format: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        objects = _objects(executable, Path(tmp))
        out.unlink(missing_ok=True)  # llvm-ar would try to read an existing (empty) file
        run_tool([*LLVM_AR.command(), f"--format={ar_format}", "rcs", str(out), *map(str, objects)],
                 "archiving the objects")


def darwin_archive(executable, out: Path, _options: BuildOptions) -> None:
    """A static archive of Mach-O objects with a symbol index Apple's linker accepts."""
    _archive(executable, out, "darwin")


def elf_archive(executable, out: Path, _options: BuildOptions) -> None:
    """A static archive of ELF objects (GNU format)."""
    _archive(executable, out, "gnu")


def macos_dylib(executable, out: Path, _options: BuildOptions) -> None:
    """A macOS arm64 ``.dylib`` linked by zig's bundled clang and Mach-O linker; the TVM runtime's
    symbols are resolved by the process that loads it."""
    zig = ZIG.command()

    def link(output, objects, options=None):
        run_tool([*zig, "cc", "-target", MACOS_ZIG_TARGET, "-shared", "-O2", "-fno-sanitize=undefined",
                  "-o", output, *objects, f"-Wl,-install_name,@rpath/{Path(output).name}",
                  "-Wl,-undefined,dynamic_lookup", *(options or [])], "linking the dylib")

    link.output_format = "dylib"
    executable.export_library(str(out), fcompile=link)
