"""Decoder-block-wise calibration: block inputs, the block loop, and per-block checkpoints.

Methods that calibrate one decoder block at a time (OmniQuant, GPTQ, AWQ-clip) share this loop.
It carries two streams of block inputs over the calibration windows: ``fp`` (what the
full-precision model feeds block i) and ``quant`` (what the already-quantized prefix feeds it).
After a block is quantized its linears hold the dequantized weights, so the ``quant`` stream
sees exactly what the exported checkpoint computes. Each finished block is saved; with
``resume`` a rerun loads the saved blocks and replays their forward passes instead of
re-calibrating them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lowbit.architectures import BlockLayout, model_architecture
from lowbit.biases import attach_biases
from lowbit.cache import atomic_file, cache_dir
from lowbit.calib.methods import CalibContext
from lowbit.corpus import calibration_windows, split_tokens
from lowbit.errors import LowbitError
from lowbit.models import load_tokenizer
from lowbit.quantizer import QuantizedWeight, QuantSpec, token_quant_pre_hook

FORWARD_BATCH = 8  # windows per no-grad block forward


@dataclass
class BlockData:
    """What a method sees for block ``index``: inputs [n, T, H] of each stream, FP outputs."""

    index: int
    block: torch.nn.Module
    layout: BlockLayout
    linears: dict[str, str]  # name inside the block → full model name
    kwargs: dict  # position embeddings / mask / position ids for block.forward
    fp_in: torch.Tensor | None
    fp_out: torch.Tensor | None  # the FP block applied to fp_in
    quant_in: torch.Tensor | None
    report: Callable[[str], None] = lambda _msg: None  # shown beside the progress bar


# Quantize every linear of the block; return codes keyed by the name inside the block.
BlockFn = Callable[[BlockData], dict[str, QuantizedWeight]]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def block_layout(model: torch.nn.Module) -> BlockLayout:
    """The decoder block layout of ``model``'s architecture record."""
    return model_architecture(model).layout


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    path = block_layout(model).layers
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise LowbitError(f"{type(model).__name__} has no {path} decoder stack") from None


def calibration_ids(ctx: CalibContext, nsamples: int, seqlen: int) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from the calibration split [n, T]."""
    ids = split_tokens(load_tokenizer(ctx.model_dir), "calibration", ctx.data)
    return torch.from_numpy(calibration_windows(ids, seqlen, nsamples, ctx.seed))


class _Captured(Exception):
    pass


def capture_block_inputs(
    model: torch.nn.Module, ids: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, list[dict]]:
    """Inputs of the first decoder block for each window [n, T, H], and each block's keyword
    arguments (masks differ by block where a family mixes sliding-window and full attention)."""
    layers = decoder_layers(model)
    seen: dict = {}
    keep = ("attention_mask", "position_ids", "position_embeddings")
    per_layer: list[dict] = [{} for _ in layers]

    def grab(_mod, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        if seen.get("ran_through"):
            raise _Captured
        seen["ran_through"] = True

    def record(i: int):
        def hook(_mod, _args, kwargs):
            per_layer[i] = {k: v for k, v in kwargs.items() if k in keep}
        return hook

    model.to(dev)
    handles = [layers[0].register_forward_pre_hook(grab, with_kwargs=True)]
    handles += [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    rows = []
    try:
        with torch.no_grad():
            for row in ids:  # the first window runs through all blocks, to record their arguments
                try:
                    model(row[None].to(dev), use_cache=False)
                except _Captured:
                    pass
                rows.append(seen["x"][0])
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows), per_layer


def block_output(block: torch.nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def forward_all(block: torch.nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The block applied to every window of ``x`` [n, T, H], in batches."""
    return torch.cat(
        [
            block_output(block, x[i : i + FORWARD_BATCH], kwargs)
            for i in range(0, len(x), FORWARD_BATCH)
        ]
    )


