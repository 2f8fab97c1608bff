"""OmniQuant (Shao et al. 2024): learnable weight clipping (LWC) and, with ``let``, learnable
equivalent transformation (LET, :mod:`lowbit.calib.let`), trained block by block.

Each linear gets two logits per group, ``γ`` and ``β``; its range is ``[σ(β)·min W_g,
σ(γ)·max W_g]`` (both initialised to 4, as the reference). Per decoder block, AdamW (no weight
decay, one window per step, windows in order) on the logits — lr ``lr`` — and the LET scales —
lr ``let_lr`` — minimises the MSE between the block's output with fake-quantized weights on
the quantized-prefix inputs and the FP block's output on the FP inputs; with ``aug_loss`` (the
reference's W2 scripts) the MSE to the FP block on the quantized-prefix inputs is added. With
``act_bits`` (W4A4, W6A6) every linear's input is fake-quantized per token while training, as
in the exported checkpoint. ``--preset paper`` is the reference's scripts (20 epochs, 40 at
W2); ``--preset small`` trains far fewer steps to fit the CPU budget, with larger lrs (see
:func:`defaults`).
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from lowbit.architectures import BlockLayout
from lowbit.calib import let
from lowbit.calib.blocks import (
    BlockData,
    act_quant,
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
LET_LR_SMALL = 5e-3


def defaults(bits: int, act_bits: int | None = None) -> dict[str, dict]:
    """Per-preset defaults. ``paper`` is the reference's scripts (lr 1e-2, W2: 40 epochs and
    aug_loss; LET: let_lr 5e-3, 1e-3 and alpha 0.75 at W4A4). ``small`` takes 10× fewer steps,
    so larger lrs: 0.1 gave the lowest block-output MSE on validation windows among
    0.01/0.05/0.1/0.2/0.4 (64 steps, W2 and W3 g128, block 5). The LET lr barely matters:
    5e-3 and 2e-2 gave the same validation MSE within 2 % (W4A4 and W6A6 per channel, blocks
    8 and 20), so ``small`` keeps 5e-3."""
    aug = int(bits == 2)
    common = {"wd": 0.0, "aug_loss": aug, "let": 0, "alpha": let.default_alpha(act_bits),
              "down_scale": 1, "shift": 0}
    return {
        "small": {"epochs": 6 if bits == 2 else 3, "lr": 0.1, "let_lr": LET_LR_SMALL, **common},
        "paper": {"epochs": 40 if bits == 2 else 20, "lr": 1e-2,
                  "let_lr": 1e-3 if act_bits == 4 else 5e-3, **common},
    }


def _trainable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh leaf copies of ``tensors`` that collect gradients."""
    return {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}


