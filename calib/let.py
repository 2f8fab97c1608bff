"""OmniQuant's learnable equivalent transformation (LET), channel-wise scaling and shift, on
Llama-style decoder blocks; where the norms, the pairs and the linears sit comes from the
architecture record's :class:`~lowbit.architectures.BlockLayout`.

Up to four scalings per block, each exact in full precision and folded away afterwards (no
extra op at inference, no new tensor in the fused format):

* each norm group, ``input_layernorm → q/k/v`` (``qkv``) and ``post_attention_layernorm →
  gate/up`` (``fc1``) in Llama: the norm's weight becomes ``γ / s`` and each linear fed by it
  ``W · diag(s)``, ``s`` [hidden]. (A Gemma norm scales by ``1 + γ``: ``γ ← (1 + γ) / s − 1``.)
* ``v → o``: ``W_v ← diag(1/s) · W_v`` (and ``b_v / s``), ``W_o ← W_o · diag(s')``, ``s``
  [kv_heads · head_dim]. Attention mixes each v channel only across tokens, so the scale
  commutes with it; under grouped-query attention o's input channel (query head h, dim j)
  reads v channel (h // group, j), so ``s'`` repeats ``s`` across the query group.
* ``up → down`` (``down_scale``, beyond the reference): ``W_up ← diag(1/s) · W_up``,
  ``W_down ← W_down · diag(s)``, ``s`` [intermediate]. SwiGLU's ``silu(gate) ⊙ up`` is linear
  in each channel of ``up``, so this is exact too, and it reaches the one linear input the
  reference's pairs leave alone: on the bundled model, 6-bit activations on ``down_proj``'s input
  alone cost 7.6 % perplexity, the most of any linear (q/k/v 5.8 %, gate/up 5.4 %, o 0.4 %).

A pair's producer may be a fused linear (q/k/v in one, gate/up in one): the consumer reads its
last rows (v, up), and only those rows take the scale and the shift.

Scales start from SmoothQuant's rule with the reference's ``alpha``:
``s_j = max|X_j|^α / max_i |W_ij|^(1−α)`` (≥ 1e-5), with ``max|X_j|`` over the FP model's
calibration tokens and the weight maximum over every linear the scale feeds.

With ``shift`` (weight-activation runs only) the first three pairs also take the reference's
channel-wise **shift** ``δ``, initialised to the midpoint ``(min X_j + max X_j) / 2`` of the
channel over the calibration tokens (the reference keeps a 0.99/0.01 running average of
per-window midpoints; lowbit takes the midpoint over all windows). The linear input becomes
``(X − δ) / s`` and the linear gains ``W · δ`` as a bias, exact in full precision:

* norm pairs: the norm gains the bias ``(b − δ) / s`` (``b`` = 0: RMSNorm has none) and each
  linear fed by it the bias ``b_L + W_L · δ`` (original ``W_L``);
* ``v → o``: ``b_v ← (b_v − δ) / s``, ``b_o ← b_o + W_o · δ'`` (``δ'`` repeats ``δ`` across the
  query group). Each attention row's weights sum to 1, so the shift passes through attention
  unchanged.

``up → down`` takes no shift: ``silu(gate) ⊙ (up − δ)`` moves each token's down input by
``silu(gate) ⊙ δ``, which no constant bias undoes. The reference turns the shift off for LLaMA
(``use_shift = False``) and lowbit keeps it off by default; on a bias-free Llama it adds the
biases of :mod:`lowbit.biases` (where they live in the fused checkpoint: ``docs/FORMAT.md``).
A shift leaves weight-only quantization unchanged (the weights are the same), so it is
refused without activation quantization.

Left out, as in the reference:

* the **q/k scale** (``qkt_smooth_scale``): it only rescales Q and K, which lowbit does not
  quantize (activation quantization covers linear inputs), and scaling a row of ``W_q``/``W_k``
  scales its K-axis groups' ranges with it, so it leaves the codes unchanged (up to the fp16
  rounding of the group scales). Done exactly it would need one scale per K/V channel shared
  by its query group and tied across each RoPE rotary pair, since it sits before RoPE.
"""

from __future__ import annotations

import torch

from lowbit.architectures import BlockLayout
from lowbit.biases import add_bias
from lowbit.calib.blocks import BlockData, linear_input_range
from lowbit.errors import LowbitError

