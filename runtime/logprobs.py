"""Token log-probabilities, as OpenAI's ``logprobs`` report them.

A logprob is the model's own: the natural-log softmax of the raw logits, before sampling's bias,
penalties, grammar mask and temperature. Each token also carries its share of the output text,
so that the tokens of a choice, joined, equal its text: a token that ends inside a multi-byte
character has "" and the token completing it has the whole character; a token cut by a stop
string keeps only the part before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from lowbit.runtime.sampler import log_softmax


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    text: str  # this token's share of the text
    bytes: bytes  # the bytes the token stands for
    logprob: float | None  # None: a prompt's first token
    top: tuple[tuple[int, bytes, float], ...] = ()  # (token, bytes, logprob), most likely first


def token_logprob(logits: np.ndarray, token: int, text: str, top: int,
                  token_bytes: Callable[[int], bytes]) -> TokenLogprob:
    """``token``'s logprob under ``logits`` and the ``top`` most likely tokens there."""
    lp = log_softmax(np.asarray(logits, dtype=np.float32).reshape(-1))
    best: tuple[tuple[int, bytes, float], ...] = ()
    if top:
        ids = np.argpartition(-lp, top - 1)[:top]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        best = tuple((int(i), token_bytes(int(i)), float(lp[i])) for i in ids)
    return TokenLogprob(int(token), text, token_bytes(int(token)), float(lp[token]), best)


class LogprobTrack:
    """A choice's token logprobs, released as the text they belong to is emitted."""

    def __init__(self, top: int, token_bytes: Callable[[int], bytes]):
        self.top, self.token_bytes = top, token_bytes
        self._pending: deque[tuple[TokenLogprob, int, int]] = deque()  # (entry, start, end) in chars
        self._end = 0

    def add(self, logits: np.ndarray, token: int, piece: str) -> None:
        """Record ``token`` (sampled from ``logits``) whose text is ``piece``."""
        entry = token_logprob(logits, token, piece, self.top, self.token_bytes)
        self._pending.append((entry, self._end, self._end + len(piece)))
        self._end += len(piece)

    def release(self, emitted: int, final: bool) -> tuple[TokenLogprob, ...]:
        """The entries whose text lies within the first ``emitted`` characters; once ``final``,
        also the share of the token a stop string cut (the rest is dropped)."""
        out = []
        while self._pending and self._pending[0][2] <= emitted:
            out.append(self._pending.popleft()[0])
        if final and self._pending:
            entry, start, _ = self._pending[0]
            if start < emitted:
                out.append(replace(entry, text=entry.text[: emitted - start]))
            self._pending.clear()
        return tuple(out)
