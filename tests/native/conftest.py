"""The native engine's build (apps/native, CMake), shared by its tests; kept in the cache between runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lowbit.cache import cache_dir

NATIVE = Path(__file__).resolve().parents[2] / "apps" / "native"
INSTALL_HINT = "bash targets/install-tools.sh (as root) installs it"


def missing(what: str) -> None:
    """Skip (fail with ``CI=true``) naming what to install."""
    message = f"{what} is not installed (the native engine's build needs it); {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def native_build() -> Path:
    """apps/native configured and built (Release, 2 jobs) in the cache; incremental after the first."""
    for tool in ("cmake", "pkg-config"):
        if run(["which", tool]).returncode != 0:
            missing(tool)
    if run(["pkg-config", "--exists", "libpcre2-8"]).returncode != 0:
        missing("libpcre2-dev")
    if not Path("/usr/include/nlohmann/json.hpp").is_file():
        missing("nlohmann-json3-dev")
    build = cache_dir() / "native-build"
    configure = run(["cmake", "-S", NATIVE, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLOWBIT_STATIC_MODEL="])
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compiled = run(["cmake", "--build", build, "-j2"])
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    return build


def run_ctest(build: Path, *names: str) -> str:
    """Run the named CTest tests (all when none); their output, after asserting they passed."""
    regex = ["-R", "^(" + "|".join(names) + ")$"] if names else []
    result = run(["ctest", "--test-dir", build, "--verbose", *regex], timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.stdout
