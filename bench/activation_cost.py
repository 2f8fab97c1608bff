"""What 8-bit decode activations cost: the compiled model's perplexity with fp, int8 and int8x2
decode activations, every position scored through one-token decode steps, as generation runs.

    python bench/activation_cost.py [--schemes q4f16_1,w4a16g128asym,w3a16g128asym] [--windows 16]

Each scheme is converted from the bundled model (RTN) and compiled once per activation kind into
``$LOWBIT_CACHE/bench/cpu_decode/build-VERSION/`` (or ``--build-dir``; the same folders and names as
``cpu_decode.py``'s ``SCHEME+int8`` / ``+int8x2`` builds, reused by the same code version), then scored on the first
``--windows`` windows of 512 tokens of the test split (``lowbit eval ppl MLC_DIR --model-lib LIB
--decode``). Rows go to ``bench/results/activation_cost.json``; :func:`markdown` is the README's
table, with each kind's change against fp activations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cpu_decode import build_scheme
from provenance import record

RESULTS = Path(__file__).parent / "results" / "activation_cost.json"
KINDS = ("fp", "int8", "int8x2")


def variant(scheme: str, kind: str) -> str:
    """The ``cpu_decode.py`` build name of ``scheme`` with ``kind`` decode activations."""
    return scheme if kind == "fp" else f"{scheme}+{kind}"


def markdown(rows: list[dict]) -> str:
    """One line per scheme: perplexity per activation kind and its change against fp."""
    by = {(r["scheme"], r["decode_activations"]): r for r in rows}
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    lines = ["| scheme (RTN from the bundled model) | fp activations | int8 decode | cost | int8x2 decode | cost |",
             "|---|---|---|---|---|---|"]
    for scheme in schemes:
        fp = by[scheme, "fp"]["ppl"]
        cells = [f"{fp:.4f}"]
        for kind in KINDS[1:]:
            ppl = by[scheme, kind]["ppl"]
            cells += [f"{ppl:.4f}", f"{100 * (ppl / fp - 1):+.3f}%"]
        lines.append(f"| `{scheme}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from lowbit.cache import atomic_file, cache_dir
    from lowbit.evaluate.run import evaluate_compiled_perplexity

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="q4f16_1,w4a16g128asym,w3a16g128asym")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--build-dir", type=Path, help="where the MLC folders and libraries go")
    args = ap.parse_args()
    root = args.build_dir or cache_dir() / "bench" / "cpu_decode"
    rows = []
    for scheme in args.schemes.split(","):
        for kind in KINDS:
            mlc, lib = build_scheme(args.model, variant(scheme, kind), root)
            start = time.perf_counter()
            result = evaluate_compiled_perplexity(mlc, lib, windows=args.windows, decode=True)
            rows.append({"model": args.model, "scheme": scheme, "decode_activations": kind,
                         "split": result["split"], "windows": args.windows, "seqlen": 512,
                         "ppl": result["ppl"], "seconds": round(time.perf_counter() - start, 1)})
            print(f"{scheme} {kind}: ppl {result['ppl']:.4f}", flush=True)
    prov = record()
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps([{**r, "provenance": prov} for r in rows], indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
