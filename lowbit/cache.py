"""Where lowbit keeps what it builds once (cache dir) and how it writes outputs (atomically)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lowbit.errors import LowbitError


def cache_dir() -> Path:
    """``$LOWBIT_CACHE``, else ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``."""
    if env := os.environ.get("LOWBIT_CACHE"):
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lowbit"
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``."""
    if out.exists() and not overwrite:
        raise LowbitError(f"output {out} already exists (pass --overwrite to replace it)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_SECONDS = 24 * 3600  # a temporary output this old is a killed run's, not a running one's


def _remove_stale(out: Path) -> None:
    """Remove ``out``'s temporary siblings (``.NAME.XXXX.tmp*``) left by a run killed a day ago."""
    cutoff = time.time() - STALE_SECONDS
    for p in out.parent.glob(f".{glob.escape(out.name)}.*.tmp*"):
        with contextlib.suppress(OSError):
            if p.lstat().st_mtime < cutoff:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise :class:`SystemExit` (as SIGINT raises KeyboardInterrupt), so the
    ``finally`` of :func:`atomic_dir` / :func:`atomic_file` removes the temporary output. Leaves
    a handler someone else installed alone (uvicorn's, a test runner's)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``, with the same suffix (writers that choose the
    format by suffix see the right one); move it into place only on success."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{out.suffix}", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp made the file 0600 (a linker writing into it adds only x bits): give it the
        # mode a plain open() would, executable if the writer made it so
        tmp.chmod((0o777 if tmp.stat().st_mode & 0o111 else 0o666) & ~_umask())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
