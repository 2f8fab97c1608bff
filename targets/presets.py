"""Compilation targets as data: name → TVM target, host, library kind and export function.

Only ``llvm`` (this machine's CPU) for now; other targets arrive with their builds. The llvm
preset picks ``mcpu`` from the host's instruction set (AVX-512 / AVX2 / generic x86-64, or the
plain llvm target elsewhere), so the kernels use the widest vectors the host has.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError

# Host ISA → llvm target fields (x86-64 micro-architecture levels).
LLVM_ISA = {
    "avx512": {"kind": "llvm", "mcpu": "x86-64-v4"},
    "avx2": {"kind": "llvm", "mcpu": "x86-64-v3"},
    "generic": {"kind": "llvm"},
}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_isa(flags: set[str], machine: str | None = None) -> str:
    """``avx512``, ``avx2`` or ``generic`` for an x86-64 host with ``flags``."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return "generic"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "generic"


def _export_shared(executable, path: Path) -> None:
    executable.export_library(str(path))


@dataclass(frozen=True)
class Preset:
    """How to build for one target: TVM target dict, host, output library kind and exporter."""

    name: str
    target: Callable[[], dict[str, Any]]
    host: dict[str, Any] | None
    library: str  # file suffix of the exported library
    export: Callable[[Any, Path], None]

    def tvm_target(self):
        import tvm

        t = self.target()
        return tvm.target.Target(t, self.host) if self.host else tvm.target.Target(t)


PRESETS: dict[str, Preset] = {
    "llvm": Preset(
        name="llvm",
        target=lambda: dict(LLVM_ISA[detect_isa(cpu_flags())]),
        host=None,
        library="so",
        export=_export_shared,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name``, or a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LowbitError(f"unknown target {name!r} (available: {', '.join(PRESETS)})") from None
