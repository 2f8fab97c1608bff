"""GPTQ (Frantar et al. 2022): column-by-column rounding with inverse-Hessian error feedback.

Per decoder block, on the inputs from the already-quantized prefix: accumulate ``H = XᵀX``
for each linear, add ``percdamp · mean(diag H)`` to the diagonal, and quantize columns in
order, spreading each column's rounding error over the remaining columns through the upper
Cholesky factor of ``H⁻¹`` ("lazy batch" updates: blocks of columns, the rest of the matrix
updated once per block). Group parameters come from the group's already-updated weights when
its first column is reached. ``act_order`` visits columns by decreasing ``diag H``; its group
parameters are then fixed up front from the original weights ("static groups"), since groups
must stay contiguous along K in the fused format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lowbit.calib.blocks import (
    BlockData,
    calibration_ids,
    linear_input_grams,
    quantize_blockwise,
    resolve_settings,
)
from lowbit.calib.methods import CalibContext, register
from lowbit.errors import LowbitError
from lowbit.quantizer import QuantizedWeight, QuantSpec, compute_qparams, quantize_with

DEFAULTS = {"percdamp": 0.01, "blocksize": 128, "act_order": 0}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _column(w: torch.Tensor, column_spec: QuantSpec, s: torch.Tensor, z: torch.Tensor | None):
    """Codes [N] and dequantized values [N] (float64) of one column with its group's params."""
    qw = quantize_with(w[:, None].float(), column_spec, s, z)
    return qw.codes[:, 0], qw.dequantize(torch.float64)[:, 0]


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    percdamp: float = 0.01,
    blocksize: int = 128,
    act_order: bool = False,
) -> QuantizedWeight:
    """GPTQ-quantize ``w`` [N, K] given the input Gram/Hessian ``hessian`` [K, K] (float64)."""
    n, k = w.shape
    W = w.detach().to(torch.float64).clone()
    H = hessian.detach().to(torch.float64, copy=True)
    glen, groups = spec.group_len(k), spec.num_groups(k)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    static = act_order or spec.group_size == -1
    scales = torch.zeros(n, groups, dtype=torch.float16)
    zeros = None if spec.sym else torch.zeros(n, groups, dtype=torch.uint8)
    if static:
        s_all, z_all = compute_qparams(W.float(), spec)
        scales.copy_(s_all)
        if zeros is not None:
            zeros.copy_(z_all)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=torch.float64)
    try:
        hinv = torch.linalg.cholesky(
            torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True
        )
    except torch.linalg.LinAlgError:
        raise LowbitError("gptq: the damped Hessian is not positive definite (raise percdamp)") from None
    if not static:  # groups never straddle a lazy block, so their params see updated weights
        blocksize = glen * max(1, blocksize // glen)
    codes = torch.zeros(n, k, dtype=torch.uint8)
    column_spec = QuantSpec(spec.bits, -1, spec.sym)
    with _one_thread():  # the column ops are small: OpenMP sync would cost more than it saves
        for i1 in range(0, k, blocksize):
            i2 = min(i1 + blocksize, k)
            W1, h1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
            E1 = torch.zeros(n, i2 - i1, dtype=torch.float64)
            for i in range(i2 - i1):
                orig = int(perm[i1 + i])
                g = orig // glen
                if not static and orig % glen == 0:
                    s_g, z_g = compute_qparams(W1[:, i : i + glen].float(), column_spec)
                    scales[:, g : g + 1] = s_g
                    if zeros is not None:
                        zeros[:, g : g + 1] = z_g
                z_col = None if zeros is None else zeros[:, g : g + 1]
                codes[:, orig], q = _column(W1[:, i], column_spec, scales[:, g : g + 1], z_col)
                err = (W1[:, i] - q) / h1[i, i]
                W1[:, i:] -= err[:, None] * h1[i, i:][None, :]
                E1[:, i] = err
            W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    return QuantizedWeight(codes, scales, zeros, spec)


def _gptq_block(data: BlockData, spec: QuantSpec, settings: dict) -> dict[str, QuantizedWeight]:
    names = list(data.linears)
    grams = linear_input_grams(data.block, data.quant_in, data.kwargs, names)
    modules = dict(data.block.named_modules())
    return {
        name: gptq_quantize(
            modules[name].weight.detach().cpu(), grams[name].cpu(), spec,
            float(settings["percdamp"]),
            int(settings["blocksize"]),
            bool(int(settings["act_order"])),
        )
        for name in names
    }


@register("gptq", "GPTQ: Hessian-based error feedback, block by block (calibration data)",
          uses_data=True)
def gptq(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    settings = resolve_settings(ctx, "gptq", {"small": DEFAULTS, "paper": DEFAULTS})
    ids = calibration_ids(ctx, int(settings["nsamples"]), int(settings["seqlen"]))
    return run_gptq(model, layers, ctx, ids)


def run_gptq(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext, ids: torch.Tensor
) -> dict[str, QuantizedWeight]:
    """gptq on the token windows ``ids`` [n, T], with ``ctx.settings`` already resolved."""
    settings = ctx.settings
    return quantize_blockwise(
        model, layers, ctx, "gptq", ids, lambda d: _gptq_block(d, ctx.spec, settings), ("quant",)
    )
