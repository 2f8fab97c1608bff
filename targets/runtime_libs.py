"""TVM runtime libraries for other machines, for native hosts cross-built here (apps/native).

PyPI's ``apache-tvm`` / ``apache-tvm-ffi`` wheels for ``manylinux_2_28_aarch64`` carry an aarch64
``libtvm_runtime.so`` (with the relax VM and the paged KV cache) and ``libtvm_ffi.so``; the
versions installed here are downloaded once into the cache.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lowbit.cache import cache_dir
from lowbit.errors import LowbitError

AARCH64_WHEEL_PLATFORM = "manylinux_2_28_aarch64"
RUNTIME_MEMBERS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


def aarch64_tvm_runtime() -> Path:
    """A folder with the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of the installed
    TVM versions (downloaded from PyPI once, then cached)."""
    versions = {name: importlib.metadata.version(name) for name in RUNTIME_MEMBERS}
    folder = cache_dir() / "aarch64-runtime" / "-".join(f"{n}-{v}" for n, v in versions.items())
    if all((folder / Path(member).name).is_file() for member in RUNTIME_MEMBERS.values()):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "--platform", AARCH64_WHEEL_PLATFORM, "--python-version", "3.11", "-d", tmp,
                              *(f"{n}=={v}" for n, v in versions.items())], capture_output=True, text=True)
        if pip.returncode != 0:
            raise LowbitError(f"cannot download the aarch64 TVM runtime wheels from PyPI: {pip.stderr.strip()[-300:]}")
        staging = Path(tempfile.mkdtemp(dir=cache_dir()))
        for wheel in Path(tmp).glob("*.whl"):
            name = "apache-tvm-ffi" if wheel.name.startswith("apache_tvm_ffi") else "apache-tvm"
            with zipfile.ZipFile(wheel) as z:
                (staging / Path(RUNTIME_MEMBERS[name]).name).write_bytes(z.read(RUNTIME_MEMBERS[name]))
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(folder)  # whole or not at all
    return folder
