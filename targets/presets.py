"""Compilation targets as data: one :class:`Preset` record per ``lowbit compile --target``.

A preset owns everything that differs between targets: the TVM target and host, the backend
whose relax pipeline schedules the kernels (``cpu`` or ``gpu``, modules of this package), the
compute dtype, the library formats it can write (each with its exporter and the build tools that
exporter needs) and the runtime device written into the library's metadata. ``lowbit compile``
asks the preset for all of it; adding a target is adding a record here.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError
from lowbit.targets import cuda, export
from lowbit.targets.tools import AARCH64_CXX, HOST_CXX, LLVM_AR, NVCC, ZIG, Tool, ios_cxx_finder

# Host ISA → llvm target fields (x86-64 micro-architecture levels; x86-64-v4 plus VNNI's
# 8-bit dot products, which the int8 decode kernel uses).
LLVM_ISA = {
    "avx512vnni": {"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]},
    "avx512": {"kind": "llvm", "mcpu": "x86-64-v4"},
    "avx2": {"kind": "llvm", "mcpu": "x86-64-v3"},
    "generic": {"kind": "llvm"},
}
ISA_LEVELS = ("generic", "avx2", "avx512", "avx512vnni")  # each runs the code of those before it
AVX2_MCPUS = (LLVM_ISA["avx512"]["mcpu"], LLVM_ISA["avx2"]["mcpu"])  # can run AVX2 kernels
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a")  # + PTX of the newest, for later GPUs


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
    """``avx512vnni``, ``avx512``, ``avx2`` or ``generic`` for an x86-64 host with ``flags``."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return "generic"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512vnni" if "avx512_vnni" in flags else "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "generic"


def host_runs(isa: str) -> bool:
    """Whether this machine runs code built for ``isa`` (a key of :data:`LLVM_ISA`)."""
    return ISA_LEVELS.index(isa) <= ISA_LEVELS.index(detect_isa(cpu_flags()))


def host_llvm() -> dict[str, Any]:
    """This machine's CPU as an llvm target (widest vectors the host has)."""
    return dict(LLVM_ISA[detect_isa(cpu_flags())])


@dataclass(frozen=True)
class BuildOptions:
    """Per-build choices (the system-lib prefix is not one: it comes from the metadata)."""

    cuda_archs: tuple[str, ...] = CUDA_ARCHS


@dataclass(frozen=True)
class LibraryFormat:
    """One kind of file a target can write, chosen by the output's suffix."""

    suffix: str
    what: str
    export: Callable[[Any, Path, BuildOptions], None]
    tools: tuple[Tool, ...] = ()

    def check_tools(self) -> None:
        """A one-line error naming the first missing tool and how to install it."""
        for tool in self.tools:
            tool.command()


@dataclass(frozen=True)
class Preset:
    """How to build for one target."""

    name: str
    summary: str
    device: str  # TVM runtime device the kernels run on
    compute_dtype: str  # activations, KV cache and accumulation
    backend: str  # module of this package that owns the relax pipeline: cpu or gpu
    target: Callable[[BuildOptions], dict[str, Any]]
    formats: tuple[LibraryFormat, ...]  # the first is the default
    host: Callable[[], dict[str, Any]] | None = None
    system_lib: bool = False  # a static archive whose symbols carry a per-model prefix
    # The C++ compiler `lowbit package` builds the engine with, into the device's archive (None:
    # the app's own build compiles apps/native, as Android's Gradle does with the NDK).
    app_cxx: Tool | None = None

    def tvm_target(self, options: BuildOptions | None = None):
        import tvm

        t = self.target(options or BuildOptions())
        return tvm.target.Target(t, self.host()) if self.host else tvm.target.Target(t)

    def pipeline(self, target):
        """The relax pipeline (a module pass) of this preset's backend for ``target``."""
        return importlib.import_module(f"lowbit.targets.{self.backend}").pipeline(target)

    def library_format(self, out: Path) -> LibraryFormat:
        """The format whose suffix ``out`` has, or a one-line error listing the accepted ones."""
        for fmt in self.formats:
            if str(out).endswith(fmt.suffix):
                return fmt
        accepted = ", ".join(f"{f.suffix} ({f.what})" for f in self.formats)
        raise LowbitError(f"target {self.name} writes {accepted}; got {Path(out).name}")

    def missing_tools(self) -> list[str]:
        """Install hints for the tools the default format lacks (``lowbit list targets``)."""
        return [f"{t.name} ({t.install})" for t in self.formats[0].tools if t.find() is None]


def _cuda(options: BuildOptions) -> dict[str, Any]:
    """The kernels must run on the oldest architecture asked for (checked here, before building)."""
    return {"kind": "cuda", "arch": min(options.cuda_archs, key=cuda.sm_version)}


