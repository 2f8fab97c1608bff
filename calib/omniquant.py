"""OmniQuant, weight-only (Shao et al. 2024): learnable weight clipping trained block by block.

Each linear gets two logits per group, ``γ`` and ``β``; its range is ``[σ(β)·min W_g,
σ(γ)·max W_g]`` (both initialised to 4, as the reference). Per decoder block, AdamW on the
logits only (no weight decay, one window per step, windows in order) minimises the MSE between
the block's output with fake-quantized weights on the quantized-prefix inputs and the FP
block's output on the FP inputs; with ``aug_loss`` (the reference's W2 scripts) the MSE to the
FP block on the quantized-prefix inputs is added. ``--preset paper`` is the reference's lr
1e-2 and 20 (W3/W4) or 40 (W2) epochs; ``--preset small`` trains far fewer steps to fit the
CPU budget, with a larger lr (see :func:`defaults`).
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from lowbit.calib.blocks import (
    BlockData,
    calibration_ids,
    forward_all,
    quantize_blockwise,
    resolve_settings,
)
from lowbit.calib.methods import CalibContext, register
from lowbit.errors import LowbitError
from lowbit.quantizer import (
    QuantizedWeight,
    QuantSpec,
    compute_qparams,
    fake_quantize_lwc,
    group_min_max,
    lwc_range,
    quantize_with,
)

LWC_INIT = 4.0  # the reference's init_value: σ(4) ≈ 0.982 of the group's min/max


def defaults(bits: int) -> dict[str, dict]:
    """Per-preset defaults. ``paper`` is the reference's scripts (lr 1e-2, W2: 40 epochs and
    aug_loss). ``small`` takes 10× fewer steps, so a larger lr: 0.1 gave the lowest block-output
    MSE on validation windows among 0.01/0.05/0.1/0.2/0.4 (64 steps, W2 and W3 g128, block 5)."""
    aug = int(bits == 2)
    return {
        "small": {"epochs": 6 if bits == 2 else 3, "lr": 0.1, "wd": 0.0, "aug_loss": aug},
        "paper": {"epochs": 40 if bits == 2 else 20, "lr": 1e-2, "wd": 0.0, "aug_loss": aug},
    }


class LwcBlock:
    """A decoder block whose named linears run with LWC fake-quantized weights."""

    def __init__(self, block: torch.nn.Module, names: list[str], spec: QuantSpec) -> None:
        self.block, self.spec = block, spec
        modules = dict(block.named_modules())
        self.weights = {n: modules[n].weight.detach() for n in names}
        self.minmax = {n: group_min_max(w, spec) for n, w in self.weights.items()}
        self.up, self.low = {}, {}
        for n, w in self.weights.items():
            shape = (w.shape[0], spec.num_groups(w.shape[1]))
            self.up[n] = torch.full(shape, LWC_INIT, device=w.device, requires_grad=True)
            self.low[n] = torch.full(shape, LWC_INIT, device=w.device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.up.values(), *self.low.values()]

    def forward(self, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        fake = {
            f"{n}.weight": fake_quantize_lwc(w, self.spec, self.up[n], self.low[n], self.minmax[n])
            for n, w in self.weights.items()
        }
        out = functional_call(self.block, fake, (x,), kwargs)
        return out[0] if isinstance(out, tuple) else out

    def loss(self, x: torch.Tensor, targets: list[torch.Tensor], kwargs: dict) -> torch.Tensor:
        out = self.forward(x, kwargs)
        return sum(torch.nn.functional.mse_loss(out, t) for t in targets)

    @torch.no_grad()
    def export(self) -> dict[str, QuantizedWeight]:
        out = {}
        for n, w in self.weights.items():
            xmin, xmax = lwc_range(w, self.spec, self.up[n], self.low[n])
            s, z = compute_qparams(w.cpu(), self.spec, xmin.cpu(), xmax.cpu())
            out[n] = quantize_with(w.cpu(), self.spec, s, z)
        return out


def train_block(
    data: BlockData, spec: QuantSpec, epochs: int, lr: float, wd: float, aug_loss: bool
) -> dict[str, QuantizedWeight]:
    """Learn the LWC logits of one block and return its quantized linears."""
    block = data.block
    block.requires_grad_(False)
    lwc = LwcBlock(block, list(data.linears), spec)
    x = data.quant_in
    targets = [data.fp_out]
    if aug_loss:
        targets.append(forward_all(block, x, data.kwargs))
    opt = torch.optim.AdamW(lwc.parameters(), lr=lr, weight_decay=wd)
    for epoch in range(epochs):
        total = 0.0
        for j in range(len(x)):
            loss = lwc.loss(x[j : j + 1], [t[j : j + 1] for t in targets], data.kwargs)
            if not torch.isfinite(loss):
                raise LowbitError(
                    f"omniquant: loss is {loss.item()} in block {data.index} (epoch {epoch}, "
                    f"window {j}); try a lower lr"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        data.report(f"block {data.index} epoch {epoch + 1}/{epochs} loss {total / len(x):.3g}")
    return lwc.export()


@register("omniquant", "OmniQuant weight-only: learnable weight clipping, block-wise MSE (data)",
          uses_data=True)
def omniquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    resolve_settings(ctx, "omniquant", defaults(ctx.spec.bits))
    ids = calibration_ids(ctx, int(ctx.settings["nsamples"]), int(ctx.settings["seqlen"]))
    return run_omniquant(model, layers, ctx, ids)


def run_omniquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext, ids: torch.Tensor
) -> dict[str, QuantizedWeight]:
    """OmniQuant on the token windows ``ids`` [n, T], with ``ctx.settings`` already resolved."""
    s = ctx.settings

    def block_fn(d: BlockData) -> dict[str, QuantizedWeight]:
        return train_block(d, ctx.spec, int(s["epochs"]), float(s["lr"]), float(s["wd"]),
                           bool(int(s["aug_loss"])))

    return quantize_blockwise(model, layers, ctx, "omniquant", ids, block_fn, ("fp", "quant"))
