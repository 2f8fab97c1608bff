"""Zero-shot accuracy table: the bundled model at FP and quantized, one cached row per task.

    OMP_NUM_THREADS=1 nice python bench/zeroshot.py            # --limit 500, the README table
    python bench/zeroshot.py --methods omniquant --grid w3g128 --setting preset=small

Cells and fused checkpoints are those of ``bench/quality.py`` (``$LOWBIT_CACHE/bench``), so a
method calibrated for the perplexity table is reused here. Each (cell, task) result is a row of
``bench/results/zeroshot.json`` (model, method, w_bits, group_size, task, n, acc, acc_norm,
seconds); a row already there is skipped. ``bench/results/zeroshot.md`` is the README table.
The task data keep their own licences (named in every row).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from quality import Cell, parse_grid, parse_settings

from lowbit.cache import atomic_file, cache_dir
from lowbit.calib import CalibrateArgs, calibrate
from lowbit.evaluate.zeroshot import DEFAULT_TASKS, TasksArgs, iter_task_results

RESULTS = Path(__file__).parent / "results"
KEY_FIELDS = ("model", "method", "w_bits", "group_size", "sym", "settings", "task", "limit")
TASK_ORDER = DEFAULT_TASKS.split(",")


def checkpoint(cell: Cell, model: str) -> str:
    """The model to evaluate for ``cell``: the FP model or the bench's cached fused checkpoint."""
    if cell.method == "fp":
        return model
    target = cache_dir() / "bench" / f"{model}-{cell.tag}"
    if not (target / "quantization_config.json").exists():
        calibrate(CalibrateArgs(model, cell.method, cell.w_bits, cell.group_size, cell.sym,
                                target, overwrite=True, settings=dict(cell.settings)))
    return str(target)


def row_key(row: dict) -> tuple:
    return tuple(json.dumps(row[k], sort_keys=True) for k in KEY_FIELDS)


def cell_rows(cell: Cell, model: str, tasks: list[str], limit: int | None) -> Iterator[dict]:
    """One row per task, as each finishes."""
    args = TasksArgs(checkpoint(cell, model), ",".join(tasks), limit)
    for name, r in iter_task_results(args):
        print(f"{cell.tag} {name}: acc {r['acc']:.4f}  {r['seconds']:.0f} s", flush=True)
        yield {"model": model, "method": cell.method, "w_bits": cell.w_bits,
               "group_size": cell.group_size, "sym": cell.sym, "settings": dict(cell.settings),
               "task": name, "limit": limit, "n": r["n"], "acc": round(r["acc"], 4),
               "acc_norm": None if r["acc_norm"] is None else round(r["acc_norm"], 4),
               "acc_stderr": round(r["acc_stderr"], 4), "seconds": round(r["seconds"], 1),
               "split": r["split"], "license": r["license"]}


def markdown(rows: list[dict]) -> str:
    """One line per cell: acc per task (acc_norm where the harness reports it) and the average.

    The average is over the six tasks' headline metric (acc_norm where reported, else acc), the
    usual zero-shot table convention.
    """
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["method"], r["w_bits"], r["group_size"], r["sym"],
               json.dumps(r["settings"], sort_keys=True), r["limit"])
        cells.setdefault(key, {})[r["task"]] = r
    head = " | ".join(TASK_ORDER)
    lines = [f"| model | method | W | group | n/task | {head} | avg |",
             "|" + "---|" * (6 + len(TASK_ORDER))]
    for key in sorted(cells, key=lambda k: (k[1] != "fp", -k[2], k[3], k[1])):
        model, method, bits, group, _, _, limit = key
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
        lines.append(f"| {model} | {method} | {bits} | {g} | {','.join(map(str, n))} | "
                     f"{' | '.join(cols)} | {avg} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rtn", help="comma-separated calibration methods")
    ap.add_argument("--grid", default="fp,w4g128,w3g128,w2g128")
    ap.add_argument("--setting", action="append", default=[],
                    help="key=value for the method (as in bench/quality.py)")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=500, help="first N documents of each task")
    ap.add_argument("--results", type=Path, default=RESULTS / "zeroshot.json")
    args = ap.parse_args()

    tasks = args.tasks.split(",")
    rows = json.loads(args.results.read_text()) if args.results.exists() else []
    done = {row_key(r) for r in rows}
    for cell in parse_grid(args.grid, args.methods.split(","), parse_settings(args.setting)):
        probe = {"model": args.model, "method": cell.method, "w_bits": cell.w_bits,
                 "group_size": cell.group_size, "sym": cell.sym, "settings": dict(cell.settings),
                 "limit": args.limit}
        todo = [t for t in tasks if row_key({**probe, "task": t}) not in done]
        if not todo:
            print(f"[cached] {cell.tag}")
            continue
        for row in cell_rows(cell, args.model, todo, args.limit):
            rows.append(row)
            done.add(row_key(row))
            with atomic_file(args.results) as tmp:  # rewrite after every task
                tmp.write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    with atomic_file(args.results.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