def _fixed(target: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    return lambda *_: dict(target)


_SHARED = LibraryFormat(".so", "shared library", export.tvm_export, (HOST_CXX,))

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="llvm", summary="this machine's CPU (host ISA detected), shared library",
        device="cpu", compute_dtype="float32", backend="cpu",
        target=lambda _: host_llvm(), formats=(_SHARED,),
    ),
    Preset(
        name="aarch64", summary="aarch64 Linux CPU (NEON), cross-linked shared library",
        device="cpu", compute_dtype="float32", backend="cpu",
        target=_fixed({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}),
        formats=(LibraryFormat(".so", "aarch64 shared library", export.aarch64_shared_library, (AARCH64_CXX,)),),
    ),
    Preset(
        name="llvm-static", summary="this machine's CPU, prefixed static archive to link into a native program "
        "(apps/native loads it as system://PREFIX)",
        device="cpu", compute_dtype="float32", backend="cpu", target=lambda _: host_llvm(), system_lib=True,
        formats=(LibraryFormat(".a", "ELF static archive", export.elf_archive, (LLVM_AR,)),),
    ),
    Preset(
        name="cuda", summary="NVIDIA GPUs: fatbin with cubins for --arch (default sm_80/86/89/90a) + PTX",
        device="cuda", compute_dtype="float16", backend="gpu", target=_cuda, host=host_llvm,
        formats=(LibraryFormat(".so", "shared library with a fatbin", cuda.cuda_library, (HOST_CXX, NVCC)),),
    ),
    Preset(
        name="metal", summary="macOS on Apple silicon: Metal kernels, arm64 host code",
        device="metal", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "metal"}),
        host=_fixed({"kind": "llvm", "mtriple": f"arm64-apple-macos{export.MACOS_MIN}"}),
        formats=(LibraryFormat(".dylib", "Mach-O dylib", export.macos_dylib, (ZIG,)),
                 LibraryFormat(".tar", "Mach-O objects", export.tvm_export)),
    ),
    Preset(
        name="iphone", summary="iOS: Metal kernels in a prefixed static archive (MLC's libmodel_iphone.a)",
        device="metal", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "metal"}),
        host=_fixed({"kind": "llvm", "mtriple": f"arm64-apple-ios{export.IOS_MIN}"}), system_lib=True,
        formats=(LibraryFormat(".a", "darwin static archive", export.darwin_archive, (LLVM_AR,)),),
        app_cxx=Tool("an iOS C++ compiler", ios_cxx_finder(export.IOS_MIN),
                     "pip install ziglang, or on macOS install Xcode (xcrun clang++)"),
    ),
    Preset(
        name="android", summary="Android: OpenCL kernels, aarch64 host code in a prefixed static archive",
        device="opencl", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "opencl"}),
        host=_fixed({"kind": "llvm", "mtriple": "aarch64-linux-android"}), system_lib=True,
        formats=(LibraryFormat(".a", "ELF static archive", export.elf_archive, (LLVM_AR,)),),
    ),
    Preset(
        # fp32: neither NVIDIA's OpenCL nor PoCL has cl_khr_fp16 (use an f32 scheme, e.g. q4f32_1).
        name="opencl", summary="OpenCL on Linux x86-64 (fp32 compute), shared library",
        device="opencl", compute_dtype="float32", backend="gpu", target=_fixed({"kind": "opencl"}),
        host=host_llvm, formats=(_SHARED,),
    ),
    Preset(
        # WGSL, not SPIR-V: MLC's Vulkan runtime cannot load it; lowbit's WebGPU runtime
        # (runtime/wgpu) runs it on wgpu-native, over Vulkan here (Metal, D3D12 elsewhere).
        name="vulkan", summary="Vulkan through wgpu-native: WGSL kernels, x86-64 host, shared library "
                               "(runs with lowbit's WebGPU runtime, not MLC's Vulkan runtime)",
        device="webgpu", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "webgpu"}),
        host=host_llvm, formats=(_SHARED,),
    ),
    Preset(
        name="vulkan-aarch64", summary="Vulkan on aarch64 Linux through wgpu-native: WGSL kernels, aarch64 host, "
                                       "cross-linked shared library (lowbit's WebGPU runtime built there)",
        device="webgpu", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "webgpu"}),
        host=_fixed({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}),
        formats=(LibraryFormat(".so", "aarch64 shared library", export.aarch64_shared_library, (AARCH64_CXX,)),),
    ),
    Preset(
        name="webgpu", summary="WebGPU: WGSL kernels, wasm32 host objects (link with emcc + TVM's web runtime)",
        device="webgpu", compute_dtype="float16", backend="gpu", target=_fixed({"kind": "webgpu"}),
        host=_fixed({"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}), system_lib=True,
        formats=(LibraryFormat(".tar", "wasm objects", export.tvm_export),),
    ),
)}


def get_preset(name: str) -> Preset:
    """The preset ``name``, or a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LowbitError(f"unknown target {name!r} (available: {', '.join(PRESETS)})") from None
