"""Horizontal bar charts as standalone SVG (no plotting dependency): one bar per row, with an
optional marker per bar for its ceiling."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, LABEL_W, ROW_H, TOP, BOTTOM = 860, 300, 24, 44, 36


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    limit: float | None = None  # drawn as a tick on the bar's row
    highlight: bool = False


def bars_svg(bars: list[Bar], title: str, unit: str, limit_label: str) -> str:
    """An SVG of ``bars``, scaled to the largest value or limit, values printed at the bar ends."""
    top = max([b.value for b in bars] + [b.limit or 0.0 for b in bars]) * 1.12
    plot_w = WIDTH - LABEL_W - 20
    height = TOP + ROW_H * len(bars) + BOTTOM

    def x(v: float) -> float:
        return LABEL_W + plot_w * v / top

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i, b in enumerate(bars):
        y = TOP + i * ROW_H
        colour = "#d9541e" if b.highlight else "#4a78b5"
        out.append(f'<text x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(b.label)}</text>')
        out.append(f'<rect x="{LABEL_W}" y="{y + 4}" width="{x(b.value) - LABEL_W:.1f}" height="{ROW_H - 8}" fill="{colour}"/>')
        out.append(f'<text x="{x(b.value) + 4:.1f}" y="{y + 15}">{b.value:.1f}</text>')
        if b.limit:
            out.append(f'<line x1="{x(b.limit):.1f}" x2="{x(b.limit):.1f}" y1="{y + 1}" y2="{y + ROW_H - 1}" '
                       'stroke="black" stroke-width="2"/>')
    base = TOP + ROW_H * len(bars)
    out.append(f'<line x1="{LABEL_W}" x2="{LABEL_W + plot_w}" y1="{base}" y2="{base}" stroke="#888"/>')
    out.append(f'<text x="{LABEL_W + plot_w / 2}" y="{base + 24}" text-anchor="middle">{escape(unit)}; '
               f'black tick: {escape(limit_label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
