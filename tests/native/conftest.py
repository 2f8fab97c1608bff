"""The native engine's build (apps/native, CMake), shared by its tests; kept in the cache between runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from native_build import NATIVE, missing, run

from lowbit.cache import cache_dir


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