def block_linears(block: torch.nn.Module, prefix: str, layers: list[str]) -> dict[str, str]:
    wanted = set(layers)
    return {
        name: f"{prefix}.{name}"
        for name, mod in block.named_modules()
        if isinstance(mod, torch.nn.Linear) and f"{prefix}.{name}" in wanted
    }


def checkpoint_dir(method: str, ctx: CalibContext) -> Path:
    """Per-run folder of finished blocks, keyed by everything that determines the result."""
    settings = {k: v for k, v in ctx.settings.items() if k != "resume"}
    key = json.dumps(
        [str(Path(ctx.model_dir).resolve()), method, ctx.spec.name, settings, ctx.seed,
         str(ctx.data), ctx.act_bits],
        sort_keys=True, default=str,
    )
    return cache_dir() / "calib-state" / f"{method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _save_block(path: Path, quantized: dict[str, QuantizedWeight], block: torch.nn.Module) -> None:
    """The block's codes and its other tensors (norms and biases, which LET changes)."""
    weights = {f"{n}.weight" for n in quantized}
    rest = {k: v for k, v in block.state_dict().items() if k not in weights}
    state = {"linears": {n: (q.codes, q.scales, q.zeros) for n, q in quantized.items()},
             "rest": rest}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load_block(path: Path, spec: QuantSpec, block: torch.nn.Module) -> dict[str, QuantizedWeight]:
    state = torch.load(path, weights_only=True)
    attach_biases(block, state["rest"])  # a LET shift's biases
    block.load_state_dict(state["rest"], strict=False)
    return {n: QuantizedWeight(c, s, z, spec) for n, (c, s, z) in state["linears"].items()}


PRESETS = {"small": {"nsamples": 32, "seqlen": 512}, "paper": {"nsamples": 128, "seqlen": 2048}}


def resolve_settings(ctx: CalibContext, method: str, defaults: dict[str, dict]) -> dict:
    """Fill ``ctx.settings`` from ``--preset`` (default small) and the method's per-preset
    defaults; explicit settings win. The resolved settings are what the output records."""
    preset = ctx.settings.get("preset", "small")
    if preset not in PRESETS:
        raise LowbitError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    resolved = {"preset": preset, **PRESETS[preset], **defaults[preset]}
    unknown = set(ctx.settings) - set(resolved) - {"resume"}
    if unknown:
        raise LowbitError(
            f"{method} does not take setting(s) {', '.join(sorted(unknown))} "
            f"(it takes: {', '.join(sorted(resolved))})"
        )
    resolved.update({k: v for k, v in ctx.settings.items() if v is not None})
    ctx.settings.clear()
    ctx.settings.update(resolved)
    return resolved


