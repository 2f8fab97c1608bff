"""BitDistiller's distillation losses between student and teacher next-token distributions.

With ``p`` the teacher's and ``q`` the student's distribution at a position:

* ``fkl`` (forward):  KL(p‖q) = Σ_v p_v (log p_v − log q_v)
* ``rkl`` (reverse):  KL(q‖p) = Σ_v q_v (log q_v − log p_v)
* ``cakld`` (confidence-aware): γ·KL(q‖p) + (1 − γ)·KL(p‖q), γ the teacher's mean top-1
  probability on the training data (:func:`teacher_confidence`): a confident teacher leans on
  the mode-seeking reverse KL, an unsure one on the mean-seeking forward KL.
* ``ce``: cross-entropy of the student on the sequence's next tokens (no teacher).

As the reference (``train/mytrainer.py``), the KL losses compare the two distributions at every
position whose label is not ``IGNORE_INDEX`` (padding), are summed over a sequence's positions
and averaged over the batch. ``ce`` is averaged over the predicted tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSSES = ("cakld", "fkl", "rkl", "ce")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) per position [B, T] from log-probabilities [B, T, V]."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def distill_loss(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    gamma: float = 0.5,
) -> torch.Tensor:
    """The ``kind`` loss (see the module docstring) of logits [B, T, V] and labels [B, T]."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r} (choose from {', '.join(LOSSES)})")
    if kind == "ce":
        return F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(),
                               labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    mask = (labels != IGNORE_INDEX).float()
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    if kind == "fkl":
        per_token = _kl(log_p, log_q)
    elif kind == "rkl":
        per_token = _kl(log_q, log_p)
    else:
        per_token = gamma * _kl(log_q, log_p) + (1 - gamma) * _kl(log_p, log_q)
    return (per_token * mask).sum(-1).mean()


@torch.no_grad()
def teacher_confidence(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(sum of the teacher's top-1 probability over the non-padding positions, their count):
    accumulate over batches, divide for CAKLD's γ."""
    top1 = F.softmax(logits.float(), dim=-1).amax(-1)
    mask = labels != IGNORE_INDEX
    return float(top1[mask].sum()), int(mask.sum())