SCALE_FLOOR = 1e-2  # the reference's truncate_number: |s| below it is pushed out to ±1e-2


def default_alpha(act_bits: int | None) -> float:
    """The reference scripts' migration strength: 0.75 for W4A4, else its default 0.5."""
    return 0.75 if act_bits == 4 else 0.5


def check_block(block: torch.nn.Module, layout: BlockLayout) -> None:
    names = {n for n, _ in block.named_modules()}
    needed = {n for g in layout.norm_groups for n in (g.norm, *g.linears)}
    needed |= {layout.attention, *layout.v_o, *layout.up_down}
    if not needed <= names:
        raise LowbitError(
            f"LET needs the decoder block its architecture record describes; "
            f"{type(block).__name__} lacks {', '.join(sorted(needed - names))}"
        )


def o_channel_to_v(block: torch.nn.Module, layout: BlockLayout) -> torch.Tensor:
    """For each input channel of o, the v output channel it reads [heads · head_dim]."""
    modules = dict(block.named_modules())
    attn = modules[layout.attention]
    hd, group = attn.head_dim, attn.num_key_value_groups
    ch = torch.arange(modules[layout.v_o[1]].in_features)
    return (ch // hd // group) * hd + ch % hd


def _per_v(values: torch.Tensor, block: torch.nn.Module, layout: BlockLayout,
           reduce: str = "amax") -> torch.Tensor:
    """Reduce a per-o-input-channel tensor to per v channel over the query group."""
    idx = o_channel_to_v(block, layout).to(values.device)
    out = torch.zeros(int(idx.max()) + 1, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, idx, values, reduce, include_self=False)


def _last_rows(t: torch.Tensor, rows: int, fill: float) -> torch.Tensor:
    """``t`` [n] placed on the last n of a producer's ``rows`` output rows, ``fill`` before it
    (a fused producer's rows that its consumer does not read)."""
    return torch.cat([t.new_full((rows - t.numel(),), fill), t])


def _smooth(act: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    act, wmax = act.float().clamp(min=1e-5), wmax.float().clamp(min=1e-5)
    return (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def init_scales(
    block: torch.nn.Module, layout: BlockLayout, absmax: dict[str, torch.Tensor], alpha: float,
    down: bool = True,
) -> dict[str, torch.Tensor]:
    """SmoothQuant-style initial scales from each linear's per-channel input ``max |X|``;
    ``down``: also the up → down scale."""
    check_block(block, layout)
    modules = dict(block.named_modules())
    o, down_proj = layout.v_o[1], layout.up_down[1]
    scales = {}
    for g in layout.norm_groups:
        wmax = torch.cat([modules[f].weight for f in g.linears]).abs().amax(0)
        scales[g.key] = _smooth(absmax[g.linears[0]].cpu(), wmax.cpu(), alpha)
    act = _per_v(absmax[o].float().cpu(), block, layout)
    wmax = _per_v(modules[o].weight.abs().amax(0).float().cpu(), block, layout)
    scales["out"] = _smooth(act, wmax, alpha)
    if down:
        wmax = modules[down_proj].weight.abs().amax(0)
        scales["down"] = _smooth(absmax[down_proj].cpu(), wmax.cpu(), alpha)
    dev = modules[o].weight.device
    return {k: v.to(dev) for k, v in scales.items()}


@torch.no_grad()
def init_shifts(
    block: torch.nn.Module, layout: BlockLayout,
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Initial shifts: the midpoint of each channel's input range (per v channel for ``out``:
    the range over its query group)."""
    check_block(block, layout)
    shifts = {}
    for g in layout.norm_groups:
        lo, hi = ranges[g.linears[0]]
        shifts[g.key] = (lo + hi) / 2
    lo, hi = ranges[layout.v_o[1]]
    shifts["out"] = (_per_v(lo, block, layout, "amin") + _per_v(hi, block, layout, "amax")) / 2
    dev = block.get_submodule(layout.v_o[1]).weight.device
    return {k: v.float().to(dev) for k, v in shifts.items()}


def block_let(
    data: BlockData, settings: dict
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The initial scales (and, with setting ``shift``, shifts) of ``data``'s block from its
    linears' inputs on the FP stream, with the method's ``alpha`` and ``down_scale``."""
    ranges = linear_input_range(data.block, data.fp_in, data.kwargs, list(data.linears))
    absmax = {n: torch.maximum(-lo, hi) for n, (lo, hi) in ranges.items()}
    scales = init_scales(data.block, data.layout, absmax, float(settings["alpha"]),
                         bool(int(settings["down_scale"])))
    shifts = init_shifts(data.block, data.layout, ranges) if int(settings["shift"]) else None
    return scales, shifts


def check_shift(settings: dict, act_bits: int | None) -> None:
    """Refuse a shift where it cannot change the result: without activation quantization."""
    if int(settings["shift"]) and act_bits is None:
        raise LowbitError("a LET shift only moves quantized activations (the weights stay the "
                          "same); use it with --act-bits")


def add_shift_biases(block: torch.nn.Module, layout: BlockLayout) -> None:
    """Give the block the biases a shift folds into: the norms and the linears of each norm
    group, and o."""
    modules = dict(block.named_modules())
    for g in layout.norm_groups:
        for name in (g.norm, *g.linears):
            add_bias(modules[name])
    add_bias(modules[layout.v_o[1]])


def truncate_(scales: dict[str, torch.Tensor]) -> None:
    """Keep every scale at least SCALE_FLOOR away from 0, keeping its sign (in place)."""
    with torch.no_grad():
        for s in scales.values():
            small = s.abs() < SCALE_FLOOR
            s.copy_(torch.where(small, torch.where(s < 0, -SCALE_FLOOR, SCALE_FLOOR), s))


def transformed(
    block: torch.nn.Module,
    layout: BlockLayout,
    scales: dict[str, torch.Tensor],
    shifts: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The block's norm weights, linear weights and biases after the transformation, by
    parameter name; differentiable in ``scales`` and ``shifts``. With ``shifts`` the block
    must have the biases of :func:`add_shift_biases`."""
    p = dict(block.named_parameters())
    (v_proj, o_proj), (up_proj, down_proj) = layout.v_o, layout.up_down
    out = {}
    for g in layout.norm_groups:
        s, off = scales[g.key], layout.norm_offset
        out[f"{g.norm}.weight"] = (p[f"{g.norm}.weight"] + off) / s - off
        if shifts is not None:
            out[f"{g.norm}.bias"] = (p[f"{g.norm}.bias"] - shifts[g.key]) / s
        for f in g.linears:
            out[f"{f}.weight"] = p[f"{f}.weight"] * s
            if shifts is not None:
                out[f"{f}.bias"] = p[f"{f}.bias"] + p[f"{f}.weight"] @ shifts[g.key]
    s = scales["out"]
    o_map = o_channel_to_v(block, layout).to(s.device)
    v_rows = p[f"{v_proj}.weight"].shape[0]
    out[f"{v_proj}.weight"] = out[f"{v_proj}.weight"] / _last_rows(s, v_rows, 1.0)[:, None]
    v_bias = out.get(f"{v_proj}.bias", p.get(f"{v_proj}.bias"))
    if shifts is not None:
        v_bias = v_bias - _last_rows(shifts["out"], v_rows, 0.0)
        out[f"{o_proj}.bias"] = p[f"{o_proj}.bias"] + p[f"{o_proj}.weight"] @ shifts["out"][o_map]
    if v_bias is not None:
        out[f"{v_proj}.bias"] = v_bias / _last_rows(s, v_rows, 1.0)
    out[f"{o_proj}.weight"] = p[f"{o_proj}.weight"] * s[o_map]
    if "down" in scales:
        s = scales["down"]
        s_up = _last_rows(s, p[f"{up_proj}.weight"].shape[0], 1.0)
        out[f"{up_proj}.weight"] = out[f"{up_proj}.weight"] / s_up[:, None]
        up_bias = out.get(f"{up_proj}.bias", p.get(f"{up_proj}.bias"))
        if up_bias is not None:
            out[f"{up_proj}.bias"] = up_bias / s_up
        out[f"{down_proj}.weight"] = p[f"{down_proj}.weight"] * s
    return out


@torch.no_grad()
def fold_(
    block: torch.nn.Module,
    layout: BlockLayout,
    scales: dict[str, torch.Tensor],
    shifts: dict[str, torch.Tensor] | None = None,
) -> None:
    """Apply the transformation to the block's parameters in place (adding the shift's
    biases first)."""
    if shifts is not None:
        add_shift_biases(block, layout)
    new = transformed(block, layout, scales, shifts)
    params = dict(block.named_parameters())
    for name, t in new.items():
        params[name].copy_(t)
