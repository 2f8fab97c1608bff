"""Quantization-aware training by self-distillation (BitDistiller's ``train/``).

Every quantized linear's weight becomes a parametrization: the module keeps a full-precision
latent weight and its forward pass sees :func:`lowbit.quantizer.fake_quantize_weight` of it —
the exported weight exactly (fp16 scales, integer zero points, group ranges re-derived at every
step), with straight-through gradients to the latent weight. The student trains on the teacher's
sequences against the FP teacher's logits (:mod:`lowbit.calib.cakld`) with AdamW at a constant
lr, gradient-norm clipping at 1.0 and gradient accumulation, as the reference's HF Trainer.
Trainable: the quantized linears and the norms (and biases); the embedding and LM head stay the
teacher's (the reference also updates them, at its lr of 8e-6 a negligible change, and here
they are stored unquantized).

Checkpoints hold the trainable tensors, the optimizer state, the step and the RNG state; the
data order is a function of the seed and the epoch, so a resumed run takes the same batches and
ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils import parametrize
from tqdm import tqdm

from lowbit.cache import atomic_file
from lowbit.calib.cakld import IGNORE_INDEX, distill_loss, teacher_confidence
from lowbit.errors import LowbitError
from lowbit.quantizer import QuantizedWeight, QuantSpec, fake_quantize_weight, quantize

MAX_GRAD_NORM = 1.0  # the HF Trainer default the reference runs with


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps
    batch_size: int  # sequences per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    lr: float
    weight_decay: float = 0.0
    loss: str = "cakld"
    gamma: float = 0.5  # CAKLD's coefficient (teacher confidence)
    bf16: bool = False  # bf16 autocast of the forward passes
    save_every: int = 50  # optimizer steps between checkpoints
    seed: int = 0


class FakeQuant(torch.nn.Module):
    """Parametrization: the exported (quantize-dequantize) value of the latent weight."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, self.spec).to(w.dtype)


def attach_fake_quant(model: torch.nn.Module, layers: list[str], spec: QuantSpec) -> None:
    """Make each linear in ``layers`` run on the fake-quantized value of its weight."""
    modules = dict(model.named_modules())
    for name in layers:
        parametrize.register_parametrization(modules[name], "weight", FakeQuant(spec))


def export_quantized(model: torch.nn.Module, layers: list[str], spec: QuantSpec) -> dict[str, QuantizedWeight]:
    """Remove the parametrizations; quantize the latent weights (the linears then hold the
    dequantized weights, as after any method)."""
    modules = dict(model.named_modules())
    out = {}
    for name in layers:
        mod = modules[name]
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        with torch.no_grad():
            qw = quantize(mod.weight.detach().cpu(), spec)
            mod.weight.copy_(qw.dequantize(mod.weight.dtype))
        out[name] = qw
    return out


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Everything but the input embedding and the LM head."""
    frozen = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
              for p in m.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) not in frozen}


def collate(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)`` [B, T]; padding is ignored."""
    length = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return ids, mask, labels


def micro_batch(seqs: list[torch.Tensor], batch_size: int, seed: int, index: int) -> list[torch.Tensor]:
    """Micro-batch ``index`` of the run: epochs of shuffled, full batches (order from the seed)."""
    per_epoch = len(seqs) // batch_size
    epoch, j = divmod(index, per_epoch)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [seqs[i] for i in order[j * batch_size : (j + 1) * batch_size].tolist()]


def _autocast(dev: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def estimate_gamma(teacher: torch.nn.Module, seqs: list[torch.Tensor], batch_size: int,
                   batches: int, seed: int, bf16: bool = False) -> float:
    """CAKLD's γ: the teacher's mean top-1 probability over the first ``batches`` micro-batches
    of the training order (the reference's ``cakld_steps``), padding excluded."""
    dev = next(teacher.parameters()).device
    total, count = 0.0, 0
    for b in range(batches):
        ids, mask, labels = collate(micro_batch(seqs, batch_size, seed, b))
        with _autocast(dev, bf16):
            logits = teacher(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        s, n = teacher_confidence(logits, labels.to(dev))
        total, count = total + s, count + n
    return total / max(count, 1)


def _save(path: Path, step: int, params: dict, opt: torch.optim.Optimizer, losses: list[float]) -> None:
    state = {"step": step, "params": {n: p.detach().cpu() for n, p in params.items()},
             "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "losses": losses}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load(path: Path, params: dict, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    state = torch.load(path, weights_only=False)
    if set(state["params"]) != set(params):
        raise LowbitError(f"{path}: the checkpoint's parameters do not match the model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["params"][n])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["losses"]


def train(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    seqs: list[torch.Tensor],
    cfg: TrainConfig,
    state: Path,
    resume: bool = False,
    progress: bool = True,
) -> list[float]:
    """Train ``student`` (fake-quant parametrizations attached) on ``seqs`` (token id
    tensors) for ``cfg.steps`` steps; ``teacher`` may be None only for ``loss="ce"``.
    Checkpoints go to the file ``state``; with ``resume`` an existing one is continued.
    Returns the loss of every optimizer step."""
    if len(seqs) < cfg.batch_size:
        raise LowbitError(f"{len(seqs)} training sequences, fewer than the batch size {cfg.batch_size}")
    if teacher is None and cfg.loss != "ce":
        raise LowbitError(f"loss {cfg.loss!r} needs the teacher")
    dev = next(student.parameters()).device
    student.requires_grad_(False)
    params = trainable_parameters(student)
    for p in params.values():
        p.requires_grad_(True)
    student.train()
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, losses = 0, []
    if resume and state.exists():
        start, losses = _load(state, params, opt)
    bar = tqdm(total=cfg.steps, initial=start, desc="bitdistiller", unit="step", disable=not progress)
    for step in range(start, cfg.steps):
        t0, tokens, total = time.perf_counter(), 0, 0.0
        opt.zero_grad(set_to_none=True)
        for a in range(cfg.grad_accum):
            ids, mask, labels = collate(micro_batch(seqs, cfg.batch_size, cfg.seed, step * cfg.grad_accum + a))
            ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
            with _autocast(dev, cfg.bf16):
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(input_ids=ids, attention_mask=mask).logits
                s_logits = student(input_ids=ids, attention_mask=mask).logits
            loss = distill_loss(cfg.loss, s_logits, t_logits, labels, cfg.gamma) / cfg.grad_accum
            if not torch.isfinite(loss):
                raise LowbitError(f"bitdistiller: loss is {loss.item()} at step {step}; try a lower lr")
            loss.backward()
            total += loss.item()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        opt.step()
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4g}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save(state, step + 1, params, opt, losses)
    bar.close()
    student.eval()
    student.requires_grad_(False)
    return losses
