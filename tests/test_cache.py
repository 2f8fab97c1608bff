"""Atomic outputs: the umask's permissions, no temporary left on SIGTERM, stale ones cleaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lowbit.cache import STALE_SECONDS, atomic_dir, atomic_file


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_file_mode_follows_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "r.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode


def test_stale_temporaries_are_removed(tmp_path):
    stale, fresh, other = (tmp_path / ".out.ab12.tmp", tmp_path / ".out.cd34.tmp", tmp_path / ".x.ef56.tmp")
    for p in (stale, fresh, other):
        p.mkdir()
    day_ago = time.time() - STALE_SECONDS - 60
    os.utime(stale, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.cd34.tmp", ".x.ef56.tmp", "out"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, None)])
def test_signal_removes_temporary_folder(tmp_path, sig, code):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lowbit.cache import atomic_dir, exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        f"with atomic_dir(Path({str(tmp_path / 'out')!r})) as tmp:\n"
        "    (tmp / 'part').write_text('x')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    tmp = proc.stdout.readline().strip()
    assert tmp and os.path.isdir(tmp)
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    assert rc != 0 and (code is None or rc == code)
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_executable_bit_under_umask(tmp_path):
    """A linker writing into the temporary file makes it 0711; the output is 0755 under 022."""
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "lib.so") as tmp:
            tmp.write_bytes(b"\x7fELF")
            tmp.chmod(0o711)
    finally:
        os.umask(old)
    assert (tmp_path / "lib.so").stat().st_mode & 0o777 == 0o755
