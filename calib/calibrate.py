"""``lowbit calibrate``: resolve the model, run a method, write the fused checkpoint atomically."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lowbit.cache import atomic_dir, check_output
from lowbit.calib.methods import METHODS, CalibContext
from lowbit.corpus import WIKI_NAME
from lowbit.errors import LowbitError
from lowbit.fused import make_qconfig, quantized_linear_names, save_fused
from lowbit.models import is_fused, load_torch_model, resolve_model
from lowbit.quantizer import ACT_BITS, QuantSpec

# Methods that support weight-activation quantization: RTN never looks at activations, the
# others see the quantized activations while they calibrate. GPTQ and AWQ-clip do not.
ACT_QUANT_METHODS = ("rtn", "smoothquant", "omniquant")
CODEBOOK_METHODS = ("rtn", "bitdistiller")  # the methods whose quantizers know the NF3 levels


@dataclass
class CalibrateArgs:
    model: str
    method: str
    bits: int
    group_size: int
    sym: bool
    out: Path
    overwrite: bool = False
    seed: int = 0
    data: Path | None = None
    progress: bool = True
    settings: dict = field(default_factory=dict)
    act_bits: int | None = None  # per-token activation fake-quant at evaluation
    codebook: str | None = None  # "nf3": BitDistiller's non-uniform 3-bit levels

    def display(self) -> str:
        return "  ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "progress")


def calibrate(args: CalibrateArgs) -> Path:
    """Quantize ``args.model`` with ``args.method`` into the fused folder ``args.out``."""
    if args.method not in METHODS:
        raise LowbitError(f"unknown method {args.method!r} (available: {', '.join(METHODS)})")
    try:
        spec = QuantSpec(args.bits, args.group_size, args.sym, args.codebook)
    except ValueError as e:
        raise LowbitError(str(e)) from None
    if spec.codebook and args.method not in CODEBOOK_METHODS:
        raise LowbitError(f"--{spec.codebook} is supported with {', '.join(CODEBOOK_METHODS)}, "
                          f"not {args.method}")
    if args.act_bits is not None and args.act_bits not in ACT_BITS:
        raise LowbitError(f"--act-bits must be one of {', '.join(map(str, ACT_BITS))}, got {args.act_bits}")
    if args.act_bits is not None and args.method not in ACT_QUANT_METHODS:
        raise LowbitError(f"--act-bits is supported with {', '.join(ACT_QUANT_METHODS)}, "
                          f"not {args.method}")
    check_output(args.out, args.overwrite)
    folder = resolve_model(args.model)
    if is_fused(folder):
        raise LowbitError(f"{folder} is already quantized; calibrate the original model")
    method = METHODS[args.method]
    torch.manual_seed(args.seed)
    model = load_torch_model(folder)
    layers = quantized_linear_names(model)
    ctx = CalibContext(folder, spec, args.seed, args.data, args.progress, dict(args.settings),
                       args.act_bits)
    start = time.perf_counter()
    quantized = method.fn(model, layers, ctx)
    seconds = time.perf_counter() - start
    corpus = {"name": str(args.data) if args.data else WIKI_NAME, "split": "calibration"}
    qconfig = make_qconfig(
        args.method,
        spec,
        layers,
        args.act_bits,
        base_model=args.model,
        corpus=corpus if method.uses_data else None,
        seed=args.seed,
        settings=ctx.settings,
        seconds=round(seconds, 2),
    )
    with atomic_dir(args.out, args.overwrite) as tmp:
        save_fused(tmp, model, quantized, qconfig, folder)
    return args.out
