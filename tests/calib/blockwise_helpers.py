"""Shared helpers of the block-wise calibration tests (tiny random models)."""

from __future__ import annotations

import torch

from lowbit.calib.blocks import resolve_settings
from lowbit.calib.methods import CalibContext
from lowbit.quantizer import QuantSpec


def random_ids(n: int = 2, seqlen: int = 32, vocab: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def make_ctx(model_dir, spec: QuantSpec, method: str, defaults: dict, **settings) -> CalibContext:
    ctx = CalibContext(model_dir, spec, progress=False, settings=settings)
    resolve_settings(ctx, method, defaults)
    return ctx
