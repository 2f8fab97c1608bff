"""Perplexity table: the bundled model at FP and quantized, one cached cell per setting.

    python bench/quality.py                       # the foundation grid (FP + RTN)
    python bench/quality.py --methods gptq,omniquant --grid w3g128,w2g128 --setting preset=small

Each finished cell is a row of ``bench/results/quality.json``; a cell already there is skipped,
so later methods add rows without re-running old ones. ``bench/results/quality.md`` is the
table the README shows. Fused checkpoints are kept under ``$LOWBIT_CACHE/bench``, keyed by the
code version of their method (:func:`provenance.code_version`), so a checkpoint made by older
code is rebuilt, not reused. Every row records its code version, the command that reproduces it
and :func:`provenance.record` (commit, package versions, argv); ``--list-stale`` names the rows
whose method code has changed since (or that predate provenance), ``--rerun-stale`` re-measures
the stale rows of the grid given.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from provenance import code_version, record, same_code

from lowbit.cache import atomic_file, cache_dir
from lowbit.calib import CalibrateArgs, calibrate
from lowbit.evaluate.run import evaluate_perplexity

RESULTS = Path(__file__).parent / "results"
DEFAULT_GRID = "fp,w4g64,w4g128,w3g64,w3g128,w2g64,w2g128,w4g128sym,w4pc"
KEY_FIELDS = ("model", "method", "w_bits", "a_bits", "group_size", "sym", "split", "seqlen",
              "windows", "settings", "codebook")  # rows from before codebooks: codebook None


@dataclass(frozen=True)
class Cell:
    method: str  # "fp" for the unquantized model
    w_bits: int = 16
    group_size: int = -1
    sym: bool = False
    settings: dict = field(default_factory=dict, hash=False)
    a_bits: int = 16
    codebook: str | None = None  # "nf3": BitDistiller's levels instead of a uniform grid

    @property
    def tag(self) -> str:
        if self.method == "fp":
            return "fp"
        extra = "".join(f"-{k}{v}" for k, v in sorted(self.settings.items()))
        return f"{self.method}-{grid_item(self)}{extra}"


def parse_grid(grid: str, methods: list[str], settings: dict) -> list[Cell]:
    cells = []
    for item in grid.split(","):
        if item == "fp":
            cells.append(Cell("fp"))
            continue
        if m := re.fullmatch(r"nf3g(\d+)", item):
            cells += [Cell(meth, 3, int(m[1]), False, settings, codebook="nf3") for meth in methods]
            continue
        m = re.fullmatch(r"w(\d)(?:a(\d))?(?:g(\d+)|pc)(sym)?", item)
        if not m:
            raise SystemExit(f"bad grid item {item!r} (e.g. w4g128, w3g64sym, w4pc, w4a4pc, "
                             "nf3g128, fp)")
        bits, group, sym = int(m[1]), int(m[3]) if m[3] else -1, bool(m[4])
        a_bits = int(m[2]) if m[2] else 16
        cells += [Cell(meth, bits, group, sym, settings, a_bits) for meth in methods]
    return cells


def parse_settings(items: list[str]) -> dict:
    """``["preset=small", "let=1", "alpha=0.75"]`` → ``{"preset": "small", "let": 1,
    "alpha": 0.75}``."""
    settings = {}
    for kv in items:
        k, _, v = kv.partition("=")
        try:
            settings[k] = int(v) if v.isdigit() else float(v)
        except ValueError:
            settings[k] = v
    return settings


def row_key(row: dict) -> tuple:
    return tuple(json.dumps(row.get(k), sort_keys=True) for k in KEY_FIELDS)


def cell_key(cell: Cell, model: str, split: str, seqlen: int, windows: int) -> dict:
    """The fields (:data:`KEY_FIELDS`) that identify a cell's row."""
    return {"model": model, "method": cell.method, "w_bits": cell.w_bits, "a_bits": cell.a_bits,
            "group_size": cell.group_size, "sym": cell.sym, "split": split, "seqlen": seqlen,
            "windows": windows, "settings": dict(cell.settings), "codebook": cell.codebook}


def cell_of(row: dict) -> Cell:
    """The cell a row (of this table or the zero-shot one) was measured for."""
    return Cell(row["method"], row["w_bits"], row["group_size"], row["sym"],
                dict(row["settings"]), row.get("a_bits", 16), row.get("codebook"))


