"""BitDistiller's asymmetric clipping search (``quantization/autoclip.py``: ``auto_2clip_layer``,
applied with ``clip_utils.apply_clip``), the initialisation before QAT.

Per group, every pair of shrink ratios ``(1 − i/n_grid, 1 − j/n_grid)``, ``i, j < max_shrink ·
n_grid``, scales the group's max and min; the pair whose quantized group gives the smallest
error of the group's partial output ``X_g W_gᵀ`` on calibration activations wins, and the
weights are clamped to it in place. The error is exact over all calibration tokens, through
the group's input Gram matrix (the reference samples 512 tokens). The search runs on the
weights' own quantizer (INT asymmetric or NF3), with the inputs of the full-precision model, and
skips q/k projections, as the reference. Groups are scored independently, so cross-group terms
could make a whole output row worse than no clipping; such rows keep their weights, which
guarantees no linear's output error on the calibration data exceeds its unclipped one.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from lowbit.calib.awq_clip import _group_grams, output_error
from lowbit.calib.blocks import (
    block_layout,
    block_linears,
    capture_block_inputs,
    decoder_layers,
    device,
    forward_all,
    linear_input_grams,
)
from lowbit.quantizer import QuantSpec, _grouped, fake_quantize, group_min_max


def clamp_groups(w: torch.Tensor, spec: QuantSpec, xmin: torch.Tensor, xmax: torch.Tensor) -> torch.Tensor:
    """``w`` [N, K] clamped to the per-group ranges [N, G] (the reference's apply_clip)."""
    k = w.shape[1]
    lo = xmin.repeat_interleave(spec.group_len(k), dim=1)[:, :k].to(w)
    hi = xmax.repeat_interleave(spec.group_len(k), dim=1)[:, :k].to(w)
    return torch.minimum(torch.maximum(w, lo), hi)


def search_clip(
    w: torch.Tensor, gram: torch.Tensor, spec: QuantSpec, n_grid: int = 20, max_shrink: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group clip range ``(min, max)`` [N, G] for ``w`` [N, K], chosen on the input Gram
    ``gram`` [K, K]; rows that clipping would make worse keep their own min/max. Each candidate
    is scored as training starts from it: the clamped weights, quantized with their own ranges."""
    w = w.detach().float()
    gmin, gmax = group_min_max(w, spec)
    grams = _group_grams(gram.double(), spec)
    best_err = torch.full(gmin.shape, float("inf"), dtype=torch.float64)
    best_min, best_max = gmin.clone(), gmax.clone()
    steps = int(max_shrink * n_grid)
    for i in range(steps):
        xmax = gmax * (1 - i / n_grid)
        for j in range(steps):
            xmin = gmin * (1 - j / n_grid)
            q = fake_quantize(clamp_groups(w, spec, xmin, xmax), spec)
            d = _grouped((q - w).double(), spec, 0.0)
            err = torch.einsum("ngi,gij,ngj->ng", d, grams, d)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_min = torch.where(better, xmin, best_min)
            best_max = torch.where(better, xmax, best_max)
    clipped = fake_quantize(clamp_groups(w, spec, best_min, best_max), spec)
    worse = output_error(w, clipped, gram) > output_error(w, fake_quantize(w, spec), gram)
    best_min[worse], best_max[worse] = gmin[worse], gmax[worse]
    return best_min, best_max


@torch.no_grad()
def apply_asym_clip(
    model: torch.nn.Module,
    layers: list[str],
    spec: QuantSpec,
    ids: torch.Tensor,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    progress: bool = True,
) -> None:
    """Search and apply the clip ranges of every linear in ``layers`` (except the layout's
    ``clip_skipped``: q/k), block by block on the calibration windows ``ids`` [n, T]."""
    dev = device()
    layout = block_layout(model)
    decoder = decoder_layers(model)
    x, layer_kwargs = capture_block_inputs(model, ids, dev)
    for i, block in enumerate(tqdm(decoder, desc="asym-clip", unit="block", disable=not progress)):
        kwargs = layer_kwargs[i]
        names = [n for n in block_linears(block, f"{layout.layers}.{i}", layers)
                 if n not in layout.clip_skipped]
        grams = linear_input_grams(block, x, kwargs, names)
        x = forward_all(block, x, kwargs)  # the next block sees the unclipped block, as the reference
        modules = dict(block.named_modules())
        for name in names:
            w = modules[name].weight
            xmin, xmax = search_clip(w.cpu(), grams[name].cpu(), spec, n_grid, max_shrink)
            w.copy_(clamp_groups(w, spec, xmin, xmax))
    model.to("cpu")
