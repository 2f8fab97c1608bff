"""Helpers for target tests: device-source extraction."""

from __future__ import annotations

import re


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
    return split_kernels(device_module(executable, kind).inspect_source(""))


def split_kernels(text: str) -> dict[str, str]:
    """Kernel name → source, from a device module's source text."""
    parts = re.split(r"^// Function: (\S+)\n(?://-+\n)?", text, flags=re.M)
    sources: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if body.strip():
            sources[name] = body
    assert sources, "no kernels found"
    return sources