@torch.no_grad()
def linear_input_grams(
    block: torch.nn.Module, x: torch.Tensor, kwargs: dict, names: list[str]
) -> dict[str, torch.Tensor]:
    """``XᵀX / tokens`` [K, K] (float64) of the inputs each named linear sees when the block
    runs on ``x``: the GPTQ Hessian (up to a factor 2) and the AWQ-clip error metric.

    Linears fed the same tensor (q/k/v, gate/up) share one accumulation."""
    modules = dict(block.named_modules())
    grams: dict[str, torch.Tensor] = {}
    tokens = dict.fromkeys(names, 0)
    alias: dict[str, str] = {}  # linear → the linear whose input it shares
    # data_ptr of inputs in the current batch → (first linear, the tensor: held so that its
    # memory cannot be reused by a later tensor of the batch)
    seen: dict[int, tuple[str, torch.Tensor]] = {}

    def new_batch(_mod, _args):
        seen.clear()

    def hook(name):
        def accumulate(_mod, args):
            ptr = args[0].data_ptr()
            if ptr in seen and seen[ptr][0] != name:
                alias[name] = seen[ptr][0]
                return
            seen[ptr] = (name, args[0])
            a = args[0].reshape(-1, args[0].shape[-1]).float()
            if name not in grams:
                grams[name] = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64,
                                          device=a.device)
            grams[name] += (a.T @ a).double()  # fp32 per batch, float64 across batches
            tokens[name] += a.shape[0]

        return accumulate

    handles = [block.register_forward_pre_hook(new_batch)]
    handles += [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        forward_all(block, x, kwargs)
    finally:
        for h in handles:
            h.remove()
    out = {n: g / max(tokens[n], 1) for n, g in grams.items()}
    return {n: out[alias.get(n, n)] for n in names}


@torch.no_grad()
def linear_input_range(
    block: torch.nn.Module, x: torch.Tensor, kwargs: dict, names: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel ``(min X, max X)`` [K] each of the inputs each named linear sees when the
    block runs on ``x``: LET's statistics (``max |X|``, the reference's ``act_scales``, and the
    midpoint, its ``act_shifts``)."""
    modules = dict(block.named_modules())
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def record(_mod, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            lo, hi = a.amin(0), a.amax(0)
            if name in out:
                lo, hi = torch.minimum(out[name][0], lo), torch.maximum(out[name][1], hi)
            out[name] = (lo, hi)

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        forward_all(block, x, kwargs)
    finally:
        for h in handles:
            h.remove()
    return out


@contextmanager
def act_quant(block: torch.nn.Module, names: list[str], bits: int | None) -> Iterator[None]:
    """While inside, the named linears of ``block`` see per-token fake-quantized inputs
    (``bits``; None: unchanged) — the quantized stream of a weight-activation run."""
    if bits is None:
        yield
        return
    modules = dict(block.named_modules())
    handles = [modules[n].register_forward_pre_hook(token_quant_pre_hook(bits)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def quantize_blockwise(
    model: torch.nn.Module,
    layers: list[str],
    ctx: CalibContext,
    method: str,
    ids: torch.Tensor,
    quantize_block: BlockFn,
    streams: tuple[str, ...],
) -> dict[str, QuantizedWeight]:
    """Run ``quantize_block`` on each decoder block in order; ``streams`` ⊆ {"fp", "quant"}."""
    dev = device()
    layout = block_layout(model)
    decoder, prefix = decoder_layers(model), layout.layers
    x, layer_kwargs = capture_block_inputs(model, ids, dev)
    fp_in = x if "fp" in streams else None
    quant_in = x.clone() if "quant" in streams else None
    del x
    state = checkpoint_dir(method, ctx)
    if not ctx.settings.get("resume") and state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    out: dict[str, QuantizedWeight] = {}
    bar = tqdm(range(len(decoder)), desc=method, unit="block", disable=not ctx.progress)
    for i in bar:
        block, kwargs = decoder[i], layer_kwargs[i]
        linears = block_linears(block, f"{prefix}.{i}", layers)
        fp_out = forward_all(block, fp_in, kwargs) if fp_in is not None else None
        saved = state / f"block_{i:03d}.pt"
        if saved.exists():
            quantized = _load_block(saved, ctx.spec, block)
            bar.set_postfix_str("resumed")
        else:
            quantized = quantize_block(
                BlockData(i, block, layout, linears, kwargs, fp_in, fp_out, quant_in,
                          bar.set_postfix_str)
            )
            _save_block(saved, quantized, block)
        modules = dict(block.named_modules())
        with torch.no_grad():
            for name, qw in quantized.items():
                w = modules[name].weight
                w.copy_(qw.dequantize(w.dtype).to(w.device))
                out[linears[name]] = qw
        if quant_in is not None:
            with act_quant(block, list(linears), ctx.act_bits):
                quant_in = forward_all(block, quant_in, kwargs)
            if not torch.isfinite(quant_in).all():
                raise LowbitError(f"{method}: block {i} ({prefix}.{i}) produced NaN/inf outputs")
        fp_in = fp_out
    model.to("cpu")
    shutil.rmtree(state, ignore_errors=True)
    return out