def grid_item(cell: Cell) -> str:
    """``cell`` as a ``--grid`` item (the inverse of :func:`parse_grid` for one cell)."""
    if cell.method == "fp":
        return "fp"
    if cell.codebook:
        return f"{cell.codebook}g{cell.group_size}"
    a = f"a{cell.a_bits}" if cell.a_bits < 16 else ""
    g = "pc" if cell.group_size == -1 else f"g{cell.group_size}"
    return f"w{cell.w_bits}{a}{g}{'sym' if cell.sym else ''}"


def cell_args(cell: Cell, model: str) -> list[str]:
    """The ``--model --methods --grid --setting`` arguments that select exactly ``cell``."""
    settings = [a for k, v in cell.settings.items() for a in ("--setting", f"{k}={v}")]
    return ["--model", model, "--methods", "rtn" if cell.method == "fp" else cell.method,
            "--grid", grid_item(cell), *settings]


def row_command(row: dict) -> list[str]:
    """The command that measures ``row`` alone (recorded, or derived from the row's key)."""
    if "command" in row:
        return list(row["command"])
    return ["python", "bench/quality.py", *cell_args(cell_of(row), row["model"]),
            "--split", row["split"], "--seqlen", str(row["seqlen"]),
            "--windows", str(row["windows"])]


def checkpoint(cell: Cell, model: str, root: Path) -> tuple[str, float]:
    """The model to evaluate for ``cell`` and its calibration seconds: the FP model, or the fused
    checkpoint under ``root`` for the method's current code version, calibrated if missing."""
    if cell.method == "fp":
        return model, 0.0
    target = root / f"{model}-{cell.tag}-{code_version(cell.method)}"
    config = target / "quantization_config.json"
    if config.exists():
        return str(target), json.loads(config.read_text())["seconds"]
    start = time.perf_counter()
    calibrate(CalibrateArgs(model, cell.method, cell.w_bits, cell.group_size, cell.sym, target,
                            overwrite=True, settings=dict(cell.settings),
                            act_bits=cell.a_bits if cell.a_bits < 16 else None,
                            codebook=cell.codebook))
    return str(target), time.perf_counter() - start


def run_cell(cell: Cell, model: str, split: str, seqlen: int, windows: int,
             root: Path) -> dict:
    target, calib_seconds = checkpoint(cell, model, root)
    result = evaluate_perplexity(target, split, seqlen, windows)
    key = cell_key(cell, model, split, seqlen, windows)
    return {
        **key, "ppl": round(result["ppl"], 4),
        "seconds": round(calib_seconds, 1), "eval_seconds": round(result["seconds"], 1),
        "code_version": code_version(cell.method), "command": row_command(key),
        "provenance": record(),
    }


def mlc_scheme(cell: Cell) -> str:
    """The MLC scheme that stores ``cell``'s fused weights losslessly."""
    if cell.codebook:
        return f"{cell.codebook}a16g{cell.group_size}"
    if cell.method == "fp" or cell.sym or cell.a_bits < 16 or cell.group_size == -1:
        raise SystemExit(f"--compiled: {cell.tag} has no lossless MLC scheme (asymmetric groups "
                         "or NF3, weight-only)")
    return f"w{cell.w_bits}a16g{cell.group_size}asym"


def compiled_check(cell: Cell, model: str, split: str, seqlen: int, windows: int,
                   root: Path) -> dict:
    """``cell``'s checkpoint converted to its MLC scheme, compiled for this CPU (llvm) and scored
    on the same windows: ``{"scheme", "ppl", "eval_seconds", "provenance"}``."""
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.evaluate.run import evaluate_compiled_perplexity

    target, _ = checkpoint(cell, model, root)
    scheme = mlc_scheme(cell)
    mlc, lib = Path(f"{target}-{scheme}"), Path(f"{target}-{scheme}.so")
    convert(ConvertArgs(target, scheme, mlc, overwrite=True))
    compile_model(CompileArgs(mlc, "llvm", lib, overwrite=True))
    result = evaluate_compiled_perplexity(mlc, lib, split, seqlen, windows)
    return {"scheme": scheme, "ppl": round(result["ppl"], 4),
            "eval_seconds": round(result["seconds"], 1), "provenance": record()}


def stale_reason(row: dict) -> str | None:
    """Why ``row`` no longer stands for the current code, or None when it does (its code version
    is today's, or it recorded the older file version of a commit whose code is today's)."""
    recorded = row.get("code_version")
    if recorded is None:
        return "no recorded code version (measured before provenance)"
    now = code_version(row["method"])
    commit = (row.get("provenance") or {}).get("commit")
    if recorded == now or (commit and same_code(row["method"], recorded, commit)):
        return None
    return f"{row['method']} code changed ({recorded} → {now})"


