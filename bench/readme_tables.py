"""The README's result tables, generated from ``bench/results/*.json``.

    python bench/readme_tables.py            # rewrite the tables in README.md
    python bench/readme_tables.py --check    # exit 1 (with a diff) if any table is out of date

A table follows a ``<!-- table:NAME -->`` line and runs to the next blank line; NAME is a key of
:data:`TABLES`. ``tests/test_bench_tables.py`` runs the check, and also checks the zero-shot
sentences' numbers against :func:`zeroshot_change` / :func:`zeroshot_average`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path

import activation_cost
import cpu_decode
import quality
import zeroshot

BENCH = Path(__file__).parent
README = BENCH.parent / "README.md"
TABLES: dict[str, tuple[str, Callable[[list[dict]], str]]] = {
    "quality": ("quality.json", quality.markdown),
    "zeroshot": ("zeroshot.json", zeroshot.markdown),
    "cpu_decode": ("cpu_decode.json", cpu_decode.markdown),
    "cpu_batch_decode": ("cpu_batch_decode.json", cpu_decode.batch_markdown),
    "cpu_long_context": ("cpu_long_context.json", cpu_decode.context_markdown),
    "activation_cost": ("activation_cost.json", activation_cost.markdown),
}
MARKER = re.compile(r"^<!-- table:(\w+) -->\n", re.M)


def generated(name: str, results: Path) -> str:
    """Table ``name`` as the JSON rows in ``results`` give it."""
    file, render = TABLES[name]
    return render(json.loads((results / file).read_text()))


def update(readme: str, results: Path) -> str:
    """``readme`` with every marked table replaced by its generated version."""
    out, pos = [], 0
    for m in MARKER.finditer(readme):
        if m.group(1) not in TABLES:
            raise SystemExit(f"README names an unknown table {m.group(1)!r}")
        end = readme.find("\n\n", m.end())
        end = len(readme) if end == -1 else end + 1
        out += [readme[pos:m.end()], generated(m.group(1), results)]
        pos = end
    return "".join(out) + readme[pos:]


def headline(row: dict) -> float:
    """A zero-shot row's headline metric in points: acc_norm where reported, else acc."""
    return 100 * (row["acc_norm"] if row["acc_norm"] is not None else row["acc"])


def zeroshot_rows(rows: list[dict], method: str, w_bits: int, group_size: int,
                  settings: dict | None = None, codebook: str | None = None) -> dict[str, dict]:
    """A weight-only cell's rows by task (default: no settings, the integer grid)."""
    return {r["task"]: r for r in rows if r["method"] == method and r["w_bits"] == w_bits
            and r["group_size"] == group_size and r["settings"] == (settings or {})
            and r.get("codebook") == codebook and r.get("a_bits", 16) == 16}


Cell = tuple  # (method, w_bits, group_size[, settings[, codebook]]): zeroshot_rows's arguments


def zeroshot_change(rows: list[dict], cell: Cell, tasks: list[str]) -> list[float]:
    """Points from FP to ``cell`` (method, bits, group) on ``tasks``, acc and acc_norm each."""
    fp, q = zeroshot_rows(rows, "fp", 16, -1), zeroshot_rows(rows, *cell)
    return [round(100 * (q[t][m] - fp[t][m]), 1) for t in tasks for m in ("acc", "acc_norm")
            if fp[t][m] is not None]


def zeroshot_average(rows: list[dict], cell: Cell) -> float:
    """The table's avg column for ``cell``: mean headline metric over the six tasks."""
    by_task = zeroshot_rows(rows, *cell)
    tasks = zeroshot.TASK_ORDER
    return round(sum(headline(by_task[t]) for t in tasks) / len(tasks), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    args = ap.parse_args()
    text = args.readme.read_text()
    new = update(text, args.results)
    if args.check:
        if new != text:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "README.md",
                                        "from the JSON", lineterm="")
            raise SystemExit("\n".join(diff))
        return
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
