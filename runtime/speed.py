"""``lowbit bench MLC_DIR --model-lib LIB``: prefill and decode speed against the memory limit.

Decode reads every weight once per token (the tied embedding as the lm_head), so its ceiling is
the machine's read bandwidth divided by the weights' bytes. Both are measured in the same run:
the bandwidth with NumPy max-reductions over a buffer larger than the last-level cache, one
thread per compiled-kernel thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lowbit.artifact import read_tensor_cache_index

REPEATS = 3  # timed runs after one warm-up; the best is kept
BANDWIDTH_MIB = 512  # read-bandwidth buffer: larger than any last-level cache here


@dataclass(frozen=True)
class Speed:
    threads: int
    prompt_tokens: int
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    weight_bytes: int  # read once per decode token
    read_gb_s: float  # measured in the same run

    @property
    def decode_gb_s(self) -> float:
        return self.decode_tok_s * self.weight_bytes / 1e9

    @property
    def limit_tok_s(self) -> float:
        return self.read_gb_s * 1e9 / self.weight_bytes

    def table(self) -> str:
        return "\n".join([
            f"threads {self.threads}, prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens",
            f"prefill  {self.prefill_tok_s:8.1f} tok/s",
            f"decode   {self.decode_tok_s:8.1f} tok/s  ({self.weight_bytes / 1e6:.1f} MB of weights per token: "
            f"{self.decode_gb_s:.1f} GB/s)",
            f"limit    {self.limit_tok_s:8.1f} tok/s  (read bandwidth {self.read_gb_s:.1f} GB/s; decode reaches "
            f"{self.decode_tok_s / self.limit_tok_s:.0%})",
        ])

    def to_dict(self) -> dict:
        return {**asdict(self), "decode_gb_s": self.decode_gb_s, "limit_tok_s": self.limit_tok_s}


def read_bandwidth(threads: int, mib: int = BANDWIDTH_MIB) -> float:
    """GB/s of max-reductions over ``mib`` MiB split across ``threads`` threads (NumPy releases
    the GIL in them); best of five after a warm-up."""
    buf = np.ones(mib * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(buf, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(6):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))
            best = max(best, buf.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def weight_bytes(mlc_dir: Path) -> int:
    """Bytes of every weight of an MLC folder."""
    return sum(rec.nbytes for rec in read_tensor_cache_index(mlc_dir).records.values())


def best_of(run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """``run()`` returns (prefill seconds, decode seconds): the fastest of each over
    :data:`REPEATS` runs after a warm-up."""
    run()
    times = [run() for _ in range(REPEATS)]
    return min(t[0] for t in times), min(t[1] for t in times)


def prompt_ids(engine, n: int) -> list[int]:
    """The first ``n`` tokens of the corpus's test split (what ``eval ppl`` scores)."""
    from lowbit.corpus import join_documents, split_documents, wiki_documents

    text = join_documents(split_documents(wiki_documents(), "test"))
    ids: list[int] = []
    chars = 8 * n
    while len(ids) < n and chars < 64 * len(text):
        ids = engine.tokenizer.encode(text[:chars], add_special_tokens=False)
        chars *= 2
    return ids[:n]


def measure(engine, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one sequence: the prompt, then greedy steps."""

    def run() -> tuple[float, float]:
        if engine.has_sequence(0):
            engine.remove_sequence(0)
        engine.add_sequence(0)
        t0 = time.perf_counter()
        token = int(np.argmax(engine.prefill(0, prompt)))
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(engine.decode(0, token)))
        return t1 - t0, time.perf_counter() - t1

    prefill, decode = best_of(run)
    return len(prompt) / prefill, new_tokens / decode


def bench(mlc_dir: Path, model_lib: Path, prompt_tokens: int, new_tokens: int) -> Speed:
    """Measure the compiled model and the machine's read bandwidth, one after the other."""
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc_dir, model_lib, context_window=prompt_tokens + new_tokens + 1)
    prompt = prompt_ids(engine, prompt_tokens)
    prefill, decode = measure(engine, prompt, new_tokens)
    return Speed(engine.threads, len(prompt), new_tokens, prefill, decode, weight_bytes(mlc_dir),
                 read_bandwidth(engine.threads))