class OmniBlock:
    """A decoder block whose named linears run with LWC fake-quantized weights, after the LET
    scaling (and shift) when ``scales`` (``shifts``) is given, and with per-token
    fake-quantized inputs when ``act_bits`` is set."""

    def __init__(
        self,
        block: torch.nn.Module,
        layout: BlockLayout,
        names: list[str],
        spec: QuantSpec,
        scales: dict[str, torch.Tensor] | None = None,
        act_bits: int | None = None,
        shifts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.block, self.layout, self.names = block, layout, names
        self.spec, self.act_bits = spec, act_bits
        modules = dict(block.named_modules())
        self.weights = {n: modules[n].weight.detach() for n in names}
        self.scales = _trainable(scales or {})
        self.shifts = None
        if shifts is not None:
            let.add_shift_biases(block, layout)
            self.shifts = _trainable(shifts)
        # without LET the weights, hence their group min/max, stay fixed
        self.minmax = {} if self.scales else {
            n: group_min_max(w, spec) for n, w in self.weights.items()}
        self.up, self.low = {}, {}
        for n, w in self.weights.items():
            shape = (w.shape[0], spec.num_groups(w.shape[1]))
            self.up[n] = torch.full(shape, LWC_INIT, device=w.device, requires_grad=True)
            self.low[n] = torch.full(shape, LWC_INIT, device=w.device, requires_grad=True)

    def lwc_parameters(self) -> list[torch.Tensor]:
        return [*self.up.values(), *self.low.values()]

    def let_parameters(self) -> list[torch.Tensor]:
        return [*self.scales.values(), *(self.shifts or {}).values()]

    def _float_tensors(self) -> dict[str, torch.Tensor]:
        """The block's tensors before weight quantization: LET-scaled, or as they are."""
        tensors = {f"{n}.weight": w for n, w in self.weights.items()}
        if self.scales:
            let.truncate_(self.scales)
            tensors.update(let.transformed(self.block, self.layout, self.scales, self.shifts))
        return tensors

    def forward(self, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        tensors = self._float_tensors()
        for n in self.names:
            tensors[f"{n}.weight"] = fake_quantize_lwc(
                tensors[f"{n}.weight"], self.spec, self.up[n], self.low[n], self.minmax.get(n))
        with act_quant(self.block, self.names, self.act_bits):
            out = functional_call(self.block, tensors, (x,), kwargs)
        return out[0] if isinstance(out, tuple) else out

    def loss(self, x: torch.Tensor, targets: list[torch.Tensor], kwargs: dict) -> torch.Tensor:
        out = self.forward(x, kwargs)
        return sum(torch.nn.functional.mse_loss(out, t) for t in targets)

    @torch.no_grad()
    def export(self) -> dict[str, QuantizedWeight]:
        """Quantize the (scaled) weights with the learned clipping; fold LET into the block."""
        tensors = self._float_tensors()
        out = {}
        for n in self.names:
            w = tensors[f"{n}.weight"].detach()
            xmin, xmax = lwc_range(w, self.spec, self.up[n], self.low[n], self.minmax.get(n))
            s, z = compute_qparams(w.cpu(), self.spec, xmin.cpu(), xmax.cpu())
            out[n] = quantize_with(w.cpu(), self.spec, s, z)
        if self.scales:
            let.fold_(self.block, self.layout, self.scales, self.shifts)
        return out


def train_block(
    data: BlockData, spec: QuantSpec, settings: dict, act_bits: int | None = None
) -> dict[str, QuantizedWeight]:
    """Learn one block's LWC logits (and LET scales and shifts with ``settings["let"]``,
    ``["shift"]``); return its quantized linears, LET folded into the block."""
    block = data.block
    block.requires_grad_(False)
    names = list(data.linears)
    scales, shifts = let.block_let(data, settings) if int(settings["let"]) else (None, None)
    omni = OmniBlock(block, data.layout, names, spec, scales, act_bits, shifts)
    x = data.quant_in
    targets = [data.fp_out]
    if int(settings["aug_loss"]):
        targets.append(forward_all(block, x, data.kwargs))
    groups = [{"params": omni.lwc_parameters(), "lr": float(settings["lr"])}]
    if scales is not None:
        groups.append({"params": omni.let_parameters(), "lr": float(settings["let_lr"])})
    opt = torch.optim.AdamW(groups, weight_decay=float(settings["wd"]))
    epochs = int(settings["epochs"])
    for epoch in range(epochs):
        total = 0.0
        for j in range(len(x)):
            loss = omni.loss(x[j : j + 1], [t[j : j + 1] for t in targets], data.kwargs)
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
    return omni.export()


@register("omniquant", "OmniQuant: learnable weight clipping (+ LET with --let), block-wise MSE "
          "(data)", uses_data=True)
def omniquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    resolve_settings(ctx, "omniquant", defaults(ctx.spec.bits, ctx.act_bits))
    if int(ctx.settings["shift"]) and not int(ctx.settings["let"]):
        raise LowbitError("omniquant: the shift is part of LET; add --let")
    let.check_shift(ctx.settings, ctx.act_bits)
    ids = calibration_ids(ctx, int(ctx.settings["nsamples"]), int(ctx.settings["seqlen"]))
    return run_omniquant(model, layers, ctx, ids)


def run_omniquant(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext, ids: torch.Tensor
) -> dict[str, QuantizedWeight]:
    """OmniQuant on the token windows ``ids`` [n, T], with ``ctx.settings`` already resolved."""

    def block_fn(d: BlockData) -> dict[str, QuantizedWeight]:
        return train_block(d, ctx.spec, ctx.settings, ctx.act_bits)

    return quantize_blockwise(model, layers, ctx, "omniquant", ids, block_fn, ("fp", "quant"))
