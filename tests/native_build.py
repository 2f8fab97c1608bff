"""Building and testing apps/ from pytest (tests/native, tests/apps): tool checks, CMake builds, CTest runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[1] / "apps" / "native"
INSTALL_HINT = "bash targets/install-tools.sh (as root) installs it"


def missing(what: str, needed_by: str = "the native engine's build") -> None:
    """Skip (fail with ``CI=true``) naming what to install."""
    message = f"{what} is not installed ({needed_by} needs it); {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def run_ctest(build: Path, *names: str) -> str:
    """Run the named CTest tests (all when none); their output, after asserting they passed."""
    regex = ["-R", "^(" + "|".join(names) + ")$"] if names else []
    result = run(["ctest", "--test-dir", build, "--verbose", *regex], timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.stdout


def write_fixture(build: Path, key: str, value) -> None:
    """Set ``key`` of the build's test manifest (large values go to their own file)."""
    folder = build / "fixtures"
    folder.mkdir(exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if isinstance(value, dict | list):
        (folder / f"{key}.json").write_text(json.dumps(value, ensure_ascii=False))
        value = str(folder / f"{key}.json")
    manifest[key] = value
    manifest_path.write_text(json.dumps(manifest, indent=1))
