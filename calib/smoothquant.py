"""SmoothQuant-style scaling without training: LET's initial scales (:mod:`lowbit.calib.let`,
``alpha``; ``down_scale`` 0 leaves out the up → down pair; ``shift`` 1 adds the midpoint
shifts, as Outlier Suppression+) folded into each block, then round-to-nearest weights. The
ablation of OmniQuant's LET: the same transformation, not learned."""

from __future__ import annotations

import torch

from lowbit.calib import let
from lowbit.calib.blocks import (
    BlockData,
    calibration_ids,
    quantize_blockwise,
    resolve_settings,
)
from lowbit.calib.methods import CalibContext, register
from lowbit.quantizer import QuantizedWeight, quantize


@register("smoothquant", "SmoothQuant-style scaling (LET's init, alpha) folded, then RTN (data)",
          uses_data=True)
def smoothquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    defaults = {"alpha": let.default_alpha(ctx.act_bits), "down_scale": 1, "shift": 0}
    resolve_settings(ctx, "smoothquant", {"small": defaults, "paper": defaults})
    let.check_shift(ctx.settings, ctx.act_bits)
    ids = calibration_ids(ctx, int(ctx.settings["nsamples"]), int(ctx.settings["seqlen"]))
    return run_smoothquant(model, layers, ctx, ids)


def run_smoothquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext, ids: torch.Tensor
) -> dict[str, QuantizedWeight]:
    """SmoothQuant on the token windows ``ids`` [n, T], with ``ctx.settings`` resolved."""

    def block_fn(d: BlockData) -> dict[str, QuantizedWeight]:
        let.fold_(d.block, d.layout, *let.block_let(d, ctx.settings))
        modules = dict(d.block.named_modules())
        return {n: quantize(modules[n].weight.detach().cpu(), ctx.spec) for n in d.linears}

    return quantize_blockwise(model, layers, ctx, "smoothquant", ids, block_fn, ("fp",))
