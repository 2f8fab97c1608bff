"""Perplexity over non-overlapping token windows, the GPTQ / OmniQuant protocol.

Each window is scored on its own (no context carried over); the loss is the mean next-token
cross-entropy over all windows' predicted positions (seqlen − 1 per window), and the perplexity
is its exponential.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

# windows [B, T] int64 → logits [B, T, V]
LogitsFn = Callable[[np.ndarray], np.ndarray | torch.Tensor]


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens scored
    windows: int
    seqlen: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def window_nll(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window: logits [B, T, V], window [B, T] → [B]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = window[:, 1:].unsqueeze(-1)
    return -logp.gather(-1, target).squeeze(-1).sum(dim=-1)


def perplexity(
    logits_fn: LogitsFn, windows: np.ndarray, batch_size: int = 4, progress: bool = True
) -> PerplexityResult:
    """Perplexity of ``logits_fn`` over ``windows`` [N, T]."""
    n, seqlen = windows.shape
    total = 0.0
    start = time.perf_counter()
    bar = tqdm(total=n, desc="perplexity", unit="win", disable=not progress)
    for i in range(0, n, batch_size):
        batch = windows[i : i + batch_size]
        logits = torch.as_tensor(logits_fn(batch))
        total += window_nll(logits, torch.as_tensor(batch)).double().sum().item()
        bar.update(len(batch))
        bar.set_postfix(ppl=f"{math.exp(total / ((i + len(batch)) * (seqlen - 1))):.3f}")
    bar.close()
    tokens = n * (seqlen - 1)
    nll = total / tokens
    return PerplexityResult(math.exp(nll), nll, tokens, n, seqlen, time.perf_counter() - start)


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Logits of a PyTorch causal LM for a batch of token windows."""

    @torch.inference_mode()
    def run(batch: np.ndarray) -> torch.Tensor:
        return model(torch.as_tensor(batch)).logits

    return run
