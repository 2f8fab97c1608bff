"""The cuda library carries a fatbin with one cubin per requested architecture plus PTX, and no
CUDA C source left to compile at load time."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from required_tools import require

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.targets import BuildOptions, get_preset
from lowbit.targets.cuda import CudaPayload, blob_entries, gencode_flags
from lowbit.targets.tools import NVCC, nvidia_wheel_binary

BLOB_SYMBOL = "__tvm_ffi__library_bin"


def cuobjdump() -> str:
    for path in (nvidia_wheel_binary("cuobjdump"), shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if path and os.path.isfile(path):
            return path
    return require("cuobjdump", "lists a fatbin's cubins (pip install nvidia-cuda-cuobjdump)")


def library_blob(so: Path) -> bytes:
    """The bytes of the library's serialized module tree, found through its dynamic symbol."""
    symbols = subprocess.run([require("nm", "reads ELF symbols"), "-D", "--defined-only", "-S", str(so)],
                             capture_output=True, text=True, check=True).stdout
    address, size = next((int(f[0], 16), int(f[1], 16)) for f in map(str.split, symbols.splitlines())
                         if len(f) == 4 and f[3] == BLOB_SYMBOL)
    segments = subprocess.run([require("readelf", "reads ELF segments"), "-lW", str(so)],
                              capture_output=True, text=True, check=True).stdout
    data = so.read_bytes()
    for f in map(str.split, segments.splitlines()):
        if f and f[0] == "LOAD":
            offset, vaddr, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            if vaddr <= address < vaddr + filesz:
                start = offset + address - vaddr
                return data[start : start + size]
    raise AssertionError("blob not in a loaded segment")


def test_gencode_flags():
    assert gencode_flags(("sm_80", "sm_90a")) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a",
        "-gencode", "arch=compute_90,code=compute_90"]
    with pytest.raises(LowbitError, match="bad CUDA architecture 'ampere'"):
        gencode_flags(("ampere",))


def test_cuda_target_builds_for_the_oldest_arch_and_refuses_bad_ones():
    preset = get_preset("cuda")
    assert preset.target(BuildOptions(cuda_archs=("sm_100", "sm_90a", "sm_80")))["arch"] == "sm_80"
    with pytest.raises(LowbitError, match="bad CUDA architecture 'ampere'"):
        preset.target(BuildOptions(cuda_archs=("sm_80", "ampere")))


def test_cuda_library_holds_a_fatbin_per_arch(tiny_mlc, tmp_path):
    if NVCC.find() is None:
        require("nvcc", "compiles the CUDA kernels ahead of time")
    lib = tmp_path / "model.so"
    result = CliRunner().invoke(main, ["compile", str(tiny_mlc("q4f16_1")), "--target", "cuda", "-o", str(lib)])
    assert result.exit_code == 0, result.output
    data = lib.read_bytes()
    assert b'extern "C" __global__' not in data and b"#include <cuda_fp16.h>" not in data
    cuda = [CudaPayload.parse(p) for kind, p in blob_entries(library_blob(lib)) if kind == "cuda"]
    assert len(cuda) == 1 and cuda[0].fmt == "fatbin" and len(cuda[0].kernels) > 20
    fatbin = tmp_path / "kernels.fatbin"
    fatbin.write_bytes(cuda[0].code)
    tool = cuobjdump()
    elves = subprocess.run([tool, "--list-elf", str(fatbin)], capture_output=True, text=True, check=True).stdout
    for arch in ("sm_80", "sm_86", "sm_89", "sm_90a"):
        assert sum(line.endswith(f".{arch}.cubin") for line in elves.splitlines()) == 1, elves
    ptx = subprocess.run([tool, "--list-ptx", str(fatbin)], capture_output=True, text=True, check=True).stdout
    assert ptx.strip().endswith(".sm_90.ptx"), ptx
    symbols = subprocess.run([tool, "--dump-elf-symbols", str(fatbin)], capture_output=True, text=True,
                             check=True).stdout
    for kernel in cuda[0].kernels:  # every kernel the host code launches is in the cubins
        assert kernel in symbols
