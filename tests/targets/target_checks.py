"""Helpers for target tests: tool requirements and device-source extraction."""

from __future__ import annotations

import os
import re
import shutil

import pytest

INSTALL_HINT = "bash targets/install-tools.sh (as root) installs it"


def require(program: str, why: str) -> str:
    """The program's path; where it is missing, skip (fail with ``CI=true``) naming the fix."""
    if path := shutil.which(program):
        return path
    message = f"{program} not found ({why}); {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_any(programs: tuple[str, ...], why: str) -> str:
    """The first of ``programs`` on PATH (Debian names some tools with a version suffix)."""
    for program in programs[:-1]:
        if path := shutil.which(program):
            return path
    return require(programs[-1], why)


def require_module(name: str, why: str):
    try:
        return __import__(name)
    except ImportError as e:  # an import error from its native library counts as missing too
        message = f"Python module {name} unavailable ({why}: {e}); pip install -e '.[dev]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def device_module(executable, kind: str):
    """The executable's device-code module of ``kind`` (relax executable → host → device)."""
    stack = [executable.mod]
    while stack:
        mod = stack.pop()
        if mod.kind == kind:
            return mod
        stack.extend(mod.imports)
    raise AssertionError(f"no {kind} module in the executable")


def kernel_sources(executable, kind: str) -> dict[str, str]:
    """Kernel name → its own source: TVM joins one program per kernel, each after a
    ``// Function: NAME`` header."""
    text = device_module(executable, kind).inspect_source("")
    parts = re.split(r"^// Function: (\S+)\n(?://-+\n)?", text, flags=re.M)
    sources: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if body.strip():
            sources[name] = body
    assert sources, f"no {kind} kernels found"
    return sources
