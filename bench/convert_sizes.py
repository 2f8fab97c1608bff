"""Convert the bundled model to every MLC scheme; record size on disk and bits per parameter.

    python bench/convert_sizes.py [--model smollm2-135m] [--workdir /tmp/lowbit-convert-sizes]

Writes bench/results/convert_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from provenance import record

from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.schemes import SCHEMES


def folder_bytes(folder: Path) -> dict[str, int]:
    files = [p for p in folder.iterdir() if p.is_file()]
    shards = sum(p.stat().st_size for p in files if p.name.startswith("params_shard_"))
    return {"weights_bytes": shards, "folder_bytes": sum(p.stat().st_size for p in files)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lowbit-convert-sizes"))
    args = ap.parse_args()
    rows = []
    for name, scheme in SCHEMES.items():
        out = args.workdir / name
        start = time.perf_counter()
        result = convert(ConvertArgs(args.model, name, out, overwrite=True, progress=False))
        rows.append({
            "scheme": name,
            "seconds": round(time.perf_counter() - start, 2),
            "bits_per_param": round(result.bits_per_param, 4),
            "linear_bits_per_weight": scheme.bits_per_weight(),
            **folder_bytes(out),
        })
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(out)
    dest = Path(__file__).parent / "results" / "convert_sizes.json"
    dest.write_text(json.dumps({"model": args.model, "results": rows, "provenance": record()},
                                indent=2) + "\n")


if __name__ == "__main__":
    main()
