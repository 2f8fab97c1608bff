"""Every GPU and mobile preset builds the tiny Llama, and each artifact holds what it must.

No GPU here: each library is checked on the artifact itself (object formats, symbols, linking two
models into one app) and its kernels are compiled by a real implementation of the API where this
machine has one (PoCL for OpenCL, lavapipe through wgpu for WGSL, clang for OpenCL C 2.0).
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from required_tools import require, require_any, require_module
from target_checks import device_module, kernel_sources

from lowbit.artifact import read_chat_config
from lowbit.cli import main
from lowbit.compiler.compile import build
from lowbit.errors import LowbitError
from lowbit.runtime.engine import Engine
from lowbit.targets import BuildOptions, get_preset

MACHO_MAGIC, CPU_ARM64 = 0xFEEDFACF, 0x0100000C
ELF_AARCH64 = 183
TVM_RUNTIME_SYMBOLS = ("_TVMFFI", "_TVMBackend", "dyld_stub_binder")


def build_library(mlc: Path, target: str, out: Path):
    """(executable, metadata) of the MLC folder built for ``target``, written to ``out`` by the
    preset's exporter for that suffix (what ``lowbit compile`` does, minus the CLI)."""
    preset = get_preset(target)
    executable, metadata = build(read_chat_config(mlc), preset)
    preset.library_format(out).export(executable, out, BuildOptions())
    return executable, metadata


