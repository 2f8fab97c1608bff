"""AWQ's weight-clipping search (llm-awq ``auto_clip``), without AWQ's activation scaling.

Per group, try clipping thresholds ``t = r · max|W_g|`` for ``r = 1, 1 − 1/20, …, 0.55`` (range
``[max(min W_g, −t), min(max W_g, t)]``) and keep the one with the smallest error of the
group's partial output ``X_g W_gᵀ`` on calibration inputs. The error is evaluated exactly over
all tokens through the group's input Gram matrix. Inputs come from the full-precision model, and
q/k projections are not clipped, as in llm-awq. Groups are scored independently, so cross-group
terms could make a whole output row worse than plain min/max rounding; such rows fall back to
it (``r = 1``), which guarantees no linear's output error exceeds RTN's on the calibration data.
"""

from __future__ import annotations

import torch

from lowbit.calib.blocks import (
    BlockData,
    calibration_ids,
    linear_input_grams,
    quantize_blockwise,
    resolve_settings,
)
from lowbit.calib.methods import CalibContext, register
from lowbit.quantizer import (
    QuantizedWeight,
    QuantSpec,
    _grouped,
    compute_qparams,
    group_min_max,
    quantize,
    quantize_with,
)

DEFAULTS = {"n_grid": 20, "max_shrink": 0.5, "clip_qk": 0}


def _group_grams(gram: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Diagonal blocks of ``gram`` [K, K] per group, [G, g, g] (a partial group zero-padded)."""
    k = gram.shape[0]
    g, groups = spec.group_len(k), spec.num_groups(k)
    out = torch.zeros(groups, g, g, dtype=gram.dtype)
    for j in range(groups):
        lo, hi = j * g, min((j + 1) * g, k)
        out[j, : hi - lo, : hi - lo] = gram[lo:hi, lo:hi]
    return out


def output_error(w: torch.Tensor, q: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Mean squared output error per row, ``(Q − W) G (Q − W)ᵀ`` diagonal [N]."""
    d = (q - w).double()
    return torch.einsum("nk,kl,nl->n", d, gram, d)


def clip_search(
    w: torch.Tensor, gram: torch.Tensor, spec: QuantSpec, n_grid: int = 20, max_shrink: float = 0.5
) -> QuantizedWeight:
    """Quantize ``w`` [N, K] with per-group clipping chosen on the input Gram ``gram`` [K, K]."""
    w = w.detach().float()
    gram = gram.double()
    gmin, gmax = group_min_max(w, spec)
    amax = torch.maximum(gmin.abs(), gmax.abs())
    grams = _group_grams(gram, spec)
    best_err = torch.full_like(amax, float("inf"), dtype=torch.float64)
    best_min, best_max = gmin.clone(), gmax.clone()
    for step in range(int(max_shrink * n_grid)):
        t = amax * (1 - step / n_grid)
        xmin, xmax = torch.maximum(gmin, -t), torch.minimum(gmax, t)
        q = quantize_with(w, spec, *compute_qparams(w, spec, xmin, xmax)).dequantize()
        d = _grouped((q - w).double(), spec, 0.0)
        err = torch.einsum("ngi,gij,ngj->ng", d, grams, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_min = torch.where(better, xmin, best_min)
        best_max = torch.where(better, xmax, best_max)
    clipped = quantize_with(w, spec, *compute_qparams(w, spec, best_min, best_max))
    plain = quantize(w, spec)
    worse = output_error(w, clipped.dequantize(), gram) > output_error(w, plain.dequantize(), gram)
    if worse.any():
        clipped.codes[worse] = plain.codes[worse]
        clipped.scales[worse] = plain.scales[worse]
        if clipped.zeros is not None:
            clipped.zeros[worse] = plain.zeros[worse]
    return clipped


def _awq_block(data: BlockData, spec: QuantSpec, settings: dict) -> dict[str, QuantizedWeight]:
    modules = dict(data.block.named_modules())
    skip = () if int(settings["clip_qk"]) else data.layout.clip_skipped
    clip = [n for n in data.linears if n not in skip]
    grams = linear_input_grams(data.block, data.fp_in, data.kwargs, clip)
    out = {}
    for name in data.linears:
        w = modules[name].weight.detach().cpu()
        if name in grams:
            out[name] = clip_search(
                w, grams[name].cpu(), spec, int(settings["n_grid"]), float(settings["max_shrink"])
            )
        else:
            out[name] = quantize(w, spec)
    return out


@register("awq-clip", "AWQ's per-group clipping search on output error (calibration data)",
          uses_data=True)
def awq_clip(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    settings = resolve_settings(ctx, "awq-clip", {"small": DEFAULTS, "paper": DEFAULTS})
    ids = calibration_ids(ctx, int(settings["nsamples"]), int(settings["seqlen"]))
    return run_awq_clip(model, layers, ctx, ids)


def run_awq_clip(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext, ids: torch.Tensor
) -> dict[str, QuantizedWeight]:
    """awq-clip on the token windows ``ids`` [n, T], with ``ctx.settings`` already resolved."""
    settings = ctx.settings
    return quantize_blockwise(
        model, layers, ctx, "awq-clip", ids, lambda d: _awq_block(d, ctx.spec, settings), ("fp",)
    )
