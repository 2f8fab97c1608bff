"""Compile the bundled model for every target preset: wall time and library size per target.

    python bench/compile_targets.py [--model smollm2-135m] [--targets llvm,cuda,...]
                                    [--workdir /tmp/lowbit-compile-targets]

Converts the model once per scheme (``q4f16_1``; ``q4f32_1`` for the fp32 ``opencl`` preset, whose
PoCL/NVIDIA drivers have no fp16), then runs ``lowbit compile`` for each target in a fresh process
(so every row pays the same start-up). A target whose build tools are missing is recorded as
skipped with the install hint. Writes ``bench/results/compile_targets.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from provenance import record

from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.targets import PRESETS

RESULTS = Path(__file__).parent / "results" / "compile_targets.json"
SCHEME = {"opencl": "q4f32_1"}  # else q4f16_1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--targets", default=",".join(PRESETS))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lowbit-compile-targets"))
    args = ap.parse_args()
    rows = []
    for name in args.targets.split(","):
        preset = PRESETS[name]
        scheme = SCHEME.get(name, "q4f16_1")
        mlc = args.workdir / f"mlc-{scheme}"
        if not mlc.exists():
            convert(ConvertArgs(args.model, scheme, mlc, progress=False))
        row = {"target": name, "scheme": scheme, "device": preset.device, "format": preset.formats[0].what}
        if missing := preset.missing_tools():
            rows.append({**row, "skipped": "; ".join(missing)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        out = args.workdir / f"model-{name}{preset.formats[0].suffix}"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from lowbit.cli import main; main()", "compile", str(mlc), "--target", name,
                               "-o", str(out), "--overwrite"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            rows.append({**row, "error": (errors or proc.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append({**row, "seconds": round(seconds, 1), "library_bytes": out.stat().st_size})
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.write_text(json.dumps({"model": args.model, "machine": f"{platform.machine()}, "
                                   f"{len(os.sched_getaffinity(0))} cores",
                                   "results": rows, "provenance": record()}, indent=2) + "\n")
    print("\n| target | scheme | format | compile s | library MiB |\n|---|---|---|---|---|")
    for r in rows:
        if "seconds" in r:
            print(f"| {r['target']} | {r['scheme']} | {r['format']} | {r['seconds']} | {r['library_bytes'] / 2**20:.1f} |")
        else:
            print(f"| {r['target']} | {r['scheme']} | {r['format']} | {r.get('skipped') or r.get('error')} | |")


if __name__ == "__main__":
    main()
