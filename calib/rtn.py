"""Round-to-nearest: each group's min/max (or max|w|) range, no calibration data."""

from __future__ import annotations

import torch
from tqdm import tqdm

from lowbit.calib.methods import CalibContext, register
from lowbit.errors import LowbitError
from lowbit.quantizer import QuantizedWeight, quantize


@register("rtn", "round-to-nearest with min/max group ranges (no data)", uses_data=False)
def rtn(model: torch.nn.Module, layers: list[str], ctx: CalibContext) -> dict[str, QuantizedWeight]:
    if ctx.settings:
        raise LowbitError(f"rtn takes no settings (got {', '.join(sorted(ctx.settings))})")
    modules = dict(model.named_modules())
    out = {}
    for name in tqdm(layers, desc="rtn", unit="linear", disable=not ctx.progress):
        out[name] = quantize(modules[name].weight.data, ctx.spec)
    return out
