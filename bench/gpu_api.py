"""Prefill and decode speed of the ``vulkan`` build on this machine's WebGPU adapter, beside the
llvm build of the same MLC folder, in the same run.

    python bench/gpu_api.py [--model smollm2-135m] [--schemes q4f16_1,w4a16g128asym]
                            [--prompt-tokens 64] [--new-tokens 16] [--build-dir DIR]

Here the adapter is Mesa's lavapipe, a Vulkan driver that runs on the CPU: the numbers say how
the WGSL kernels and lowbit's WebGPU runtime behave, not what a GPU would do (for information
only). Each scheme is converted and compiled for both targets into ``$LOWBIT_CACHE/bench/gpu_api/build-VERSION/``
(or ``--build-dir``; reused by the code version that built it, ``provenance.build_version``). Each engine gets a warm-up (pipeline creation), then
times a prefill of the prompt and ``--new-tokens`` greedy decode steps. Writes
``bench/results/gpu_api.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from provenance import build_dir, record

RESULTS = Path(__file__).parent / "results" / "gpu_api.json"


def build(model: str, scheme: str, root: Path) -> tuple[Path, dict[str, Path]]:
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.models import resolve_model

    mlc = root / scheme / "mlc"
    if not (mlc / "mlc-chat-config.json").is_file():
        convert(ConvertArgs(str(resolve_model(model)), scheme, mlc, progress=False))
    libs = {}
    for target in ("llvm", "vulkan"):
        libs[target] = root / scheme / f"{target}.so"
        if not libs[target].is_file():
            compile_model(CompileArgs(mlc, target, libs[target]), progress=False)
    return mlc, libs


def time_engine(mlc: Path, lib: Path, prompt: list[int], new_tokens: int) -> dict:
    """Prefill tok/s of ``prompt`` and decode tok/s over ``new_tokens`` greedy steps (after a
    warm-up run of both)."""
    import numpy as np

    from lowbit.runtime.engine import Engine

    engine = Engine(mlc, lib, check_md5=False)
    result = {}
    for _ in range(2):  # the first run builds the pipelines; the second is timed
        seq = engine.add_sequence()
        start = time.perf_counter()
        logits = engine.prefill(seq, prompt)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            logits = engine.decode(seq, int(np.argmax(logits)))
        decode_s = time.perf_counter() - start
        engine.remove_sequence(seq)
        result = {"device": str(engine.device), "prefill_tok_s": round(len(prompt) / prefill_s, 2),
                  "decode_tok_s": round(new_tokens / decode_s, 2)}
    return result


def main() -> None:
    from lowbit.cache import atomic_file, cache_dir
    from lowbit.corpus import split_tokens
    from lowbit.models import load_tokenizer
    from lowbit.runtime.webgpu_runtime import load_runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--schemes", default="q4f16_1,w4a16g128asym")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--build-dir", type=Path, default=None)
    args = p.parse_args()
    adapter = load_runtime()
    root = build_dir(args.build_dir or cache_dir() / "bench" / "gpu_api")
    rows = []
    for scheme in args.schemes.split(","):
        mlc, libs = build(args.model, scheme, root)
        prompt = split_tokens(load_tokenizer(mlc), "test")[: args.prompt_tokens].tolist()
        for target, lib in libs.items():
            row = {"scheme": scheme, "target": target, **time_engine(mlc, lib, prompt, args.new_tokens)}
            print(json.dumps(row))
            rows.append(row)
    prov = record()
    out = {"model": args.model, "adapter": adapter, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "rows": rows, "provenance": prov}
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nadapter: {adapter}\n\n| scheme | target | device | prefill tok/s | decode tok/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['scheme']}` | `{r['target']}` | {r['device']} | {r['prefill_tok_s']} | {r['decode_tok_s']} |")


if __name__ == "__main__":
    main()
