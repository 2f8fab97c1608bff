"""Group-wise integer weight quantization: the math shared by calibration and the converter.

Two conventions, both with fp16 scales and groups along the input (K) axis of an [N, K] weight:

* asymmetric (OmniQuant / BitDistiller): ``w ≈ s·(q − z)``, ``q, z ∈ [0, 2^b − 1]``,
  ``s = max(xmax − xmin, ·) / (2^b − 1)`` and ``z = round(−xmin / s)``. The range is widened to
  contain 0 (as GPTQ does) so that z is a valid code even for a one-signed group.
* symmetric, MLC-LLM's convention (``group_quantization.py``): ``s = max|w| / (2^(b−1) − 1)``
  computed in fp16, ``q = round(w / s + m)`` with ``m = 2^(b−1) − 1`` in fp16 arithmetic and
  ``w ≈ s·(q − m)``; codes use ``[0, 2m]``. A symmetric 4-bit g32 model is MLC's ``q4f16_1``.

K need not be a multiple of the group size: the last group is *partial* and its scale and zero
point come from its real elements only. ``group_size = -1`` means one group per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 40, 64, 128, -1)
MIN_SCALE = 1e-5  # OmniQuant's CLIPMIN: keeps constant groups from dividing by zero


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is quantized: bit width, group size (-1 = per channel), symmetry."""

    bits: int
    group_size: int
    sym: bool = False

    def __post_init__(self) -> None:
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
        return f"w{self.bits}{g}{'sym' if self.sym else 'asym'}"


@dataclass
class QuantizedWeight:
    """Integer codes [N, K] uint8, fp16 scales [N, G] and (asymmetric) uint8 zeros [N, G]."""

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


def token_quant_pre_hook(bits: int):  # noqa: ANN201
    """A forward pre-hook for an ``nn.Linear`` that fake-quantizes its input per token."""

    def hook(_mod: torch.nn.Module, args: tuple) -> tuple:
        return (fake_quantize_tokens(args[0], bits), *args[1:])

    return hook
