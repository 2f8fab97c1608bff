"""BitDistiller (Du et al., ACL 2024): asymmetric clipping, then quantization-aware training by
self-distillation with the CAKLD loss.

1. The FP teacher generates the training sequences (:mod:`lowbit.calib.distill_data`, cached).
2. The asymmetric clip search clamps the weights once (:mod:`lowbit.calib.asym_clip`) on
   ``nsamples`` × ``seqlen`` calibration windows.
3. Every decoder linear trains through the STE quantizer — INT2/INT3 asymmetric or NF3, group
   64 or 128, the group's range re-derived from the current weights at every step — against
   the teacher's logits (:mod:`lowbit.calib.qat`, :mod:`lowbit.calib.cakld`).
4. The latent weights are quantized once more into the fused checkpoint: the values training
   saw.

Presets (:func:`defaults`): ``paper`` is the reference's settings (3000 corpus prompts, 1024
new tokens, sequences up to 1024 tokens, 16 × 8 sequences per step, lr 8e-6, ~4 epochs);
``small`` fits the CPU budget (≤ 60 min training per setting on 2 cores for the bundled model;
the teacher data once, timed apart). The output records the resolved settings, CAKLD's γ, the
final loss and the seconds of each phase.
"""

from __future__ import annotations

import copy
import shutil
import time

import torch

from lowbit.calib.asym_clip import apply_asym_clip
from lowbit.calib.blocks import calibration_ids, checkpoint_dir, device, resolve_settings
from lowbit.calib.cakld import LOSSES
from lowbit.calib.distill_data import (
    GenerationSettings,
    corpus_prompts,
    instruction_prompts,
    teacher_sequences,
)
from lowbit.calib.methods import CalibContext, register
from lowbit.calib.qat import TrainConfig, attach_fake_quant, estimate_gamma, export_quantized, train
from lowbit.errors import LowbitError
from lowbit.models import load_tokenizer
from lowbit.quantizer import QuantizedWeight

BITS = (2, 3)
GROUP_SIZES = (64, 128)


def defaults() -> dict[str, dict]:
    """Per-preset settings; ``nsamples``/``seqlen`` are the clip search's calibration windows.

    ``small`` on the bundled model, 2 AVX-512 cores: a step (2 micro-batches of 4 × ~290
    tokens: teacher forward, student forward and backward) takes ~30 s, so 50 steps ≈ 25 min,
    plus ~3.5 min of clip search; the teacher data (128 × ≤ 256 new tokens, ~5 min) are
    generated once. Its lr, 5e-4, won an 8-step probe at W2 g128 on the validation split
    (ppl 941 / 310 / 180 / 235 at lr 2e-5 / 1e-4 / 5e-4 / 1e-3; clipping alone: 10,977): the
    reference's 8e-6 is for 7B models and thousands of sequences."""
    common = {"clip": 1, "n_grid": 20, "max_shrink": 0.5, "prompt_chars": 128,
              "temperature": 0.7, "top_p": 1.0, "gen_batch": 16, "wd": 0.0, "loss": "cakld",
              "gamma_batches": 10, "save_every": 25, "bf16": None, "instructions": None}
    return {
        "small": {**common, "gen_samples": 128, "gen_tokens": 256, "train_seqlen": 384,
                  "batch_size": 4, "grad_accum": 2, "steps": 50, "lr": 5e-4},
        "paper": {**common, "nsamples": 128, "seqlen": 1024, "gen_samples": 3000,
                  "gen_tokens": 1024, "train_seqlen": 1024, "batch_size": 16, "grad_accum": 8,
                  "steps": 96, "lr": 8e-6},
    }


def _check(ctx: CalibContext) -> None:
    spec = ctx.spec
    if spec.bits not in BITS or spec.group_size not in GROUP_SIZES or spec.sym:
        raise LowbitError(
            f"bitdistiller quantizes asymmetric {' or '.join(map(str, BITS))}-bit weights in groups "
            f"of {' or '.join(map(str, GROUP_SIZES))} (got {spec.name})")
    loss = ctx.settings["loss"]
    if loss not in LOSSES:
        raise LowbitError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")


def _bf16(setting: object, dev: torch.device) -> int:
    """The bf16 setting; unset: on where the device computes bf16 natively (CUDA with bf16)."""
    if setting is not None:
        return int(setting)
    return int(dev.type == "cuda" and torch.cuda.is_bf16_supported())


@register("bitdistiller", "BitDistiller: asymmetric clipping + QAT self-distillation with CAKLD "
          "(data; --nf3 for its NF3 codebook)", uses_data=True)
def bitdistiller(
    model: torch.nn.Module, layers: list[str], ctx: CalibContext
) -> dict[str, QuantizedWeight]:
    resolve_settings(ctx, "bitdistiller", defaults())
    s = ctx.settings
    _check(ctx)
    dev = device()
    s["bf16"] = _bf16(s["bf16"], dev)
    state = checkpoint_dir("bitdistiller", ctx) / "train.pt"
    resume = bool(ctx.settings.get("resume")) and state.exists()
    if state.parent.exists() and not resume:
        shutil.rmtree(state.parent)
    seconds: dict[str, float] = {}
    teacher = copy.deepcopy(model).to(dev).eval().requires_grad_(False)

    gen = GenerationSettings(int(s["gen_samples"]), int(s["prompt_chars"]), int(s["gen_tokens"]),
                             float(s["temperature"]), float(s["top_p"]), int(s["gen_batch"]), ctx.seed)
    prompts = corpus_prompts(ctx.data, gen.samples, gen.prompt_chars, ctx.seed)
    if s["instructions"]:
        prompts += instruction_prompts(s["instructions"])
    seqs, seconds["teacher_data"] = teacher_sequences(
        ctx.model_dir, teacher, load_tokenizer(ctx.model_dir), prompts, gen, ctx.progress)
    seqs = [q[: int(s["train_seqlen"])] for q in seqs]

    if int(s["clip"]) and not resume:  # a resumed run loads its weights from the checkpoint
        start = time.perf_counter()
        ids = calibration_ids(ctx, int(s["nsamples"]), int(s["seqlen"]))
        apply_asym_clip(model, layers, ctx.spec, ids, int(s["n_grid"]), float(s["max_shrink"]),
                        ctx.progress)
        seconds["clip"] = time.perf_counter() - start

    start = time.perf_counter()
    gamma = 0.5
    if s["loss"] == "cakld":
        gamma = estimate_gamma(teacher, seqs, int(s["batch_size"]), int(s["gamma_batches"]),
                               ctx.seed, bool(s["bf16"]))
    cfg = TrainConfig(int(s["steps"]), int(s["batch_size"]), int(s["grad_accum"]), float(s["lr"]),
                      float(s["wd"]), s["loss"], gamma, bool(s["bf16"]), int(s["save_every"]), ctx.seed)
    attach_fake_quant(model, layers, ctx.spec)
    model.to(dev)
    state.parent.mkdir(parents=True, exist_ok=True)
    losses = train(model, teacher if s["loss"] != "ce" else None, seqs, cfg, state,
                   resume, ctx.progress)
    quantized = export_quantized(model, layers, ctx.spec)
    model.to("cpu")
    seconds["train"] = time.perf_counter() - start
    shutil.rmtree(state.parent, ignore_errors=True)
    ctx.settings.update({
        "gamma": round(gamma, 6) if s["loss"] == "cakld" else None,
        "final_loss": round(losses[-1], 6),
        "train_sequences": len(seqs),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    })
    return quantized