def compiled(row: dict) -> str:
    """The table's compiled-perplexity cell: the number and its scheme, or a dash."""
    c = row.get("compiled")
    return f"{c['ppl']:.3f} ({c['scheme']})" if c else "–"


def markdown(rows: list[dict]) -> str:
    fp = {(r["model"], r["split"], r["seqlen"], r["windows"]): r["ppl"]
          for r in rows if r["method"] == "fp"}
    lines = ["| model | method | W | A | group | sym | ppl | × FP | compiled ppl | calibration s | "
             "settings |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "fp", -r["a_bits"], -r["w_bits"],
                                         r["group_size"], r["sym"], r["method"])):
        base = fp.get((r["model"], r["split"], r["seqlen"], r["windows"]))
        ratio = f"{r['ppl'] / base:.3f}" if base else "–"
        fp_row = r["method"] == "fp"
        g = "–" if fp_row else "channel" if r["group_size"] == -1 else r["group_size"]
        sym = "–" if fp_row else "sym" if r["sym"] else "asym"
        w = f"{r['w_bits']} ({r['codebook']})" if r.get("codebook") else r["w_bits"]
        lines.append(f"| {r['model']} | {r['method']} | {w} | {r['a_bits']} | {g} | "
                     f"{sym} | {r['ppl']:.3f} | {ratio} | {compiled(r)} | "
                     f"{r['seconds']:.0f} | {json.dumps(r['settings']) if r['settings'] else ''} |")
    return "\n".join(lines) + "\n"


def add_grid_arguments(ap: argparse.ArgumentParser, grid: str, results: Path) -> None:
    """The options this script and bench/zeroshot.py share: the cells to build, and where their
    rows and checkpoints go."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rtn", help="comma-separated calibration methods")
    ap.add_argument("--grid", default=grid)
    ap.add_argument("--setting", action="append", default=[], help="key=value for the method")
    ap.add_argument("--results", type=Path, default=results)
    ap.add_argument("--checkpoints", type=Path, help="fused checkpoints (default "
                    "$LOWBIT_CACHE/bench)")
    ap.add_argument("--list-stale", action="store_true", help="name the stale rows and stop")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="re-measure the grid's stale rows instead of keeping them")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_grid_arguments(ap, DEFAULT_GRID, RESULTS / "quality.json")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--compiled", action="store_true",
                    help="also convert each cell to its MLC scheme, compile it for this CPU and "
                    "record its perplexity there (the row's 'compiled')")
    return ap


def main() -> None:
    args = parser().parse_args()

    rows = json.loads(args.results.read_text()) if args.results.exists() else []
    if args.list_stale:
        list_stale(rows)
        return
    settings = parse_settings(args.setting)
    root = args.checkpoints or cache_dir() / "bench"
    done = {row_key(r): r for r in rows}
    for cell in parse_grid(args.grid, args.methods.split(","), settings):
        key = row_key(cell_key(cell, args.model, args.split, args.seqlen, args.windows))
        row = done.get(key)
        reason = stale_reason(row) if row else None
        if row is None or (reason and args.rerun_stale):
            row = run_cell(cell, args.model, args.split, args.seqlen, args.windows, root)
            print(f"{cell.tag}: ppl {row['ppl']}  calib {row['seconds']} s")
        else:
            print(f"[cached] {cell.tag}" + (f"  STALE: {reason}" if reason else ""))
        if args.compiled and "compiled" not in row and not stale_reason(row):
            check = compiled_check(cell, args.model, args.split, args.seqlen, args.windows, root)
            row = {**row, "compiled": {**check, "command": [*row_command(row), "--compiled"]}}
            print(f"{cell.tag}: compiled ({row['compiled']['scheme']}) ppl "
                  f"{row['compiled']['ppl']}, PyTorch {row['ppl']}")
        elif row is done.get(key):
            continue
        if key in done:  # a re-measured stale row keeps its place
            rows[rows.index(done[key])] = row
        else:
            rows.append(row)
        done[key] = row
        with atomic_file(args.results) as tmp:  # rewrite after every cell: a crash loses one cell
            tmp.write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    with atomic_file(args.results.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    print(table)


def list_stale(rows: list[dict]) -> None:
    """Print each stale row with why and the command that re-measures it."""
    stale = [(r, reason) for r in rows if (reason := stale_reason(r))]
    for r, reason in stale:
        print(f"{cell_of(r).tag}: {reason}\n    {' '.join(row_command(r))} --rerun-stale")
    print(f"{len(stale)} of {len(rows)} rows stale")


if __name__ == "__main__":
    main()
