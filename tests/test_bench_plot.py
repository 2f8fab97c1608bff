"""``bench/plot.py``: the SVG bar chart's bars are proportional to the values, one per row, with
each row's limit tick where its value would end."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from plot import LABEL_W, Bar, bars_svg  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def test_bars_are_proportional_and_ticks_sit_at_the_limits():
    bars = [Bar("a <fp32>", 10.0, 40.0), Bar("b", 30.0, None, highlight=True), Bar("c", 5.0, 100.0)]
    root = ET.fromstring(bars_svg(bars, "title & more", "tok/s", "limit"))
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("height") != root.get("height")]
    widths = [float(r.get("width")) for r in rects]
    assert len(rects) == 3 and widths[1] == pytest.approx(3 * widths[0], rel=1e-3)
    assert widths[2] == pytest.approx(widths[0] / 2, rel=1e-3)
    assert rects[1].get("fill") != rects[0].get("fill")  # the highlighted row
    ticks = [float(line.get("x1")) - LABEL_W for line in root.iter(f"{SVG}line") if line.get("stroke") == "black"]
    assert ticks == pytest.approx([widths[0] * 4, widths[0] * 10], rel=1e-3)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "a <fp32>" in texts and "title & more" in texts and "30.0" in texts
