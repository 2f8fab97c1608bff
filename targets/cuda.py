"""The CUDA backend's exporter: kernels compiled ahead of time by nvcc into one fatbin.

On a build machine without a CUDA driver, TVM 0.27 keeps the CUDA device module as source
(format ``cuda``), which the runtime would compile with NVRTC at every load. At export this
module compiles that source with nvcc for every requested architecture (one cubin each, plus PTX
of the newest for later GPUs) and rewrites the module's serialized form to format ``fatbin``;
TVM's CUDA loader hands such bytes straight to ``cuModuleLoadData``, so the library needs
neither NVRTC nor nvcc where it runs.

TVM's serialized import tree (``__tvm_ffi__library_bin``), little-endian, every length u64::

    blob    = nbytes | indptr: vec<u64> | child indices: vec<u64> | entry*
    entry   = kind: str                      (kind "_lib": the host library itself)
            | kind: str | payload: bytes
    cuda payload = fmt: str | fmap | code: bytes
    fmap    = count | (key: str | name: str | arg types: vec<4-byte DLDataType>
                       | launch tags: vec<str> | arg extra tags: vec<i32>)*

``vec<T>`` is a u64 count then the items; ``str`` / ``bytes`` a u64 length then the bytes.
The parser checks that every payload and the whole blob are consumed exactly, so a layout
change in another TVM version fails loudly instead of writing a broken library.
"""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import LowbitError
from lowbit.targets.tools import NVCC

if TYPE_CHECKING:
    from lowbit.targets.presets import BuildOptions

