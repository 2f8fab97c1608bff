"""``lowbit bench MLC_DIR --model-lib LIB``: prefill and decode speed against the memory limit.

Decode reads every weight once per token (the tied embedding as the lm_head), so its ceiling is
the machine's read bandwidth divided by the weights' bytes. Both are measured in the same run:
the bandwidth with NumPy max-reductions over a buffer larger than the last-level cache, one
thread per compiled-kernel thread. ``--profile`` adds the decode step's time per operator kind,
timed around every call the VM makes.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
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
    kv_bytes: int = 0  # KV cache read per decode token, at the decode steps' mean context

    @property
    def decode_gb_s(self) -> float:
        return self.decode_tok_s * (self.weight_bytes + self.kv_bytes) / 1e9

    @property
    def limit_tok_s(self) -> float:
        return self.read_gb_s * 1e9 / (self.weight_bytes + self.kv_bytes)

    def table(self) -> str:
        return "\n".join([
            f"threads {self.threads}, prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens",
            f"prefill  {self.prefill_tok_s:8.1f} tok/s",
            f"decode   {self.decode_tok_s:8.1f} tok/s  ({self.weight_bytes / 1e6:.1f} MB of weights + "
            f"{self.kv_bytes / 1e6:.1f} MB of KV cache per token: {self.decode_gb_s:.1f} GB/s)",
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


def kv_bytes(config: dict, kv_dtype: str, context: float) -> int:
    """Bytes of keys and values one decode step reads at ``context`` tokens: every layer's, each
    position once (``config``: the library metadata's model config)."""
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
    return int(per_token * np.dtype(kv_dtype).itemsize * context)


def best_of(run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """``run()`` returns (prefill seconds, decode seconds): the fastest of each over
    :data:`REPEATS` runs after a warm-up."""
    run()
    times = [run() for _ in range(REPEATS)]
    return min(t[0] for t in times), min(t[1] for t in times)


def prompt_ids(tokenizer, n: int) -> list[int]:
    """The first ``n`` tokens of the corpus's test split (what ``eval ppl`` scores), from any
    tokenizer with ``encode(text, add_special_tokens=False)``."""
    from lowbit.corpus import join_documents, split_documents, wiki_documents

    text = join_documents(split_documents(wiki_documents(), "test"))
    ids: list[int] = []
    chars = 8 * n
    while len(ids) < n and chars < 64 * len(text):
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        chars *= 2
    return ids[:n]


def sequence_run(engine, prompt: list[int], new_tokens: int) -> Callable[[], tuple[float, float]]:
    """One timed run of one sequence, (prefill seconds, decode seconds): the prompt, then
    ``new_tokens`` greedy steps."""

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

    return run


def measure(engine, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one sequence, the best of :func:`best_of`."""
    prefill, decode = best_of(sequence_run(engine, prompt, new_tokens))
    return len(prompt) / prefill, new_tokens / decode


def bench(mlc_dir: Path, model_lib: Path, prompt_tokens: int, new_tokens: int,
          profile: bool = False) -> tuple[Speed, Profile | None]:
    """Measure the compiled model and the machine's read bandwidth, one after the other, then
    (``profile``) a decode step per operator kind over ``new_tokens`` steps."""
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc_dir, model_lib, context_window=prompt_tokens + new_tokens + 1)
    prompt = prompt_ids(engine.tokenizer, prompt_tokens)
    prefill, decode = measure(engine, prompt, new_tokens)
    md = engine.metadata
    kv = kv_bytes(md.config, md.kv_dtype, len(prompt) + new_tokens / 2) if md else 0
    speed = Speed(engine.threads, len(prompt), new_tokens, prefill, decode, weight_bytes(mlc_dir),
                  read_bandwidth(engine.threads), kv)
    return speed, profile_decode(engine, prompt, new_tokens) if profile else None


@dataclass(frozen=True)
class OpTime:
    kind: str  # a kernel or VM builtin, relax's numbering removed (q_gemv_int83 → q_gemv_int8)
    calls: float  # per decode token
    ms: float  # per decode token, the timing's own cost per call taken off


_DTYPE = re.compile(r"((?:u?int|b?float)(?:8|16|32|64))")


def op_kind(name: str) -> str:
    """``name`` without the numbers relax appends to repeated and fused functions (dtype names
    such as ``int8`` kept)."""
    parts = _DTYPE.split(name)
    return "".join(p if i % 2 else re.sub(r"\d+", "", p) for i, p in enumerate(parts))


@dataclass(frozen=True)
class Profile:
    step_ms: float  # one decode step (or one prefill), without instrumentation
    ops: list[OpTime]  # largest first; their ms add up to step_ms
    timing_us: float  # what timing one call costs, taken off each call's time
    instrumented_ms: float  # the calls' sum before scaling to step_ms
    unit: str = "decode step"  # what step_ms times: "decode step" or "prefill of N tokens"

    def table(self) -> str:
        lines = [f"{self.unit} {self.step_ms:.2f} ms by operator kind: each VM call timed (less the "
                 f"{self.timing_us:.1f} µs timing one call costs; {self.instrumented_ms:.2f} ms in all), "
                 "scaled to the plain run",
                 f"{'ms':>9} {'share':>6} {'calls':>6}  operator"]
        lines += [f"{op.ms:9.3f} {op.ms / self.step_ms:6.1%} {op.calls:6.0f}  {op.kind}"
                  for op in self.ops if op.ms >= 0.0005 * self.step_ms]
        return "\n".join(lines)

    def ms_of(self, match: Callable[[str], bool]) -> float:
        """The ms of the kinds ``match`` accepts."""
        return sum(op.ms for op in self.ops if match(op.kind))

    def to_dict(self) -> dict:
        return {"step_ms": self.step_ms, "timing_us": self.timing_us, "unit": self.unit,
                "instrumented_ms": self.instrumented_ms, "ops": [asdict(op) for op in self.ops]}

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        """The inverse of :meth:`to_dict` (a profile read back from a bench JSON)."""
        return cls(d["step_ms"], [OpTime(**op) for op in d["ops"]], d["timing_us"], d["instrumented_ms"],
                   d.get("unit", "decode step"))


def _profile(engine, run: Callable[[], None], units: int, unit: str) -> Profile:
    """:func:`profile_decode`'s method over ``run`` (``units`` repetitions of ``unit``)."""
    t0 = time.perf_counter()
    run()
    unit_ms = (time.perf_counter() - t0) * 1e3 / units
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def instrument(_func, name: str, before_run: bool, _ret, *_args) -> int:
        if before_run:
            started.append(time.perf_counter())
        else:
            kind = op_kind(name)
            seconds[kind] += time.perf_counter() - started.pop()
            calls[kind] += 1
        return 0  # VMInstrumentReturnKind.NO_OP

    engine.vm.set_instrument(instrument)
    try:
        run()
    finally:
        engine.vm.set_instrument(None)
    timing = min(seconds[k] / calls[k] for k in seconds)
    net = {k: max(0.0, seconds[k] - timing * calls[k]) * 1e3 / units for k in seconds}
    total = sum(net.values()) or 1.0
    ops = [OpTime(k, calls[k] / units, net[k] * unit_ms / total) for k in seconds]
    return Profile(unit_ms, sorted(ops, key=lambda op: -op.ms), timing * 1e6, total, unit)


def profile_decode(engine, prompt: list[int], steps: int) -> Profile:
    """A decode step's time, plain and per operator kind, over ``steps`` greedy steps after
    ``prompt`` (the same steps twice: plain, then instrumented). Each VM call is timed from the
    VM's instrument hook, whose own cost lands inside each timed call; the cheapest kind's time
    per call (VM builtins that do next to nothing) estimates it, and it is taken off every call.
    The hook's Python still slows the kernels around it, so the kinds' times are scaled to add up
    to the plain step: shares are what the profile measures, not absolute costs."""
    if engine.has_sequence(0):
        engine.remove_sequence(0)
    engine.add_sequence(0)
    first = int(np.argmax(engine.prefill(0, prompt)))

    def decode_steps() -> None:
        engine.rewind(0, len(prompt))
        token = first
        for _ in range(steps):
            token = int(np.argmax(engine.decode(0, token)))

    return _profile(engine, decode_steps, steps, "decode step")


def profile_prefill(engine, prompt: list[int]) -> Profile:
    """The prefill of ``prompt`` into a fresh sequence, plain and per operator kind (twice, as
    :func:`profile_decode`)."""

    def prefill() -> None:
        if engine.has_sequence(0):
            engine.remove_sequence(0)
        engine.add_sequence(0)
        engine.prefill(0, prompt)

    return _profile(engine, prefill, 1, f"prefill of {len(prompt)} tokens")