def archive_members(archive: Path, into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run([require("llvm-ar", "reads archives"), "x", str(archive.resolve())], cwd=into, check=True)
    return sorted(into.glob("*.o"))


def defined_symbols(path: Path) -> set[str]:
    out = subprocess.run([require("llvm-nm", "lists symbols"), "--defined-only", "-j", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip() and not line.endswith(":")}


@pytest.fixture(scope="module")
def opencl_build(tiny_mlc, tmp_path_factory):
    lib = tmp_path_factory.mktemp("opencl") / "model.so"
    executable, meta = build_library(tiny_mlc("q4f32_1"), "opencl", lib)
    return executable, meta, lib


def test_opencl_kernels_build_on_pocl(opencl_build):
    cl = require_module("pyopencl", "runs OpenCL on PoCL")
    executable, meta, lib = opencl_build
    assert (meta.device, meta.compute_dtype) == ("opencl", "float32")
    source = device_module(executable, "opencl").inspect_source("")
    assert source.encode() in lib.read_bytes()  # the library carries exactly these kernels
    platforms = [p for p in cl.get_platforms() if "Portable Computing Language" in p.name]
    if not platforms:
        require("pocl-opencl-icd-is-missing", "PoCL runs OpenCL on the CPU")
    ctx = cl.Context(platforms[0].get_devices())
    kernels = kernel_sources(executable, "opencl")
    for name, src in kernels.items():
        program = cl.Program(ctx, src).build()
        assert name in [k.function_name for k in program.all_kernels()]
    assert len(kernels) > 20
    assert_fused_matmuls_are_ours(kernels)


def assert_fused_matmuls_are_ours(kernels: dict[str, str]) -> None:
    """Every fused quantized matmul runs lowbit's GPU schedule, not dlight's: the decode GEMV
    keeps per-thread partial sums (``q_matmul…_rf_local``), the prefill GEMM dequantizes its
    weight panel into shared memory (``q_dequant…_shared``)."""
    fused = [name for name in kernels if "q_matmul" in name]
    assert len(fused) >= 7  # qkv, o, gate_up, down, lm_head: decode and prefill forms
    for name in fused:
        # the kernel's definition, up to the next one (OpenCL programs hold several kernels)
        body = re.search(rf"\b{name}\([^;{{]*\)\s*\{{(.*?)(?=\n__kernel |\n@compute|\Z)", kernels[name], re.S)[1]
        assert re.search(r"q_matmul\w*_rf_local", body) or re.search(r"q_dequant\w*_shared", body), name


def test_android_archive_is_aarch64_elf_with_fp16_opencl(tiny_mlc, tmp_path):
    clang = require("clang", "checks OpenCL C syntax")
    lib = tmp_path / "libmodel_android.a"
    executable, meta = build_library(tiny_mlc("q4f16_1"), "android", lib)
    assert meta.system_lib_prefix.startswith("llama_q4f16_1_")
    objects = archive_members(lib, tmp_path / "objects")
    assert objects
    for obj in objects:
        head = obj.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and struct.unpack("<H", head[18:20])[0] == ELF_AARCH64, obj.name
    assert f"{meta.system_lib_prefix}__tvm_ffi__library_bin" in defined_symbols(lib)
    blob = b"".join(o.read_bytes() for o in objects)
    kernels = kernel_sources(executable, "opencl")
    for name, src in kernels.items():
        assert "cl_khr_fp16" in src and src.strip().encode() in blob, name
        path = tmp_path / f"{name}.cl"
        path.write_text(src)
        proc = subprocess.run([clang, "-x", "cl", "-cl-std=CL2.0", "-target", "spir64", "-fsyntax-only",
                               str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-500:]}"


IOS_MAIN = """extern const char {a}[];
extern const char {b}[];
int main(void) {{ return {a}[0] + {b}[0]; }}
"""
# A stub libSystem for linking without Apple's SDK: the test binary itself needs nothing from it.
LIBSYSTEM_TBD = """--- !tapi-tbd
tbd-version: 4
targets: [ arm64-ios ]
install-name: '/usr/lib/libSystem.B.dylib'
current-version: 1311
exports:
  - targets: [ arm64-ios ]
    symbols: [ dyld_stub_binder ]
...
"""


def test_two_iphone_archives_link_into_one_app(tiny_mlc, tmp_path):
    clang = require("clang", "compiles the test app's main.c for iOS")
    ld64 = require_any(("ld64.lld", "ld64.lld-14"), "links Mach-O (Debian lld)")
    libs, prefixes = [], []
    for scheme in ("q4f16_1", "q4f32_1"):
        lib = tmp_path / scheme / "libmodel_iphone.a"
        lib.parent.mkdir()
        _, meta = build_library(tiny_mlc(scheme), "iphone", lib)
        data = lib.read_bytes()
        assert data.startswith(b"!<arch>\n") and b"__.SYMDEF" in data[:100]  # darwin index
        for obj in archive_members(lib, tmp_path / scheme / "objects"):
            magic, cpu = struct.unpack("<II", obj.read_bytes()[:8])
            assert (magic, cpu) == (MACHO_MAGIC, CPU_ARM64), obj.name
        assert f"_{meta.system_lib_prefix}__tvm_ffi__library_bin" in defined_symbols(lib)
        libs.append(lib)
        prefixes.append(meta.system_lib_prefix)
    assert prefixes[0] != prefixes[1]
    sdk = tmp_path / "sdk" / "usr" / "lib"
    sdk.mkdir(parents=True)
    (sdk / "libSystem.tbd").write_text(LIBSYSTEM_TBD)
    a, b = (f"{p}__tvm_ffi__library_bin" for p in prefixes)
    (tmp_path / "main.c").write_text(IOS_MAIN.format(a=a, b=b))
    subprocess.run([clang, "-target", "arm64-apple-ios14.0", "-c", str(tmp_path / "main.c"), "-o",
                    str(tmp_path / "main.o")], check=True)
    app = tmp_path / "app"
    # -all_load: each model's kernels register themselves from a static initializer, which no
    # symbol of the app references (an app links model archives the same way).
    proc = subprocess.run([ld64, "-arch", "arm64", "-platform_version", "ios", "14.0", "17.0",
                           "-syslibroot", str(tmp_path / "sdk"), "-lSystem", "-o", str(app),
                           str(tmp_path / "main.o"), "-all_load", *map(str, libs), "-undefined", "dynamic_lookup"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a duplicate symbol fails the link
    nm = subprocess.run([require("llvm-nm", "lists symbols"), "-u", str(app)], capture_output=True, text=True,
                        check=True).stdout.split()
    assert nm and all(s.startswith(TVM_RUNTIME_SYMBOLS) for s in nm), nm
    linked = defined_symbols(app)
    for p in prefixes:  # both models' kernels made it into the app
        assert sum(s.startswith(f"___tvm_ffi_{p}") for s in linked) > 20


def test_metal_objects_and_dylib(tiny_mlc, tmp_path):
    tar = tmp_path / "model.tar"
    executable, meta = build_library(tiny_mlc("q4f16_1"), "metal", tar)
    assert (meta.device, meta.compute_dtype) == ("metal", "float16")
    import tarfile

    with tarfile.open(tar) as t:
        t.extractall(tmp_path / "objects", filter="data")
    objects = sorted((tmp_path / "objects").glob("*.o"))
    assert objects and all(struct.unpack("<II", o.read_bytes()[:8]) == (MACHO_MAGIC, CPU_ARM64) for o in objects)
    blob = b"".join(o.read_bytes() for o in objects)
    kernels = kernel_sources(executable, "metal")
    assert all("kernel void" in src and src.strip().encode() in blob for src in kernels.values())
    from lowbit.targets.tools import ZIG

    if ZIG.find() is None:
        pytest.skip("zig not installed (pip install ziglang): the .dylib link is not checked")
    dylib = tmp_path / "model.dylib"
    get_preset("metal").library_format(dylib).export(executable, dylib, BuildOptions())
    headers = subprocess.run([require("llvm-objdump", "reads Mach-O"), "--macho", "--private-headers", str(dylib)],
                             capture_output=True, text=True, check=True).stdout
    assert "MH_DYLIB" in headers or "DYLIB" in headers
    assert "platform macos" in headers or "platform 1" in headers


@pytest.mark.parametrize("scheme", ["q4f16_1", "w3a16g128asym"])
def test_webgpu_wasm_objects_and_wgsl_compiles(scheme, tiny_mlc, tmp_path):
    """MLC's scheme, and an asymmetric one: its uint8 zero points are read as words (WGSL has no
    8-bit storage)."""
    wgpu = require_module("wgpu", "compiles WGSL on lavapipe")
    tar = tmp_path / "model.tar"
    executable, meta = build_library(tiny_mlc(scheme), "webgpu", tar)
    assert meta.device == "webgpu"
    import tarfile

    with tarfile.open(tar) as t:
        t.extractall(tmp_path / "objects", filter="data")
    objects = sorted((tmp_path / "objects").glob("*.o"))
    assert objects and all(o.read_bytes()[:4] == b"\0asm" for o in objects)
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        require("mesa-vulkan-drivers-missing", "lavapipe runs Vulkan on the CPU")
    assert "shader-f16" in adapter.features, "the adapter cannot compile fp16 WGSL"
    # WebGPU's default limits (e.g. 16 KiB of workgroup storage): what a browser grants
    device = adapter.request_device_sync(required_features=["shader-f16"])
    kernels = kernel_sources(executable, "webgpu")
    for name, src in kernels.items():
        entry = re.search(r"@compute[^\n]*\nfn (\w+)\(", src)
        try:
            module = device.create_shader_module(code=src)
            device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": entry[1]})
        except Exception as e:  # wgpu raises its own validation error types
            pytest.fail(f"{name}: {e}")
    assert len(kernels) > 20
    assert_fused_matmuls_are_ours(kernels)


def test_wrong_suffix_and_missing_tool_are_one_line_errors(tiny_mlc, tmp_path, monkeypatch):
    mlc = tiny_mlc("q4f16_1")
    result = CliRunner().invoke(main, ["compile", str(mlc), "--target", "iphone", "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 1 and "target iphone writes .a (darwin static archive)" in result.output
    monkeypatch.setenv("PATH", str(tmp_path))  # no llvm-ar anywhere
    result = CliRunner().invoke(main, ["compile", str(mlc), "--target", "android", "-o", str(tmp_path / "x.a")])
    assert result.exit_code == 1
    assert "llvm-ar not found: apt-get install llvm" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_engine_refuses_a_library_for_another_device(opencl_build, tiny_mlc):
    with pytest.raises(LowbitError, match="cannot load model library .*opencl"):
        Engine(tiny_mlc("q4f32_1"), opencl_build[2])
