"""Next-token sampling on a logits vector, in NumPy.

Order (as mlc_llm and vLLM apply them): ``logit_bias`` is added; OpenAI's presence and frequency
penalties, over the tokens this sampler has generated, are subtracted
(``logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)``); HF's
repetition penalty over the whole context; a grammar's mask (disallowed tokens get -inf); then,
unless greedy, temperature, top-k, top-p and a draw from the renormalised distribution with the
sampler's own seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise LowbitError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LowbitError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LowbitError(f"top_k must be ≥ 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise LowbitError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise LowbitError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not -100 <= bias <= 100 for _, bias in self.logit_bias):
            raise LowbitError("logit_bias values must be in [-100, 100]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, seen: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL's penalty (as HF): a seen token's logit is divided by ``penalty`` if positive, else multiplied."""
    out = np.array(logits, dtype=np.float32, copy=True)
    ids = np.unique(np.fromiter(seen, dtype=np.int64))
    if penalty == 1.0 or ids.size == 0:
        return out
    picked = out[ids]
    out[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def apply_penalties(logits: np.ndarray, counts: dict[int, int], presence: float,
                    frequency: float) -> np.ndarray:
    """OpenAI's presence and frequency penalties; ``counts``: token → times generated so far."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if counts and (presence or frequency):
        ids = np.fromiter(counts.keys(), dtype=np.int64)
        n = np.fromiter(counts.values(), dtype=np.float32)
        out[ids] -= frequency * n + presence * (n > 0)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities (float64) of a logits vector."""
    z = logits.astype(np.float64) - np.max(logits)
    return z - np.log(np.exp(z).sum())


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the logits at least the ``k``-th largest (as HF: ties with it are kept;
    all True when ``k`` is 0 or ≥ the vocabulary)."""
    if k == 0 or k >= logits.size:
        return np.ones(logits.shape, dtype=bool)
    return logits >= np.partition(logits, logits.size - k)[logits.size - k]


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask of the smallest most-probable set whose total probability reaches ``p``."""
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]  # mass of the strictly more probable tokens
    keep = np.zeros(probs.shape, dtype=bool)
    keep[order[before < p]] = True
    keep[order[0]] = True
    return keep


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def sampling_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution a non-greedy draw samples from (float64, sums to 1)."""
    scaled = logits.astype(np.float64) / params.temperature
    scaled = np.where(top_k_mask(scaled, params.top_k), scaled, -np.inf)
    probs = softmax(scaled)
    if params.top_p < 1.0:
        probs = np.where(top_p_mask(probs, params.top_p), probs, 0.0)
        probs /= probs.sum()
    return probs


class Sampler:
    """Picks next tokens for one sequence; seeded, so a rerun with the same seed repeats itself.
    Counts the tokens it picks, for the presence and frequency penalties."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.counts: dict[int, int] = {}

    def adjusted(self, logits: np.ndarray, history: Iterable[int] = (),
                 allowed: np.ndarray | None = None) -> np.ndarray:
        """The logits after bias, penalties and the mask (``allowed``: boolean, per token)."""
        p = self.params
        logits = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        for token, bias in p.logit_bias:
            logits[token] += bias
        logits = apply_penalties(logits, self.counts, p.presence_penalty, p.frequency_penalty)
        if p.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, history, p.repetition_penalty)
        if allowed is not None:
            logits[~allowed] = -np.inf
        return logits

    def __call__(self, logits: np.ndarray, history: Iterable[int] = (),
                 allowed: np.ndarray | None = None) -> int:
        token = self._pick(self.adjusted(logits, history, allowed))
        self.counts[token] = self.counts.get(token, 0) + 1
        return token

    def _pick(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(logits))
        probs = sampling_probs(logits, self.params)
        # inverse-CDF draw: one uniform per token keeps the stream reproducible across NumPy versions
        u = self.rng.random()
        last = int(np.flatnonzero(probs)[-1])  # rounding may leave the total a hair below u
        return min(int(np.searchsorted(np.cumsum(probs), u, side="right")), last)
