"""Tests that need an external program or module skip without it, naming the fix (fail with ``CI=true``)."""

from __future__ import annotations

import os
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
