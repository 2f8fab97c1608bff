"""OmniQuant's learnable equivalent transformation (LET), channel-wise scaling and shift, on
Llama-family decoder blocks (Llama, Qwen2).

Up to four scalings per block, each exact in full precision and folded away afterwards (no
extra op at inference, no new tensor in the fused format):

* ``input_layernorm → q/k/v`` and ``post_attention_layernorm → gate/up``: the norm's weight
  becomes ``γ / s`` and each linear fed by it ``W · diag(s)``, ``s`` [hidden].
* ``v → o``: ``W_v ← diag(1/s) · W_v`` (and ``b_v / s``), ``W_o ← W_o · diag(s')``, ``s``
  [kv_heads · head_dim]. Attention mixes each v channel only across tokens, so the scale
  commutes with it; under grouped-query attention o's input channel (query head h, dim j)
  reads v channel (h // group, j), so ``s'`` repeats ``s`` across the query group.
* ``up → down`` (``down_scale``, beyond the reference): ``W_up ← diag(1/s) · W_up``,
  ``W_down ← W_down · diag(s)``, ``s`` [intermediate]. SwiGLU's ``silu(gate) ⊙ up`` is linear
  in each channel of ``up``, so this is exact too, and it reaches the one linear input the
  reference's pairs leave alone: on the bundled model, 6-bit activations on ``down_proj``'s input
  alone cost 7.6 % perplexity, the most of any linear (q/k/v 5.8 %, gate/up 5.4 %, o 0.4 %).

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

from lowbit.biases import add_bias
from lowbit.calib.blocks import BlockData, linear_input_range
from lowbit.errors import LowbitError

NORM_GROUPS = {
    "qkv": ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    "fc1": ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
}
V_PROJ, O_PROJ = "self_attn.v_proj", "self_attn.o_proj"
UP_PROJ, DOWN_PROJ = "mlp.up_proj", "mlp.down_proj"
SCALE_FLOOR = 1e-2  # the reference's truncate_number: |s| below it is pushed out to ±1e-2


def default_alpha(act_bits: int | None) -> float:
    """The reference scripts' migration strength: 0.75 for W4A4, else its default 0.5."""
    return 0.75 if act_bits == 4 else 0.5


def check_block(block: torch.nn.Module) -> None:
    names = {n for n, _ in block.named_modules()}
    needed = {n for _, (norm, fcs) in NORM_GROUPS.items() for n in (norm, *fcs)} | {O_PROJ}
    if not needed <= names:
        raise LowbitError(
            f"LET needs a Llama-family decoder block; {type(block).__name__} lacks "
            f"{', '.join(sorted(needed - names))}"
        )


