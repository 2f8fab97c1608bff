"""Quantize float weights into a scheme with MLC's arithmetic, and measure the error it adds."""

from __future__ import annotations

import torch

from lowbit.compiler.schemes import SymGroupQuant
from lowbit.quantizer import QuantizedWeight, quantize

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def mlc_quantize(w: torch.Tensor, scheme: SymGroupQuant) -> QuantizedWeight:
    """mlc-llm's ``GroupQuantize._quantize`` of ``w`` [N, K], computed in the model dtype.

    ``s = max|w| / m`` and ``q = clamp(round(w / s + m), 0, 2m)``, each op rounded to the model
    dtype. In fp16 this is exactly :func:`lowbit.quantizer.quantize` with ``sym=True``.
    """
    dtype = TORCH_DTYPES[scheme.model_dtype]
    w = w.to(dtype)
    if dtype == torch.float16:
        return quantize(w, scheme.spec)
    n, k = w.shape
    g, ng = scheme.group_size, scheme.num_groups(k)
    padded = torch.nn.functional.pad(w.abs(), (0, ng * g - k))  # |w| ≥ 0: zero pads never win
    m = torch.tensor(scheme.max_int, dtype=dtype)
    scales = padded.reshape(n, ng, g).amax(dim=-1) / m
    s = scales.repeat_interleave(g, dim=1)[:, :k]
    q = torch.where(s == 0, m, w / s + m)
    codes = q.round().clamp(0, 2 * scheme.max_int).to(torch.uint8)
    return QuantizedWeight(codes, scales, None, scheme.spec)


def weight_error(ref: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """Max absolute and relative Frobenius error of ``approx`` against ``ref``."""
    ref = ref.float()
    diff = approx.float() - ref
    norm = torch.linalg.vector_norm(ref).item()
    return {
        "max_abs": diff.abs().max().item(),
        "rel_fro": torch.linalg.vector_norm(diff).item() / norm if norm else 0.0,
    }
