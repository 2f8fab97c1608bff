"""``lowbit convert``: a fused checkpoint, HF folder, GGUF or bundled model → an MLC weight folder.

Fused integer codes go into an asymmetric scheme of the same bits and group unchanged (checked),
and into a symmetric MLC scheme unchanged when the checkpoint is itself symmetric with the scheme's
bits and group; otherwise the weights (fake-quant weights for a fused checkpoint) are quantized
with MLC's arithmetic and the error this adds is recorded per layer in ``tensor-cache.json``'s
metadata. NF3 checkpoints go only into the NF3 scheme of their group, unchanged, and NF3 schemes
take only NF3 checkpoints. Float models are quantized on the fly (RTN for asymmetric and NF3
schemes, MLC's own math for symmetric). The embedding and lm_head go into the scheme's ``edge``
(``compiler/schemes.py``): the body's for MLC's schemes, fp16 or 8-bit (``…_q8head``) otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lowbit.architectures import MlcParam, get_architecture
from lowbit.artifact import sha256_file
from lowbit.cache import atomic_dir, check_output
from lowbit.compiler.chat_config import write_chat_config
from lowbit.compiler.packing import pack, unpack
from lowbit.compiler.requantize import TORCH_DTYPES, mlc_quantize, weight_error
from lowbit.compiler.schemes import (
    SCHEMES,
    AsymGroupQuant,
    NF3GroupQuant,
    NoQuant,
    Scheme,
    SymGroupQuant,
    get_scheme,
    param_scheme,
)
from lowbit.compiler.tensor_cache import write_tensor_cache
from lowbit.errors import LowbitError
from lowbit.fused import read_quantized, spec_from_qconfig
from lowbit.models import is_fused, load_torch_model, read_config, resolve_model
from lowbit.quantizer import QuantizedWeight, QuantSpec, quantize


@dataclass
class ConvertArgs:
    model: str
    scheme: str
    out: Path
    overwrite: bool = False
    conv_template: str | None = None  # None: chatml when the model's chat template is ChatML
    progress: bool = True

    def display(self) -> str:
        return "  ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "progress")


@dataclass
class ConvertResult:
    out: Path
    scheme: str
    param_bytes: int
    bits_per_param: float
    reused: list[str] = field(default_factory=list)  # HF linears whose codes were kept as they are
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # HF name → added error

    def summary(self) -> str:
        line = (f"{self.scheme}: {self.param_bytes / 2**20:.2f} MiB, "
                f"{self.bits_per_param:.3f} bits/param, {len(self.reused)} linears kept losslessly")
        if self.errors:
            worst = max(self.errors, key=lambda n: self.errors[n]["rel_fro"])
            line += (f", {len(self.errors)} tensors quantized: max abs error "
                     f"{max(e['max_abs'] for e in self.errors.values()):.3g}, worst relative "
                     f"Frobenius {self.errors[worst]['rel_fro']:.3g} ({worst})")
        return line


class Source:
    """The weights being converted: plain tensors plus (fused checkpoints) quantized linears."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.spec: QuantSpec | None = None
        self.quantized: dict[str, QuantizedWeight] = {}
        if is_fused(folder):
            qconfig, self.tensors, self.quantized = read_quantized(folder)
            if qconfig.get("act_bits"):
                raise LowbitError(f"{folder} quantizes activations to {qconfig['act_bits']} bits; "
                                  "MLC's schemes keep fp16 activations (weight-only checkpoints only)")
            self.spec = spec_from_qconfig(qconfig)
        else:
            model = load_torch_model(folder)
            self.tensors = {k: v.detach() for k, v in model.state_dict().items()}

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise LowbitError(f"{self.folder}: missing tensor {name}") from None

    def float_weight(self, module: str) -> torch.Tensor:
        """fp32 weight of a linear/embedding (fake-quant ``s·(q − z)`` when quantized)."""
        if module in self.quantized:
            return self.quantized[module].dequantize(torch.float32)
        return self.tensor(f"{module}.weight").float()


def _group_words(spec: QuantSpec) -> str:
    return "per-channel" if spec.group_size == -1 else f"group {spec.group_size}"


def check_holdable(spec: QuantSpec | None, scheme: Scheme, where: Path) -> None:
    """Asymmetric and NF3 schemes keep fused codes as they are, so bits, group and codebook must
    match; NF3 codes go into no other scheme."""
    if spec is None:
        return
    if spec.codebook:
        same = f"{spec.codebook}a16g{spec.group_size}"
        hint = f"use {same}" if same in SCHEMES else f"no {spec.codebook} scheme holds them"
        if not isinstance(scheme, NF3GroupQuant) or spec.group_size != scheme.group_size:
            raise LowbitError(f"{scheme.name} cannot hold the {spec.codebook} {_group_words(spec)} "
                              f"codes of {where}; {hint}")
        return
    same = f"w{spec.bits}a16g{spec.group_size}asym"
    hint = f"use {same}" if same in SCHEMES else "no asymmetric scheme holds them"
    if isinstance(scheme, NF3GroupQuant):
        raise LowbitError(f"{scheme.name} holds nf3 codes, not the {spec.bits}-bit integer codes "
                          f"of {where}; {hint}, or calibrate with --nf3")
    if not isinstance(scheme, AsymGroupQuant):
        return
    if (spec.bits, spec.group_size) != (scheme.bits, scheme.group_size):
        raise LowbitError(
            f"{scheme.name} cannot hold the {spec.bits}-bit {_group_words(spec)} codes of {where} "
            f"without re-quantization; {hint}, or a symmetric MLC scheme (q4f16_1, q3f16_1) "
            "re-quantizes"
        )


