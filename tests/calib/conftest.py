"""Fixtures of the block-wise calibration tests."""

from __future__ import annotations

import pytest
import torch
from blockwise_helpers import random_ids

from lowbit.calib.blocks import capture_block_inputs, decoder_layers
from lowbit.models import load_torch_model


@pytest.fixture
def tiny_block(tiny_llama_dir):
    """(model, its first decoder block, the block's inputs [2, 32, 96], block kwargs)."""
    model = load_torch_model(tiny_llama_dir)
    x, (kwargs, *_) = capture_block_inputs(model, random_ids(), torch.device("cpu"))
    return model, decoder_layers(model)[0], x, kwargs


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))

