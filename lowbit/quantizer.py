"""Group-wise integer weight quantization: the math shared by calibration and the converter.

Two conventions, both with fp16 scales and groups along the input (K) axis of an [N, K] weight:

* asymmetric (OmniQuant / BitDistiller): ``w ≈ s·(q − z)``, ``q, z ∈ [0, 2^b − 1]``,
  ``s = max(xmax − xmin, ·) / (2^b − 1)`` and ``z = round(−xmin / s)``. The range is widened to
  contain 0 (as GPTQ does) so that z is a valid code even for a one-signed group.
* symmetric, MLC-LLM's convention (``group_quantization.py``): ``s = max|w| / (2^(b−1) − 1)``
  computed in fp16, ``q = round(w / s + m)`` with ``m = 2^(b−1) − 1`` in fp16 arithmetic and
  ``w ≈ s·(q − m)``; codes use ``[0, 2m]``. A symmetric 4-bit g32 model is MLC's ``q4f16_1``.

* NF3 codebook (BitDistiller's ``ste-n2f3``, ``codebook="nf3"``): eight levels
  :data:`NF3_LEVELS` in [−1, 1] (three negative, zero, four positive), two fp16 scales per
  group and no zero point: ``s₊ = |max W_g|`` for codes ≥ 4, ``s₋ = |min W_g|`` for codes < 3;
  ``w ≈ level[q]·s₊`` (w ≥ 0) or ``level[q]·s₋`` (w < 0), ``q`` the nearest level of
  ``w / s`` (the reference's thresholds: ties round up on the positive side, towards zero on
  the negative side).

K need not be a multiple of the group size: the last group is *partial* and its scale and zero
point come from its real elements only. ``group_size = -1`` means one group per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 40, 64, 128, -1)
MIN_SCALE = 1e-5  # OmniQuant's CLIPMIN: keeps constant groups from dividing by zero
CODEBOOKS = ("nf3",)

# BitDistiller's NF3 levels (quantization/quantizer.py ``round_n2f3``), ascending: code q holds
# NF3_LEVELS[q]. The decision thresholds are the reference's constants (the midpoints).
NF3_LEVELS = (-1.0, -0.5350227355957031, -0.2469314038753510, 0.0,
              0.1833375245332718, 0.3819939494132996, 0.6229856610298157, 1.0)
NF3_ZERO = 3  # the code of level 0
NF3_POS_THRESHOLDS = (0.0916687622666359, 0.2826657369732857, 0.5024898052215576,
                      0.8114928305149078)
NF3_NEG_THRESHOLDS = (-0.1234657019376755, -0.39097706973552704, -0.7675113677978516)


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is quantized: bit width, group size (-1 = per channel), symmetry,
    and a non-uniform codebook (``"nf3"``; None: integer levels)."""

    bits: int
    group_size: int
    sym: bool = False
    codebook: str | None = None

    def __post_init__(self) -> None:
        if self.codebook is not None:
            if self.codebook not in CODEBOOKS:
                raise ValueError(f"unknown codebook {self.codebook!r} (supported: {CODEBOOKS})")
            if self.bits != 3:
                raise ValueError(f"the nf3 codebook is 3-bit (got {self.bits} bits)")
            if self.sym:
                raise ValueError("the nf3 codebook has no symmetric variant")
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bit width {self.bits} (supported: {SUPPORTED_BITS})")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(
                f"unsupported group size {self.group_size} (supported: {SUPPORTED_GROUP_SIZES})"
            )

    @property
    def qmax(self) -> int:
        """Largest code: 2^b − 1 (asymmetric) or 2·(2^(b−1) − 1) (symmetric)."""
        return 2 * self.sym_offset if self.sym else (1 << self.bits) - 1

    @property
    def sym_offset(self) -> int:
        """MLC's ``max_int_value``: the implicit zero point of symmetric codes."""
        return (1 << (self.bits - 1)) - 1

    def group_len(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size

    def num_groups(self, k: int) -> int:
        g = self.group_len(k)
        return (k + g - 1) // g

    @property
    def name(self) -> str:
        g = "pc" if self.group_size == -1 else f"g{self.group_size}"
        kind = self.codebook or ("sym" if self.sym else "asym")
        return f"w{self.bits}{g}{kind}"

    @property
    def has_zeros(self) -> bool:
        """Whether the format stores a zero point per group (asymmetric integer codes)."""
        return not self.sym and self.codebook is None

    def scales_shape(self, n: int, k: int) -> tuple[int, ...]:
        """[N, G], or [N, G, 2] (positive, negative scale) for NF3."""
        shape = (n, self.num_groups(k))
        return (*shape, 2) if self.codebook else shape


@dataclass
class QuantizedWeight:
    """Codes [N, K] uint8, fp16 scales [N, G] (NF3: [N, G, 2], positive then negative) and
    (asymmetric) uint8 zeros [N, G]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    spec: QuantSpec

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def _grouped(w: torch.Tensor, spec: QuantSpec, fill: float) -> torch.Tensor:
    """[N, K] → [N, G, g], the partial last group padded with ``fill``."""
    n, k = w.shape
    g = spec.group_len(k)
    pad = spec.num_groups(k) * g - k
    if pad:
        w = torch.nn.functional.pad(w, (0, pad), value=fill)
    return w.reshape(n, -1, g)


def _per_element(t: torch.Tensor, spec: QuantSpec, k: int) -> torch.Tensor:
    """Broadcast a per-group tensor [N, G] to [N, K]."""
    return t.repeat_interleave(spec.group_len(k), dim=1)[:, :k]


def group_min_max(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max over the real elements of each group, shapes [N, G]."""
    wf = w.float()
    xmin = _grouped(wf, spec, float("inf")).amin(dim=-1)
    xmax = _grouped(wf, spec, float("-inf")).amax(dim=-1)
    return xmin, xmax


def _asym_range(xmin: torch.Tensor, xmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric group range widened to hold 0, so the zero point is a valid code."""
    return xmin.float().clamp(max=0), xmax.float().clamp(min=0)


def compute_qparams(
    w: torch.Tensor,
    spec: QuantSpec,
    xmin: torch.Tensor | None = None,
    xmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16 scales and uint8 zeros (None when symmetric) for ``w`` [N, K].

    ``xmin``/``xmax`` [N, G] override the group range (clipping: LWC, AWQ-clip); by default
    they are the group's own min and max.
    """
    if xmin is None or xmax is None:
        gmin, gmax = group_min_max(w, spec)
        xmin = gmin if xmin is None else xmin
        xmax = gmax if xmax is None else xmax
    if spec.codebook:
        return nf3_scales(xmin, xmax), None
    if spec.sym:
        amax = torch.maximum(xmax.abs(), xmin.abs()).to(torch.float16)
        scales = amax / torch.tensor(spec.sym_offset, dtype=torch.float16)  # fp16 division, as MLC
        return scales, None
    xmin, xmax = _asym_range(xmin, xmax)
    scales = ((xmax - xmin) / spec.qmax).clamp(min=MIN_SCALE).to(torch.float16)
    zeros = (-xmin / scales.float()).round().clamp(0, spec.qmax).to(torch.uint8)
    return scales, zeros


def quantize_with(
    w: torch.Tensor, spec: QuantSpec, scales: torch.Tensor, zeros: torch.Tensor | None
) -> QuantizedWeight:
    """Round ``w`` [N, K] to codes with the given per-group parameters."""
    k = w.shape[1]
    if spec.codebook:
        return QuantizedWeight(nf3_codes(w, spec, scales), scales, None, spec)
    if spec.sym:
        # MLC computes w/s + m in the model dtype (fp16), each op rounded to fp16.
        s = _per_element(scales, spec, k)
        m = torch.tensor(spec.sym_offset, dtype=torch.float16)
        q = torch.where(s == 0, m, w.to(torch.float16) / s + m)
        codes = q.float().round().clamp(0, spec.qmax).to(torch.uint8)
    else:
        s = _per_element(scales, spec, k).float()
        z = _per_element(zeros, spec, k).float()
        codes = ((w.float() / s).round() + z).clamp(0, spec.qmax).to(torch.uint8)
    return QuantizedWeight(codes, scales, zeros, spec)


def quantize(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of ``w`` [N, K] with min/max group ranges."""
    scales, zeros = compute_qparams(w, spec)
    return quantize_with(w, spec, scales, zeros)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``s·(q − z)`` in fp32 (exact: |q − z| < 2^8 and s has an 11-bit mantissa), cast to ``dtype``."""
    spec, k = qw.spec, qw.codes.shape[1]
    if spec.codebook:
        return _nf3_values(qw.codes, _nf3_scale_per_element(qw.scales, qw.codes, spec)).to(dtype)
    s = _per_element(qw.scales, spec, k).float()
    z = (
        torch.full_like(s, spec.sym_offset)
        if qw.zeros is None
        else _per_element(qw.zeros, spec, k).float()
    )
    return ((qw.codes.float() - z) * s).to(dtype)


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """RTN quantize-dequantize of ``w``, in ``w``'s dtype."""
    return dequantize(quantize(w, spec), w.dtype)


def lwc_range(
    w: torch.Tensor,
    spec: QuantSpec,
    up: torch.Tensor,
    low: torch.Tensor,
    minmax: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OmniQuant's learnable weight clipping: ``σ(low)·min(W_g)``, ``σ(up)·max(W_g)``, [N, G].

    ``minmax``: the precomputed :func:`group_min_max` of ``w`` (constant while training)."""
    xmin, xmax = group_min_max(w, spec) if minmax is None else minmax
    return torch.sigmoid(low) * xmin, torch.sigmoid(up) * xmax


class _DequantSTE(torch.autograd.Function):
    """``(clamp(u, 0, qmax) − z)·s`` per group with straight-through gradients.

    ``u`` [N, G, g] are the unclamped integer codes (``round(w/s) + z``). With rounding
    treated as identity, d/ds is ``(q − z) − w/s`` where ``u`` is in range and ``q − z``
    where clamped, and d/dw is 1 in range and 0 where clamped (it matters when ``w`` is itself
    trained, as under LET); computing them here saves autograd's many full-size
    intermediates."""

    @staticmethod
    def forward(ctx, wg, u, s, z, qmax):  # noqa: ANN001, ANN205
        q = u.clamp(0, qmax)
        ratio = wg / torch.where(s == 0, 1.0, s)  # an all-zero symmetric group has s = 0
        in_range = (u >= 0) & (u <= qmax)
        ctx.save_for_backward(torch.where(in_range, q - z - ratio, q - z),
                              in_range if ctx.needs_input_grad[0] else None)
        return (q - z) * s

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        ds, in_range = ctx.saved_tensors
        dw = grad * in_range if in_range is not None else None
        return dw, None, (grad * ds).sum(-1, keepdim=True), None, None


def fake_quantize_range(
    w: torch.Tensor, spec: QuantSpec, xmin: torch.Tensor, xmax: torch.Tensor
) -> torch.Tensor:
    """Differentiable quantize-dequantize of ``w`` [N, K] (fp32) with group ranges [N, G].

    The forward pass equals ``dequantize(quantize_with(w, spec, *compute_qparams(w, spec, xmin,
    xmax)))`` — fp16 scales, clamped integer zeros, MLC's fp16 arithmetic when symmetric — so
    training sees the weights that are exported. Gradients reach ``xmin``/``xmax`` through the
    scale and ``w`` directly (rounding is straight-through; the rounded zero point carries none,
    as in OmniQuant).
    """
    n, k = w.shape
    wg = _grouped(w.float(), spec, 0.0)  # [N, G, g]
    if spec.sym:
        m = spec.sym_offset
        amax = torch.maximum(xmax.abs(), xmin.abs())
        s = amax / m
        with torch.no_grad():  # the exporter's fp16 scale: fp16(amax) / m in fp16
            s16 = amax.to(torch.float16) / torch.tensor(m, dtype=torch.float16)
            s16g, m16 = s16[..., None], torch.tensor(m, dtype=torch.float16)
            # MLC's codes, computed in fp16 as the exporter does
            u = torch.where(s16g == 0, m16, wg.to(torch.float16) / s16g + m16).float().round()
        z = torch.full_like(s16, m, dtype=torch.float32)[..., None]
        s = s + (s16.float() - s).detach()
        out = _DequantSTE.apply(wg, u, s[..., None], z, spec.qmax)
    else:
        xmin, xmax = _asym_range(xmin, xmax)
        s = ((xmax - xmin) / spec.qmax).clamp(min=MIN_SCALE)
        s = s + (s.detach().to(torch.float16).float() - s).detach()
        with torch.no_grad():
            z = (-xmin / s).round().clamp(0, spec.qmax)[..., None]
            u = (wg / s[..., None]).round() + z
        out = _DequantSTE.apply(wg, u, s[..., None], z, spec.qmax)
    return out.reshape(n, -1)[:, :k]


def fake_quantize_lwc(
    w: torch.Tensor,
    spec: QuantSpec,
    up: torch.Tensor,
    low: torch.Tensor,
    minmax: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Quantize-dequantize with learnable clipping factors ``up``/``low`` (logits, [N, G])."""
    xmin, xmax = lwc_range(w, spec, up, low, minmax)
    return fake_quantize_range(w, spec, xmin, xmax)


def nf3_scales(xmin: torch.Tensor, xmax: torch.Tensor) -> torch.Tensor:
    """fp16 ``(|xmax|, |xmin|)`` per group, [N, G, 2]."""
    return torch.stack([xmax.float().abs(), xmin.float().abs()], dim=-1).to(torch.float16)


def _nf3_side_scales(scales: torch.Tensor, spec: QuantSpec, k: int, w: torch.Tensor) -> torch.Tensor:
    """Each element's scale [N, K] by its sign: ``s₊`` where ``w ≥ 0``, ``s₋`` elsewhere."""
    pos = _per_element(scales[..., 0], spec, k).float()
    neg = _per_element(scales[..., 1], spec, k).float()
    return torch.where(w >= 0, pos, neg)


def _nf3_round(r: torch.Tensor) -> torch.Tensor:
    """Codes of ``r = w / s`` [..]: the reference's thresholds, positive side for ``r ≥ 0``."""
    up = sum((r >= t).to(torch.uint8) for t in NF3_POS_THRESHOLDS)
    down = sum((r < t).to(torch.uint8) for t in NF3_NEG_THRESHOLDS)
    return torch.where(r >= 0, NF3_ZERO + up, NF3_ZERO - down).to(torch.uint8)


def nf3_codes(w: torch.Tensor, spec: QuantSpec, scales: torch.Tensor) -> torch.Tensor:
    """NF3 codes [N, K] of ``w`` with the fp16 scales [N, G, 2] (a zero scale gives code 3)."""
    wf = w.float()
    s = _nf3_side_scales(scales, spec, w.shape[1], wf)
    return _nf3_round(wf / torch.where(s == 0, 1.0, s))


def _nf3_scale_per_element(scales: torch.Tensor, codes: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    pos = _per_element(scales[..., 0], spec, codes.shape[1]).float()
    neg = _per_element(scales[..., 1], spec, codes.shape[1]).float()
    return torch.where(codes > NF3_ZERO, pos, neg)


def _nf3_values(codes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``NF3_LEVELS[codes] · s`` in fp32 (table lookup)."""
    table = torch.tensor(NF3_LEVELS, dtype=torch.float32, device=codes.device)
    return table[codes.long()] * s


def fake_quantize_nf3(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Differentiable NF3 quantize-dequantize of ``w`` [N, K] with each group's own
    ``|max|``/``|min|`` scales, as the reference's ``SteN2F3Quantizer``: straight-through
    rounding, gradients reach the scales (hence the group's extreme elements). The forward
    value is the exported one (fp16 scales)."""
    wf = w.float()
    xmin, xmax = group_min_max(wf, spec)
    exact = torch.stack([xmax.abs(), xmin.abs()], dim=-1)
    scales = exact + (exact.detach().to(torch.float16).float() - exact).detach()
    s = _nf3_side_scales(scales, spec, w.shape[1], wf.detach())
    r = wf / torch.where(s == 0, 1.0, s)
    with torch.no_grad():
        level = _nf3_values(_nf3_round(r), torch.ones_like(r))
    return (r + (level - r).detach()) * s


def fake_quantize_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Differentiable RTN quantize-dequantize with the group ranges re-derived from ``w``
    (BitDistiller's STE quantizers); the forward value is exactly the exported weight."""
    if spec.codebook:
        return fake_quantize_nf3(w, spec)
    return fake_quantize_range(w, spec, *group_min_max(w, spec))


ACT_BITS = (4, 6, 8)  # dynamic activation quantization widths; 16 means none


def fake_quantize_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token dynamic asymmetric fake quantization of activations x [..., K] (OmniQuant's
    ``per_token`` act quantizer): each token's own min/max, ``s = (max − min) / (2^b − 1)``
    clamped to [MIN_SCALE, 1e4], ``z = round(−min / s)``, ``x̂ = (clamp(round(x / s) + z, 0, 2^b − 1)
    − z) · s``. Gradients pass straight through the rounding."""
    xmin = x.amin(-1, keepdim=True)
    xmax = x.amax(-1, keepdim=True)
    scale = ((xmax - xmin) / (2**bits - 1)).clamp(min=MIN_SCALE, max=1e4)
    zero = (-xmin / scale).clamp(min=-1e4, max=1e4).round()
    scaled = x / scale
    rounded = scaled + (scaled.round() - scaled).detach()
    return ((rounded + zero).clamp(0, 2**bits - 1) - zero) * scale


INT8_BLOCK = 32  # k per activation scale of the int8 decode kernels


def fake_quantize_blocks_int8(x: torch.Tensor, terms: int = 1) -> torch.Tensor:
    """Symmetric int8 fake quantization of x [..., K] per block of :data:`INT8_BLOCK` along K
    (``lowbit compile --decode-activations int8``, llama.cpp's Q8 activations): ``d = max|x| /
    127``, ``t = x · (127 / max|x|)``, ``c = round(t)`` (half to even), ``x̂ = c · d``; a zero
    block stays 0. ``terms=2`` (``int8x2``) adds a second int8 code for what the first leaves,
    ``c₂ = round((t − c) · 254)`` (|t − c| ≤ ½, so |c₂| ≤ 127), and ``x̂ = (c + c₂ / 254) · d``.
    In fp32, the operations in the kernel's order, so the codes are the kernel's."""
    blocks = x.float().unflatten(-1, (-1, INT8_BLOCK))
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / torch.where(amax > 0, amax, 1), 0)
    scaled = blocks * inv
    codes = torch.round(scaled)
    if terms == 2:
        codes = codes + torch.round((scaled - codes) * 254) / 254
    elif terms != 1:
        raise ValueError(f"terms {terms}: expected 1 or 2")
    return (codes * (amax / 127)).flatten(-2).to(x.dtype)


def token_quant_pre_hook(bits: int):  # noqa: ANN201
    """A forward pre-hook for an ``nn.Linear`` that fake-quantizes its input per token."""

    def hook(_mod: torch.nn.Module, args: tuple) -> tuple:
        return (fake_quantize_tokens(args[0], bits), *args[1:])

    return hook