def hold_asym(qw: QuantizedWeight, scheme: AsymGroupQuant) -> QuantizedWeight:
    """The same codes as an asymmetric weight (symmetric codes: zero point ``m``)."""
    zeros = qw.zeros
    if zeros is None:
        zeros = torch.full(qw.scales.shape, qw.spec.sym_offset, dtype=torch.uint8)
    return QuantizedWeight(qw.codes, qw.scales.to(torch.float16), zeros, scheme.spec)


def _concat(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack along N: groups lie within a row, so this is exact."""
    zeros = None if parts[0].zeros is None else torch.cat([p.zeros for p in parts])
    return QuantizedWeight(
        torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), zeros,
        parts[0].spec,
    )


class Converter:
    """Turns each :class:`MlcParam` into the scheme's arrays, recording what it re-quantized."""

    def __init__(self, scheme: Scheme, source: Source):
        self.scheme = scheme
        self.source = source
        self.dtype = TORCH_DTYPES[scheme.model_dtype]
        self.reused: list[str] = []
        self.errors: dict[str, dict[str, float]] = {}
        self.param_bytes = 0
        self.param_count = 0  # source elements, as MLC's BitsPerParam counts them

    def _quantize_source(self, module: str, scheme: Scheme) -> QuantizedWeight:
        qw = self.source.quantized.get(module)
        if isinstance(scheme, AsymGroupQuant) and qw is not None:
            self.reused.append(module)
            return hold_asym(qw, scheme)
        if isinstance(scheme, NF3GroupQuant) and qw is not None:  # check_holdable: same spec
            self.reused.append(module)
            return qw
        if isinstance(scheme, SymGroupQuant) and qw is not None and qw.spec == scheme.spec:
            self.reused.append(module)
            return QuantizedWeight(qw.codes, qw.scales.to(self.dtype), None, qw.spec)
        ref = self.source.float_weight(module)
        if isinstance(scheme, AsymGroupQuant | NF3GroupQuant):
            out = quantize(ref, scheme.spec)
        else:
            out = mlc_quantize(ref, scheme)
        self.errors[module] = weight_error(ref, out.dequantize(torch.float32))
        return out

    def arrays(self, p: MlcParam) -> list[tuple[str, np.ndarray]]:
        if p.kind == "plain":
            t = torch.cat([self.source.tensor(s).reshape(-1) for s in p.sources])
            self.param_count += t.numel()
            return [(p.name, (t.float() + p.offset).to(self.dtype).numpy())]
        scheme = param_scheme(self.scheme, p.name, p.kind)
        if isinstance(scheme, NoQuant):
            w = torch.cat([self.source.float_weight(s) for s in p.sources])
            self.param_count += w.numel()
            return [(f"{p.name}.weight", w.to(self.dtype).numpy())]
        qw = _concat([self._quantize_source(s, scheme) for s in p.sources])
        codes = qw.codes.numpy()
        if codes.shape != (sum(p.rows), p.k):
            raise LowbitError(f"{p.name}: weight shape {codes.shape} != config's {(sum(p.rows), p.k)}")
        words = pack(codes, scheme)
        if not np.array_equal(unpack(words, scheme, p.k), codes):
            raise AssertionError(f"{p.name}: packing lost information")  # a bug, never user input
        self.param_count += codes.size
        out = [(f"{p.name}.q_weight", words), (f"{p.name}.q_scale", qw.scales.to(self.dtype).numpy())]
        if isinstance(scheme, AsymGroupQuant):
            out.append((f"{p.name}.q_zero", qw.zeros.numpy()))
        return out

    def params(self, plan: list[MlcParam], progress: bool) -> Iterator[tuple[str, np.ndarray]]:
        for p in tqdm(plan, desc=f"convert {self.scheme.name}", unit="param", disable=not progress):
            for name, arr in self.arrays(p):
                self.param_bytes += arr.nbytes
                yield name, np.ascontiguousarray(arr)


def _metadata(conv: Converter, args: ConvertArgs, names: list[str], folder: Path) -> dict:
    """MLC's ``ParamSize``/``ParamBytes``/``BitsPerParam`` plus what lowbit did, and the sha256
    of the ``tokenizer.json`` the folder gets (readers check it with the shards)."""
    spec = conv.source.spec
    tokenizer = folder / "tokenizer.json"
    return {
        "ParamSize": len(names),
        "ParamBytes": float(conv.param_bytes),
        "BitsPerParam": conv.param_bytes * 8.0 / conv.param_count,
        "lowbit": {
            "scheme": conv.scheme.name,
            "source": str(args.model),
            "source_quantization": None if spec is None else spec.name,
            "lossless_linears": conv.reused,
            "added_error": conv.errors,
            "tokenizer_sha256": sha256_file(tokenizer) if tokenizer.is_file() else None,
        },
    }


def convert(args: ConvertArgs) -> ConvertResult:
    """Write the MLC weight folder ``args.out`` for ``args.model`` in scheme ``args.scheme``."""
    scheme = get_scheme(args.scheme)
    check_output(args.out, args.overwrite)
    folder = resolve_model(args.model)
    config = read_config(folder)
    arch = get_architecture(config, str(folder))
    plan = arch.mlc_params(config)
    source = Source(folder)
    check_holdable(source.spec, scheme, folder)
    conv = Converter(scheme, source)
    names: list[str] = []

    def named(it: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        for name, arr in it:
            names.append(name)
            yield name, arr

    with atomic_dir(args.out, args.overwrite) as tmp:
        write_tensor_cache(
            named(conv.params(plan, args.progress)), tmp, lambda: _metadata(conv, args, names, folder)
        )
        write_chat_config(folder, config, arch, scheme.name, tmp, args.conv_template)
    return ConvertResult(
        args.out, scheme.name, conv.param_bytes, conv.param_bytes * 8.0 / conv.param_count,
        conv.reused, conv.errors,
    )
