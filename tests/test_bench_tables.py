"""The README's result tables and zero-shot figures follow bench/results/*.json."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import readme_tables  # noqa: E402
import zeroshot  # noqa: E402

RESULTS = BENCH / "results"
TASK_NAMES = {"PIQA": "piqa", "ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge",
              "HellaSwag": "hellaswag", "WinoGrande": "winogrande", "BoolQ": "boolq"}


@pytest.fixture(scope="module")
def readme() -> str:
    return readme_tables.README.read_text()


@pytest.fixture(scope="module")
def zeroshot_rows() -> list[dict]:
    return json.loads((RESULTS / "zeroshot.json").read_text())


def table_rows(text: str, name: str) -> list[str]:
    """The rows of the README table marked ``name``."""
    start = text.index(f"<!-- table:{name} -->\n") + len(f"<!-- table:{name} -->\n")
    return text[start:text.index("\n\n", start)].splitlines()[2:]


def test_readme_marks_every_table(readme):
    assert sorted(readme_tables.MARKER.findall(readme)) == sorted(readme_tables.TABLES)


@pytest.mark.parametrize("name", sorted(readme_tables.TABLES))
def test_readme_table_is_the_json(readme, name):
    shown = table_rows(readme, name)
    expected = readme_tables.generated(name, RESULTS).splitlines()[2:]
    assert [r for r in expected if r not in shown] == [], "rows missing from the README"
    assert [r for r in shown if r not in expected] == [], "README rows not in the JSON"
    assert shown == expected  # same order too


def test_check_catches_a_changed_number_and_a_missing_row(readme, tmp_path):
    for name in ("quality.json", "zeroshot.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    assert readme_tables.update(readme, tmp_path) == readme
    rows = json.loads((tmp_path / "quality.json").read_text())
    rows[2]["ppl"] += 0.01
    (tmp_path / "quality.json").write_text(json.dumps(rows))
    assert readme_tables.update(readme, tmp_path) != readme
    shutil.copy(RESULTS / "quality.json", tmp_path / "quality.json")
    dropped = readme.replace(table_rows(readme, "quality")[-1] + "\n", "", 1)
    assert readme_tables.update(dropped, tmp_path) == readme


def quoted(readme: str, pattern: str) -> tuple[float, ...]:
    m = re.search(pattern, " ".join(readme.split()))
    assert m, f"README no longer says {pattern!r}"
    return tuple(float(g) for g in m.groups())


def test_zeroshot_sentences_follow_the_json(readme, zeroshot_rows):
    w4, w3, w2 = ("rtn", 4, 128), ("rtn", 3, 128), ("rtn", 2, 128)
    fp = ("fp", 16, -1)
    changes = readme_tables.zeroshot_change(zeroshot_rows, w4, zeroshot.TASK_ORDER)
    (within,) = quoted(readme, r"RTN W4 g128 stays within ([\d.]+) points")
    assert within == max(abs(c) for c in changes)
    assert quoted(readme, r"\(average ([\d.]+) vs ([\d.]+);") == (
        readme_tables.zeroshot_average(zeroshot_rows, w4),
        readme_tables.zeroshot_average(zeroshot_rows, fp))
    by_task = readme_tables.zeroshot_rows(zeroshot_rows, *w4)
    fp_task = readme_tables.zeroshot_rows(zeroshot_rows, *fp)
    moves = re.findall(r"([A-Za-z-]+)(?: (acc_norm))?, (up|down) ([\d.]+)",
                       re.search(r"the largest moves are ([^)]*)\)", readme.replace("\n", " "))[1])
    deltas = []
    for task, metric, way, points in moves:
        t = TASK_NAMES[task]
        deltas.append(round(100 * (by_task[t][metric or "acc"] - fp_task[t][metric or "acc"]), 1))
        assert deltas[-1] == (float(points) if way == "up" else -float(points)), task
    assert max(abs(d) for d in deltas) == within
    four = ["piqa", "arc_easy", "arc_challenge", "hellaswag"]
    losses = [-c for c in readme_tables.zeroshot_change(zeroshot_rows, w3, four)]
    assert quoted(readme, r"W3 g128 loses ([\d.]+)–([\d.]+) points on PIQA, ARC-Easy, "
                          r"ARC-Challenge and HellaSwag \(average ([\d.]+)\)") == (
        min(losses), max(losses), readme_tables.zeroshot_average(zeroshot_rows, w3))
    assert quoted(readme, r"W2 g128 is at chance \(([\d.]+),") == (
        readme_tables.zeroshot_average(zeroshot_rows, w2),)
