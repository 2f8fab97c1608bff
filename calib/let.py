"""OmniQuant's learnable equivalent transformation (LET), channel-wise scaling, on Llama-family
decoder blocks (Llama, Qwen2).

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

Left out, as in or beyond the reference:

* the channel-wise **shift**: the reference turns it off for LLaMA (``use_shift = False``).
  RMSNorm has no bias, so a shift would add one to each norm and to every linear behind it —
  extra ops at inference in a model family that has none.
* the **q/k scale** (``qkt_smooth_scale``): it only rescales Q and K, which lowbit does not
  quantize (activation quantization covers linear inputs), and scaling a row of ``W_q``/``W_k``
  scales its K-axis groups' ranges with it, so it leaves the codes unchanged (up to the fp16
  rounding of the group scales). Done exactly it would need one scale per K/V channel shared
  by its query group and tied across each RoPE rotary pair, since it sits before RoPE.
"""

from __future__ import annotations

import torch

from lowbit.calib.blocks import BlockData, linear_input_absmax
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


def _max_per_v(values: torch.Tensor, block: torch.nn.Module) -> torch.Tensor:
    """Reduce a per-o-input-channel tensor to per v channel by max over the query group."""
    out = torch.zeros(block.self_attn.v_proj.out_features, dtype=values.dtype)
    return out.scatter_reduce(0, o_channel_to_v(block), values, "amax", include_self=False)


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
    act = _max_per_v(absmax[O_PROJ].float().cpu(), block)
    wmax = _max_per_v(modules[O_PROJ].weight.abs().amax(0).float().cpu(), block)
    scales["out"] = _smooth(act, wmax, alpha)
    if down:
        wmax = modules[DOWN_PROJ].weight.abs().amax(0)
        scales["down"] = _smooth(absmax[DOWN_PROJ].cpu(), wmax.cpu(), alpha)
    dev = modules[O_PROJ].weight.device
    return {k: v.to(dev) for k, v in scales.items()}


def block_scales(data: BlockData, settings: dict) -> dict[str, torch.Tensor]:
    """The initial scales of ``data``'s block: its linears' input ``max |X|`` on the FP stream,
    with the method's ``alpha`` and ``down_scale`` settings."""
    absmax = linear_input_absmax(data.block, data.fp_in, data.kwargs, list(data.linears))
    return init_scales(data.block, absmax, float(settings["alpha"]),
                       bool(int(settings["down_scale"])))


def truncate_(scales: dict[str, torch.Tensor]) -> None:
    """Keep every scale at least SCALE_FLOOR away from 0, keeping its sign (in place)."""
    with torch.no_grad():
        for s in scales.values():
            small = s.abs() < SCALE_FLOOR
            s.copy_(torch.where(small, torch.where(s < 0, -SCALE_FLOOR, SCALE_FLOOR), s))


def transformed(block: torch.nn.Module, scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The block's norm weights, linear weights and v bias after the scaling, by parameter
    name; differentiable in ``scales``."""
    p = dict(block.named_parameters())
    out = {}
    for key, (norm, fcs) in NORM_GROUPS.items():
        s = scales[key]
        out[f"{norm}.weight"] = p[f"{norm}.weight"] / s
        for f in fcs:
            out[f"{f}.weight"] = p[f"{f}.weight"] * s
    s = scales["out"]
    out[f"{V_PROJ}.weight"] = out[f"{V_PROJ}.weight"] / s[:, None]
    if f"{V_PROJ}.bias" in p:
        out[f"{V_PROJ}.bias"] = p[f"{V_PROJ}.bias"] / s
    out[f"{O_PROJ}.weight"] = p[f"{O_PROJ}.weight"] * s[o_channel_to_v(block).to(s.device)]
    if "down" in scales:
        s = scales["down"]
        out[f"{UP_PROJ}.weight"] = out[f"{UP_PROJ}.weight"] / s[:, None]
        out[f"{DOWN_PROJ}.weight"] = p[f"{DOWN_PROJ}.weight"] * s
    return out


@torch.no_grad()
def fold_(block: torch.nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Apply the scaling to the block's parameters in place."""
    new = transformed(block, scales)
    params = dict(block.named_parameters())
    for name, t in new.items():
        params[name].copy_(t)
