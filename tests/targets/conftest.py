"""Fixtures shared by the target tests."""

from __future__ import annotations

import pytest
from required_tools import require, require_module


@pytest.fixture(scope="session")
def webgpu_runtime() -> str:
    """lowbit's WebGPU runtime, loaded into this process (built into the cache on first use); the
    adapter's description. Without a Vulkan driver: skip (fail with CI=true) naming it."""
    require_module("wgpu", "ships wgpu-native")
    from lowbit.errors import LowbitError
    from lowbit.runtime.webgpu_runtime import load_runtime

    try:
        return load_runtime()
    except LowbitError as e:
        require("mesa-vulkan-drivers-missing", str(e))
