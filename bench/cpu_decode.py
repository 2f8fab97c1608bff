"""CPU prefill and decode speed: lowbit-compiled 4-bit schemes vs PyTorch eager fp32, same prompt.

    python bench/cpu_decode.py [--model smollm2-135m] [--schemes q4f16_1,w4a16g128asym]
                               [--prompt-tokens 128] [--new-tokens 32]

Converts and compiles each scheme into ``$LOWBIT_CACHE/bench/cpu_decode/`` (reused when present),
then times prefill of the same prompt and greedy decode in the same run. Writes a list of rows
(engine, scheme, threads, prompt_tokens, new_tokens, prefill_tok_s, decode_tok_s) to
``bench/results/cpu_decode.json`` and prints a markdown table. Each engine gets a warm-up run,
then the best of three; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "cpu_decode.json"


@dataclass
class Row:
    engine: str
    scheme: str
    threads: int
    prompt_tokens: int
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float


def prompt_ids(folder: Path, n: int) -> list[int]:
    from lowbit.corpus import split_tokens
    from lowbit.models import load_tokenizer

    return [int(t) for t in split_tokens(load_tokenizer(folder), "test", None)[:n]]


REPEATS = 3  # each engine: one warm-up run, then the best of REPEATS prefill and decode timings


def best_of(run) -> tuple[float, float]:
    """``run()`` returns (prefill seconds, decode seconds); best of :data:`REPEATS` after a warm-up."""
    run()
    times = [run() for _ in range(REPEATS)]
    return min(t[0] for t in times), min(t[1] for t in times)


def bench_torch(folder: Path, ids: list[int], new: int) -> Row:
    import torch

    from lowbit.models import load_torch_model

    model = load_torch_model(folder).float().eval()

    @torch.inference_mode()
    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True)
        t1 = time.perf_counter()
        past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        for _ in range(new):
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        return t1 - t0, time.perf_counter() - t1

    prefill, decode = best_of(run)
    return Row("pytorch-eager", "fp32", torch.get_num_threads(), len(ids), new,
               len(ids) / prefill, new / decode)


def build_scheme(model: str, scheme: str, root: Path) -> tuple[Path, Path]:
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert

    mlc, lib = root / f"{model}-{scheme}", root / f"{model}-{scheme}.so"
    if not mlc.exists():
        convert(ConvertArgs(model, scheme, mlc))
    if not lib.exists():
        compile_model(CompileArgs(mlc, "llvm", lib))
    return mlc, lib


def bench_lowbit(mlc: Path, lib: Path, scheme: str, ids: list[int], new: int) -> Row:
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc, lib, context_window=len(ids) + new + 16)

    def run() -> tuple[float, float]:
        if engine.has_sequence(0):
            engine.remove_sequence(0)
        engine.add_sequence(0)
        t0 = time.perf_counter()
        tok = int(np.argmax(engine.prefill(0, ids)))
        t1 = time.perf_counter()
        for _ in range(new):
            tok = int(np.argmax(engine.decode(0, tok)))
        return t1 - t0, time.perf_counter() - t1

    prefill, decode = best_of(run)
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    return Row("lowbit-llvm", scheme, threads, len(ids), new, len(ids) / prefill, new / decode)


def main() -> None:
    from lowbit.cache import atomic_file, cache_dir
    from lowbit.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="q4f16_1,q4f32_1,w4a16g128asym")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    folder = resolve_model(args.model)
    ids = prompt_ids(folder, args.prompt_tokens)
    root = cache_dir() / "bench" / "cpu_decode"
    rows = [bench_torch(folder, ids, args.new_tokens)]
    for scheme in args.schemes.split(","):
        mlc, lib = build_scheme(args.model, scheme, root)
        rows.append(bench_lowbit(mlc, lib, scheme, ids, args.new_tokens))
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    base = rows[0]
    print("| engine | scheme | threads | prefill tok/s | decode tok/s | decode vs torch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.engine} | {r.scheme} | {r.threads} | {r.prefill_tok_s:.1f} | "
              f"{r.decode_tok_s:.1f} | {r.decode_tok_s / base.decode_tok_s:.2f}× |")


if __name__ == "__main__":
    main()
