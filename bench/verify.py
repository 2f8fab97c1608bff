"""Re-measure bench rows from their recorded command and compare with the recorded numbers.

    python bench/verify.py                        # a small sample: the cheapest row per method
    python bench/verify.py --all                  # every row of quality.json and zeroshot.json
    python bench/verify.py --rows quality:2,zeroshot:7 --repeat 3
    python bench/verify.py --bench quality --methods rtn --dry-run

Each run starts from scratch: fresh checkpoints and results in a scratch folder, so neither the
checkpoint cache nor ``bench/results`` is touched (only ``--out``, by default
``bench/results/verify.json``, rewritten after every row: an entry per row, the latest
re-measurement of each, with its provenance). Rows recorded before provenance carry no command;
theirs is derived from the row's key fields (``row_command`` of quality.py / zeroshot.py).

Methods without data or training (FP, RTN) are the same arithmetic every run: run once, they
must match within ``--tolerance`` (0.1 % relative). The data-driven methods' forward passes and
training use multi-threaded float reductions, so they are not treated as bit-deterministic: run
``--repeat`` times, the run-to-run spread is shown beside the mean, and a row matches when it is
within the larger of the tolerance and that spread. Rows record their CPU's vector extensions
(an AVX2 and an AVX-512 host sum floats in different orders); the CPU column says whether the
re-run's are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import quality
import zeroshot
from provenance import REPO, compare_cpu, record, thread_environment

from lowbit.cache import atomic_file

RESULTS = Path(__file__).parent / "results"
METRICS = {"quality": ("ppl",), "zeroshot": ("acc", "acc_norm")}
ROW_KEY = {"quality": quality.row_key, "zeroshot": zeroshot.row_key}
ROW_COMMAND = {"quality": quality.row_command, "zeroshot": zeroshot.row_command}
DETERMINISTIC_METHODS = frozenset({"fp", "rtn"})

# Runs one row's command with its results file and checkpoint folder; returns the new row.
Runner = Callable[[str, dict, Path], dict]


@dataclass(frozen=True)
class Comparison:
    """One metric of one row: the recorded value against the re-measured runs."""

    metric: str
    recorded: float
    runs: tuple[float, ...]
    tolerance: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs)

    @property
    def rel_diff(self) -> float:
        """(mean − recorded) / recorded."""
        return (self.mean - self.recorded) / self.recorded

    @property
    def spread(self) -> float:
        """Run-to-run spread, (max − min) / mean (0 for a single run)."""
        return (max(self.runs) - min(self.runs)) / self.mean

    @property
    def matches(self) -> bool:
        return abs(self.rel_diff) <= max(self.tolerance, self.spread)


def compare(recorded: dict, runs: list[dict], metrics: tuple[str, ...],
            tolerance: float) -> list[Comparison]:
    """A comparison per metric the recorded row has a value for."""
    return [Comparison(m, recorded[m], tuple(r[m] for r in runs), tolerance)
            for m in metrics if recorded.get(m) is not None]


@dataclass(frozen=True)
class Selected:
    bench: str
    index: int  # position in the bench's JSON
    row: dict

    @property
    def label(self) -> str:
        task = f" {self.row['task']}" if self.bench == "zeroshot" else ""
        return f"{self.bench}:{self.index} {quality.cell_of(self.row).tag}{task}"

    @property
    def cost(self) -> float:
        """Recorded seconds to re-measure (calibration + evaluation)."""
        return self.row.get("seconds", 0.0) + self.row.get("eval_seconds", 0.0)


def select(rows: dict[str, list[dict]], benches: list[str], methods: list[str] | None,
           picks: list[tuple[str, int]] | None, every: bool) -> list[Selected]:
    """``--rows`` picks, else the filtered rows: all with ``every``, else each bench's cheapest
    row per method (ties: the earlier row)."""
    if picks:
        return [Selected(b, i, rows[b][i]) for b, i in picks]
    found = [Selected(b, i, r) for b in benches for i, r in enumerate(rows[b])
             if methods is None or r["method"] in methods]
    if every:
        return found
    cheapest: dict[tuple[str, str], Selected] = {}
    for s in found:
        key = (s.bench, s.row["method"])
        if key not in cheapest or s.cost < cheapest[key].cost:
            cheapest[key] = s
    return sorted(cheapest.values(), key=lambda s: (s.bench, s.index))


def subprocess_runner(bench: str, row: dict, scratch: Path) -> dict:
    """Run the row's command into ``scratch`` (results and checkpoints), with the thread counts
    the row recorded, and return its row."""
    results = scratch / f"{bench}.json"
    command = ROW_COMMAND[bench](row)
    argv = [sys.executable, *command[1:], "--results", str(results),
            "--checkpoints", str(scratch / "checkpoints")]
    threads = thread_environment(row)
    print("$", *(f"{k}={v}" for k, v in threads.items()), " ".join(command), flush=True)
    subprocess.run(argv, cwd=REPO, check=True, env={**os.environ, **threads})
    key = ROW_KEY[bench](row)
    return next(r for r in json.loads(results.read_text()) if ROW_KEY[bench](r) == key)


def verify(selected: list[Selected], repeat: int, tolerance: float, scratch: Path,
           runner: Runner = subprocess_runner) -> Iterator[dict]:
    """Re-measure each selected row (``repeat`` times unless its method is deterministic); an
    entry per row as it finishes."""
    for s in selected:
        times = 1 if s.row["method"] in DETERMINISTIC_METHODS else repeat
        runs = []
        for n in range(times):
            folder = scratch / f"{s.bench}-{s.index}-run{n}"
            folder.mkdir(parents=True)
            runs.append(runner(s.bench, s.row, folder))
        comparisons = compare(s.row, runs, METRICS[s.bench], tolerance)
        rerun_cpus = [(r.get("provenance") or {}).get("cpu") or {} for r in runs]
        entry = {"row": s.label, "bench": s.bench, "index": s.index,
                 "command": ROW_COMMAND[s.bench](s.row),
                 "deterministic": s.row["method"] in DETERMINISTIC_METHODS,
                 "comparisons": [{**asdict(c), "mean": c.mean, "rel_diff": c.rel_diff,
                                  "spread": c.spread, "matches": c.matches}
                                 for c in comparisons],
                 "run_seconds": [r.get("seconds", 0.0) + r.get("eval_seconds", 0.0)
                                 for r in runs],
                 "cpu": sorted({compare_cpu(s.row, c) for c in rerun_cpus}),
                 "provenance": record()}
        print(table([entry]), flush=True)
        yield entry


def table(report: list[dict]) -> str:
    lines = ["| row | metric | recorded | re-measured | runs | spread | difference | match | CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in report:
        for c in entry["comparisons"]:
            lines.append(f"| {entry['row']} | {c['metric']} | {c['recorded']:.4f} | "
                         f"{c['mean']:.4f} | {len(c['runs'])} | {100 * c['spread']:.3f} % | "
                         f"{100 * c['rel_diff']:+.3f} % | {'yes' if c['matches'] else 'NO'} | "
                         f"{', '.join(entry.get('cpu', []))} |")
    return "\n".join(lines) + "\n"


def parse_rows(text: str) -> list[tuple[str, int]]:
    """``"quality:2,zeroshot:7"`` → ``[("quality", 2), ("zeroshot", 7)]``."""
    picks = []
    for item in text.split(","):
        bench, _, index = item.partition(":")
        if bench not in METRICS or not index.isdigit():
            raise SystemExit(f"bad --rows item {item!r} (e.g. quality:2, zeroshot:7)")
        picks.append((bench, int(index)))
    return picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every (filtered) row, not a sample")
    ap.add_argument("--rows", type=parse_rows, help="BENCH:INDEX,... rows of the JSON files")
    ap.add_argument("--bench", default="quality,zeroshot", help="comma-separated benches")
    ap.add_argument("--methods", help="comma-separated methods to keep (default: all)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each row whose method is not deterministic")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="relative (default 0.1 %%)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where the rows are read")
    ap.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "verify.json")
    ap.add_argument("--dry-run", action="store_true", help="list the rows and commands only")
    args = ap.parse_args()

    rows = {b: json.loads((args.results_dir / f"{b}.json").read_text()) for b in METRICS}
    methods = args.methods.split(",") if args.methods else None
    selected = select(rows, args.bench.split(","), methods, args.rows, args.all)
    for s in selected:
        print(f"{s.label}: recorded {s.cost:.0f} s  {' '.join(ROW_COMMAND[s.bench](s.row))}")
    if args.dry_run:
        return
    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    kept = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    report = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for entry in verify(selected, args.repeat, args.tolerance, Path(scratch)):
            report.append(entry)
            kept = [e for e in kept if e["row"] != entry["row"]] + [entry]
            with atomic_file(args.out) as tmp:
                tmp.write_text(json.dumps({"rows": kept}, indent=1) + "\n")
    print(table(report))
    if not all(c["matches"] for entry in report for c in entry["comparisons"]):
        raise SystemExit("some rows do not match their recorded numbers")


if __name__ == "__main__":
    main()
