"""Zero-shot accuracy table: the bundled model at FP and quantized, one cached row per task.

    OMP_NUM_THREADS=1 nice python bench/zeroshot.py            # --limit 500, the README table
    python bench/zeroshot.py --methods omniquant --grid w3g128 --setting preset=small

Cells and fused checkpoints are those of ``bench/quality.py`` (``$LOWBIT_CACHE/bench``), so a
method calibrated for the perplexity table is reused here. Each (cell, task) result is a row of
``bench/results/zeroshot.json`` (model, method, w_bits, a_bits, group_size, task, n, acc,
acc_norm, seconds, and the provenance quality.py records); a row already there is skipped
(``--list-stale`` / ``--rerun-stale`` as in quality.py). ``bench/results/zeroshot.md`` is the
README table. The task data keep their own licences (named in every row).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from provenance import code_version, record
from quality import (
    Cell,
    add_grid_arguments,
    cell_args,
    cell_of,
    checkpoint,
    parse_grid,
    parse_settings,
    stale_reason,
)

from lowbit.cache import atomic_file, cache_dir
from lowbit.evaluate.zeroshot import DEFAULT_TASKS, TasksArgs, iter_task_results

RESULTS = Path(__file__).parent / "results"
KEY_FIELDS = ("model", "method", "w_bits", "a_bits", "group_size", "sym", "settings", "task",
              "limit", "codebook")
TASK_ORDER = DEFAULT_TASKS.split(",")


def row_key(row: dict) -> tuple:
    # rows from before a_bits was recorded were all weight-only
    return tuple(json.dumps(row.get(k, 16 if k == "a_bits" else None), sort_keys=True)
                 for k in KEY_FIELDS)


def row_command(row: dict) -> list[str]:
    """The command that measures ``row`` alone (recorded, or derived from the row's key)."""
    if "command" in row:
        return list(row["command"])
    return ["python", "bench/zeroshot.py", *cell_args(cell_of(row), row["model"]),
            "--tasks", row["task"], "--limit", str(row["limit"] or 0)]


def cell_rows(cell: Cell, model: str, tasks: list[str], limit: int | None,
              root: Path) -> Iterator[dict]:
    """One row per task, as each finishes."""
    args = TasksArgs(checkpoint(cell, model, root)[0], ",".join(tasks), limit)
    for name, r in iter_task_results(args):
        print(f"{cell.tag} {name}: acc {r['acc']:.4f}  {r['seconds']:.0f} s", flush=True)
        key = {"model": model, "method": cell.method, "w_bits": cell.w_bits,
               "a_bits": cell.a_bits, "group_size": cell.group_size, "sym": cell.sym,
               "settings": dict(cell.settings), "task": name, "limit": limit,
               "codebook": cell.codebook}
        yield {**key, "n": r["n"], "acc": round(r["acc"], 4),
               "acc_norm": None if r["acc_norm"] is None else round(r["acc_norm"], 4),
               "acc_stderr": round(r["acc_stderr"], 4), "seconds": round(r["seconds"], 1),
               "split": r["split"], "license": r["license"],
               "code_version": code_version(cell.method), "command": row_command(key),
               "provenance": record()}


def markdown(rows: list[dict]) -> str:
    """One line per cell: acc per task (acc_norm where the harness reports it) and the average.

    The average is over the six tasks' headline metric (acc_norm where reported, else acc), the
    usual zero-shot table convention.
    """
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["method"], r["w_bits"], r.get("a_bits", 16), r["group_size"],
               r["sym"], json.dumps(r["settings"], sort_keys=True), r["limit"], r.get("codebook") or "")
        cells.setdefault(key, {})[r["task"]] = r
    head = " | ".join(TASK_ORDER)
    lines = [f"| model | method | W | A | group | n/task | {head} | avg |",
             "|" + "---|" * (7 + len(TASK_ORDER))]
    for key in sorted(cells, key=lambda k: (k[1] != "fp", -k[3], -k[2], k[4], k[8], k[1])):
        model, method, bits, a_bits, group, _, _, limit, codebook = key
        by_task = cells[key]
        vals, cols = [], []
        for t in TASK_ORDER:
            r = by_task.get(t)
            if r is None:
                cols.append("–")
                continue
            head_metric = r["acc_norm"] if r["acc_norm"] is not None else r["acc"]
            vals.append(head_metric)
            cols.append(f"{100 * r['acc']:.1f}" + (
                f" / {100 * r['acc_norm']:.1f}" if r["acc_norm"] is not None else ""))
        avg = f"{100 * sum(vals) / len(vals):.1f}" if len(vals) == len(TASK_ORDER) else "–"
        g = "–" if method == "fp" else ("channel" if group == -1 else group)
        n = sorted({r["n"] for r in by_task.values()})
        w = f"{bits} ({codebook})" if codebook else bits
        lines.append(f"| {model} | {method} | {w} | {a_bits} | {g} | {','.join(map(str, n))} | "
                     f"{' | '.join(cols)} | {avg} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_grid_arguments(ap, "fp,w4g128,w3g128,w2g128", RESULTS / "zeroshot.json")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=500,
                    help="first N documents of each task (0: all)")
    return ap


def main() -> None:
    args = parser().parse_args()

    tasks, limit = args.tasks.split(","), args.limit or None
    rows = json.loads(args.results.read_text()) if args.results.exists() else []
    if args.list_stale:
        list_stale(rows)
        return
    root = args.checkpoints or cache_dir() / "bench"
    done = {row_key(r): r for r in rows}
    for cell in parse_grid(args.grid, args.methods.split(","), parse_settings(args.setting)):
        probe = {"model": args.model, "method": cell.method, "w_bits": cell.w_bits,
                 "a_bits": cell.a_bits, "group_size": cell.group_size, "sym": cell.sym,
                 "settings": dict(cell.settings), "limit": limit, "codebook": cell.codebook}
        todo = []
        for task in tasks:
            old = done.get(row_key({**probe, "task": task}))
            reason = old and stale_reason(old)
            if old is None or (reason and args.rerun_stale):
                todo.append(task)
            elif reason:
                print(f"[cached] {cell.tag} {task}  STALE: {reason}")
        if not todo:
            print(f"[cached] {cell.tag}")
            continue
        for row in cell_rows(cell, args.model, todo, limit, root):
            old = done.get(row_key(row))
            if old is not None:  # a re-measured stale row keeps its place
                rows[rows.index(old)] = row
            else:
                rows.append(row)
            done[row_key(row)] = row
            with atomic_file(args.results) as tmp:  # rewrite after every task
                tmp.write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    with atomic_file(args.results.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    print(table)


def list_stale(rows: list[dict]) -> None:
    """Print each stale row with why and the command that re-measures it."""
    stale = [(r, reason) for r in rows if (reason := stale_reason(r))]
    for r, reason in stale:
        print(f"{cell_of(r).tag} {r['task']}: {reason}\n"
              f"    {' '.join(row_command(r))} --rerun-stale")
    print(f"{len(stale)} of {len(rows)} rows stale")


if __name__ == "__main__":
    main()