def o_channel_to_v(block: torch.nn.Module) -> torch.Tensor:
    """For each input channel of o_proj, the v_proj output channel it reads [heads · head_dim]."""
    attn = block.self_attn
    hd, group = attn.head_dim, attn.num_key_value_groups
    ch = torch.arange(attn.o_proj.in_features)
    return (ch // hd // group) * hd + ch % hd


def _per_v(values: torch.Tensor, block: torch.nn.Module, reduce: str = "amax") -> torch.Tensor:
    """Reduce a per-o-input-channel tensor to per v channel over the query group."""
    out = torch.zeros(block.self_attn.v_proj.out_features, dtype=values.dtype,
                      device=values.device)
    idx = o_channel_to_v(block).to(values.device)
    return out.scatter_reduce(0, idx, values, reduce, include_self=False)


def _smooth(act: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    act, wmax = act.float().clamp(min=1e-5), wmax.float().clamp(min=1e-5)
    return (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def init_scales(
    block: torch.nn.Module, absmax: dict[str, torch.Tensor], alpha: float, down: bool = True
) -> dict[str, torch.Tensor]:
    """SmoothQuant-style initial scales from each linear's per-channel input ``max |X|``;
    ``down``: also the up → down scale."""
    check_block(block)
    modules = dict(block.named_modules())
    scales = {}
    for key, (_norm, fcs) in NORM_GROUPS.items():
        wmax = torch.cat([modules[f].weight for f in fcs]).abs().amax(0)
        scales[key] = _smooth(absmax[fcs[0]].cpu(), wmax.cpu(), alpha)
    act = _per_v(absmax[O_PROJ].float().cpu(), block)
    wmax = _per_v(modules[O_PROJ].weight.abs().amax(0).float().cpu(), block)
    scales["out"] = _smooth(act, wmax, alpha)
    if down:
        wmax = modules[DOWN_PROJ].weight.abs().amax(0)
        scales["down"] = _smooth(absmax[DOWN_PROJ].cpu(), wmax.cpu(), alpha)
    dev = modules[O_PROJ].weight.device
    return {k: v.to(dev) for k, v in scales.items()}


@torch.no_grad()
def init_shifts(
    block: torch.nn.Module, ranges: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Initial shifts: the midpoint of each channel's input range (per v channel for ``out``:
    the range over its query group)."""
    check_block(block)
    shifts = {}
    for key, (_norm, fcs) in NORM_GROUPS.items():
        lo, hi = ranges[fcs[0]]
        shifts[key] = (lo + hi) / 2
    lo, hi = ranges[O_PROJ]
    shifts["out"] = (_per_v(lo, block, "amin") + _per_v(hi, block, "amax")) / 2
    dev = block.self_attn.o_proj.weight.device
    return {k: v.float().to(dev) for k, v in shifts.items()}


def block_let(
    data: BlockData, settings: dict
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The initial scales (and, with setting ``shift``, shifts) of ``data``'s block from its
    linears' inputs on the FP stream, with the method's ``alpha`` and ``down_scale``."""
    ranges = linear_input_range(data.block, data.fp_in, data.kwargs, list(data.linears))
    absmax = {n: torch.maximum(-lo, hi) for n, (lo, hi) in ranges.items()}
    scales = init_scales(data.block, absmax, float(settings["alpha"]),
                         bool(int(settings["down_scale"])))
    shifts = init_shifts(data.block, ranges) if int(settings["shift"]) else None
    return scales, shifts


def check_shift(settings: dict, act_bits: int | None) -> None:
    """Refuse a shift where it cannot change the result: without activation quantization."""
    if int(settings["shift"]) and act_bits is None:
        raise LowbitError("a LET shift only moves quantized activations (the weights stay the "
                          "same); use it with --act-bits")


def add_shift_biases(block: torch.nn.Module) -> None:
    """Give the block the biases a shift folds into: both norms, q/k/v, o and gate/up."""
    modules = dict(block.named_modules())
    for norm, fcs in NORM_GROUPS.values():
        for name in (norm, *fcs):
            add_bias(modules[name])
    add_bias(modules[O_PROJ])


def truncate_(scales: dict[str, torch.Tensor]) -> None:
    """Keep every scale at least SCALE_FLOOR away from 0, keeping its sign (in place)."""
    with torch.no_grad():
        for s in scales.values():
            small = s.abs() < SCALE_FLOOR
            s.copy_(torch.where(small, torch.where(s < 0, -SCALE_FLOOR, SCALE_FLOOR), s))


def transformed(
    block: torch.nn.Module,
    scales: dict[str, torch.Tensor],
    shifts: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The block's norm weights, linear weights and biases after the transformation, by
    parameter name; differentiable in ``scales`` and ``shifts``. With ``shifts`` the block
    must have the biases of :func:`add_shift_biases`."""
    p = dict(block.named_parameters())
    out = {}
    for key, (norm, fcs) in NORM_GROUPS.items():
        s = scales[key]
        out[f"{norm}.weight"] = p[f"{norm}.weight"] / s
        if shifts is not None:
            out[f"{norm}.bias"] = (p[f"{norm}.bias"] - shifts[key]) / s
        for f in fcs:
            out[f"{f}.weight"] = p[f"{f}.weight"] * s
            if shifts is not None:
                out[f"{f}.bias"] = p[f"{f}.bias"] + p[f"{f}.weight"] @ shifts[key]
    s = scales["out"]
    o_map = o_channel_to_v(block).to(s.device)
    out[f"{V_PROJ}.weight"] = out[f"{V_PROJ}.weight"] / s[:, None]
    v_bias = out.get(f"{V_PROJ}.bias", p.get(f"{V_PROJ}.bias"))
    if shifts is not None:
        v_bias = v_bias - shifts["out"]
        out[f"{O_PROJ}.bias"] = p[f"{O_PROJ}.bias"] + p[f"{O_PROJ}.weight"] @ shifts["out"][o_map]
    if v_bias is not None:
        out[f"{V_PROJ}.bias"] = v_bias / s
    out[f"{O_PROJ}.weight"] = p[f"{O_PROJ}.weight"] * s[o_map]
    if "down" in scales:
        s = scales["down"]
        out[f"{UP_PROJ}.weight"] = out[f"{UP_PROJ}.weight"] / s[:, None]
        up_bias = out.get(f"{UP_PROJ}.bias", p.get(f"{UP_PROJ}.bias"))
        if up_bias is not None:
            out[f"{UP_PROJ}.bias"] = up_bias / s
        out[f"{DOWN_PROJ}.weight"] = p[f"{DOWN_PROJ}.weight"] * s
    return out


@torch.no_grad()
def fold_(
    block: torch.nn.Module,
    scales: dict[str, torch.Tensor],
    shifts: dict[str, torch.Tensor] | None = None,
) -> None:
    """Apply the transformation to the block's parameters in place (adding the shift's
    biases first)."""
    if shifts is not None:
        add_shift_biases(block)
    new = transformed(block, scales, shifts)
    params = dict(block.named_parameters())
    for name, t in new.items():
        params[name].copy_(t)
