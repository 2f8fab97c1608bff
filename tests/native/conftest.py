"""The native engine's builds (apps/native, CMake), shared by its tests; kept in the cache between runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from native_build import NATIVE, missing, run

from lowbit.cache import cache_dir


def _configure_and_build(build: Path, options: list[str], targets: list[str]) -> Path:
    for tool in ("cmake", "pkg-config"):
        if run(["which", tool]).returncode != 0:
            missing(tool)
    if not Path("/usr/include/nlohmann/json.hpp").is_file():
        missing("nlohmann-json3-dev")
    configure = run(["cmake", "-S", NATIVE, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *options])
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    target_args = [arg for target in targets for arg in ("--target", target)]
    compiled = run(["cmake", "--build", build, "-j2", *target_args])
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    return build


@pytest.fixture(scope="session")
def native_build() -> Path:
    """apps/native configured and built (Release, 2 jobs) in the cache; incremental after the first.
    With PCRE2, which the tests use as the reference for the built-in pre-tokenizer matchers."""
    if run(["pkg-config", "--exists", "libpcre2-8"]).returncode != 0:
        missing("libpcre2-dev")
    return _configure_and_build(
        cache_dir() / "native-build", ["-DLOWBIT_PCRE2=ON", "-DLOWBIT_STATIC_MODEL="], []
    )


@pytest.fixture(scope="session")
def native_build_without_pcre2() -> Path:
    """Only the tokenizer test, built with -DLOWBIT_PCRE2=OFF (as the mobile builds are), in a
    second cached build folder."""
    return _configure_and_build(
        cache_dir() / "native-build-no-pcre2",
        ["-DLOWBIT_PCRE2=OFF", "-DLOWBIT_STATIC_MODEL="],
        ["tokenizer_test"],
    )