# The language flags TVM's own nvcc/NVRTC paths pass (fp16/bf16 operators on), plus -w: TVM's
# kernels declare unused variables, and printing those warnings doubles nvcc's time.
NVCC_FLAGS = ("-O3", "-w", "--use_fast_math", "--expt-relaxed-constexpr",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__")


def sm_version(arch: str) -> tuple[int, str]:
    """``sm_90a`` → (90, "a"), or a one-line error for anything that is not an SM architecture."""
    m = re.fullmatch(r"sm_(\d+)([af]?)", arch)
    if not m:
        raise LowbitError(f"bad CUDA architecture {arch!r} (expected e.g. sm_80 or sm_90a)")
    return int(m[1]), m[2]


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """``-gencode`` flags: a cubin per ``sm_XY[a]`` and PTX of the newest for later GPUs."""
    flags = []
    for number, suffix in map(sm_version, archs):
        flags += ["-gencode", f"arch=compute_{number}{suffix},code=sm_{number}{suffix}"]
    newest = max(number for number, _ in map(sm_version, archs))
    return [*flags, "-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def nvcc_fatbin(source: str, archs: tuple[str, ...]) -> bytes:
    """The CUDA C ``source`` compiled by nvcc into one fatbin for ``archs``."""
    with tempfile.TemporaryDirectory(prefix="lowbit-nvcc-") as tmp:
        cu, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        cu.write_text(source)
        proc = subprocess.run([*NVCC.command(), "--fatbin", *gencode_flags(archs), *NVCC_FLAGS,
                               "-o", str(out), str(cu)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise LowbitError(f"nvcc failed on the CUDA kernels: {lines[-1] if lines else proc.returncode}")
        return out.read_bytes()


# -- the serialized import tree -------------------------------------------------------------------
class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return v

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise LowbitError("truncated TVM module blob (TVM version mismatch?)")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def bytes_(self) -> bytes:
        return self.raw(self.u64())


def _pack(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


@dataclass(frozen=True)
class CudaPayload:
    fmt: str
    fmap: bytes  # the function table, kept verbatim
    code: bytes
    kernels: tuple[str, ...]

    @classmethod
    def parse(cls, payload: bytes) -> CudaPayload:
        r = _Reader(payload)
        fmt = r.bytes_().decode()
        start, names = r.pos, []
        for _ in range(r.u64()):
            r.bytes_()  # key
            names.append(r.bytes_().decode())
            r.raw(4 * r.u64())  # argument dtypes
            for _ in range(r.u64()):
                r.bytes_()  # launch parameter tags
            r.raw(4 * r.u64())  # argument extra tags
        fmap = payload[start : r.pos]
        code = r.bytes_()
        if r.pos != len(payload):
            raise LowbitError("unexpected CUDA module layout (TVM version mismatch?)")
        return cls(fmt, fmap, code, tuple(names))

    def serialize(self) -> bytes:
        return _pack(self.fmt.encode()) + self.fmap + _pack(self.code)


def blob_entries(blob: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(kind, payload) of every module in a serialized import tree (payload None for ``_lib``)."""
    r = _Reader(blob)
    if r.u64() + 8 != len(blob):
        raise LowbitError("bad TVM module blob header")
    indptr = [r.u64() for _ in range(r.u64())]
    for _ in range(r.u64()):
        r.u64()  # child indices
    for _ in range(len(indptr) - 1):
        kind = r.bytes_().decode()
        yield kind, None if kind == "_lib" else r.bytes_()
    if r.pos != len(blob):
        raise LowbitError("trailing bytes in the TVM module blob")


def _source_of(cuda: CudaPayload, sources: list[str]) -> str:
    """Where a CUDA driver was present at build time, TVM compiled the kernels with NVRTC for one
    architecture; recompile them from the in-memory source that defines the same kernels."""
    found = [s for s in sources if all(name in s for name in cuda.kernels)]
    if len(found) != 1:
        raise LowbitError(f"the CUDA kernels were compiled to {cuda.fmt} at build time and their source "
                          "cannot be matched")
    return found[0]


def compile_cuda_entries(blob: bytes, compile_source: Callable[[str], bytes], sources: list[str]) -> bytes:
    """The blob with every CUDA module replaced by a ``fatbin`` one compiled from its source."""
    r = _Reader(blob)
    r.u64()
    header_start = r.pos
    for _ in range(2):  # indptr and child indices: copied unchanged
        r.raw(8 * r.u64())
    out = [blob[header_start : r.pos]]
    found = False
    for kind, payload in blob_entries(blob):
        out.append(_pack(kind.encode()))
        if payload is None:
            continue
        if kind == "cuda":
            cuda = CudaPayload.parse(payload)
            source = cuda.code.decode() if cuda.fmt == "cuda" else _source_of(cuda, sources)
            payload = CudaPayload("fatbin", cuda.fmap, compile_source(source), cuda.kernels).serialize()
            found = True
        out.append(_pack(payload))
    if not found:
        raise LowbitError("the executable has no CUDA device module")
    body = b"".join(out)
    return struct.pack("<Q", len(body)) + body


def _tree(mod) -> Iterator:
    yield mod
    for child in mod.imports:
        yield from _tree(child)


def cuda_library(executable, out: Path, options: BuildOptions) -> None:
    """A shared library whose CUDA kernels are an nvcc fatbin for ``options.cuda_archs``."""
    import tvm

    pack = tvm.get_global_func("runtime.ModulePackImportsToTensor")
    codegen_blob = tvm.get_global_func("codegen.codegen_blob")

    def pack_imports(mod, is_system_lib, prefix, workspace):
        sources = [m.inspect_source("cuda") for m in _tree(mod) if m.kind == "cuda"]
        blob = compile_cuda_entries(pack(mod).numpy().tobytes(),
                                    lambda src: nvcc_fatbin(src, options.cuda_archs), sources)
        host = next(m for m in mod._collect_dso_modules() if m.kind == "llvm")
        obj = str(Path(workspace) / f"{prefix}devc.o")
        codegen_blob(blob, is_system_lib, host.get_function("_get_target_string")(), prefix).write_to_file(obj)
        return obj

    executable.mod.export_library(str(out), fpack_imports=pack_imports)
