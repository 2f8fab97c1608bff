"""What is checked before a compiled library is loaded into this process.

The TVM runtime maps a library into the process that loads it, so a truncated or corrupted one
can end that process with a signal (SIGBUS, SIGSEGV) instead of an error. A library with the
sha256 ``lowbit compile`` records beside it is checked against it. One without (built before
checksums, or copied without it) is loaded first in a child process, which a crash ends instead
of this one; a library that passed is remembered by its sha256 under ``$LOWBIT_CACHE``, so the
child runs once per library. Only shared libraries are loaded at all: static archives (``.a``)
and object tars (``.tar``) are for linking into an app (``lowbit package``), and TVM would try
to link a ``.tar`` with the host compiler, writing beside it.

``python -m lowbit.runtime.library_check LIB`` is the child: it loads LIB and reads its metadata.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from lowbit.artifact import METADATA_FUNC, library_checksum_path, sha256_file, verify_library
from lowbit.errors import LowbitError
from lowbit.runtime.webgpu_runtime import load_for_library

SHARED_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")  # what tvm.runtime.load_module dlopens
CHILD_TIMEOUT_S = 600  # a large GPU library takes seconds to load; a hang takes forever
CHECKED_DIR = "library-checks"  # under $LOWBIT_CACHE: one empty file per library sha256 that loaded


def check_library(path: Path) -> None:
    """Refuse a library that is missing, not a shared library, altered since ``lowbit compile``
    or (without a recorded sha256) crashes or fails the loader in a child process."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"model library {path} does not exist")
    if not path.name.endswith(SHARED_LIBRARY_SUFFIXES):
        raise LowbitError(f"model library {path} is not a shared library "
                          f"({', '.join(SHARED_LIBRARY_SUFFIXES)}): static archives and object tars are "
                          "linked into an app (lowbit package), not loaded by run, chat, eval or serve")
    verify_library(path)  # the recorded sha256, or else the ELF header's extent
    if not library_checksum_path(path).is_file():
        _load_in_child(path)


def _load_in_child(path: Path) -> None:
    """Load ``path`` in a child process once per content, turning its death into one error line."""
    from lowbit.cache import cache_dir

    try:
        marker: Path | None = cache_dir() / CHECKED_DIR / sha256_file(path)
    except OSError:  # no writable cache: check on every load
        marker = None
    if marker is not None and marker.is_file():
        return
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, str(path)], capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LowbitError(f"loading model library {path} in a check process took over "
                          f"{CHILD_TIMEOUT_S} s (corrupted?)") from None
    if proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        raise LowbitError(f"model library {path} crashed the loader ({name}) in a check process: "
                          "truncated or corrupted? rebuild it with lowbit compile")
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise LowbitError(f"cannot load model library {path}: {last[0]}")
    if marker is not None:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _child(path: str) -> int:
    """Load the library and read its metadata as the engine does; an error is one stderr line."""
    try:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        load_for_library(Path(path))  # WGSL kernels need lowbit's WebGPU runtime
        vm = VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
        try:
            metadata = vm[METADATA_FUNC]
        except Exception:  # noqa: BLE001 - not built by lowbit: nothing more to read
            return 0
        str(metadata())
    except Exception as e:  # noqa: BLE001 - TVM raises its own error types
        print((str(e).strip() or type(e).__name__).splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
