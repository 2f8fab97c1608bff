"""Shared fixtures: tiny random models (unit tests) and the bundled model (end-to-end tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import save_tiny, tiny_llama_config, tiny_qwen2_config


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_llama"), tiny_llama_config())


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_qwen2"), tiny_qwen2_config())


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The bundled SmolLM2-135M as a cached HF folder (built on first use, ~40 s)."""
    from lowbit.models import resolve_model

    return resolve_model("smollm2-135m")
