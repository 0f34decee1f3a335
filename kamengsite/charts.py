"""Server-rendered SVG charts for the console: no script (console pages send ``script-src 'none'``).

Each chart is an inline ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` (what a screen
reader announces) and a ``<title>`` on every point or bar (the value on hover); the page shows the
same numbers in a table next to it. Every label and text is escaped here, so a product named
``<script>`` stays text. The output is well-formed XML (tests parse it with ``xml.etree``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

from markupsafe import Markup, escape

from .i18n import _

WIDTH = 720
HEIGHT = 240
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 16, 16, 40
BAR_HEIGHT = 22
BAR_GAP = 8
BAR_WIDTH = 480  # bar charts sit in half-width panels: a narrower viewBox keeps their text readable
BAR_LABEL_WIDTH = 140
COLOR = "#0969da"
GRID = "#d0d7de"
MUTED = "#656d76"

_ids = itertools.count(1)


@dataclass(frozen=True)
class Point:
    label: str  # shown under the axis (a day) and in the point's tooltip
    value: int


def _chart_id(prefix: str) -> str:
    # unique per process: two charts on one page must not share their title/desc ids
    return f"{prefix}{next(_ids)}"


def _head(kind: str, width: int, height: int, title: str, desc: str) -> tuple[str, list[str]]:
    chart = _chart_id(kind)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart chart-{kind}" '
             f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
             f'aria-labelledby="{chart}-t {chart}-d">',
             f'<title id="{chart}-t">{escape(title)}</title>',
             f'<desc id="{chart}-d">{escape(desc)}</desc>']
    return chart, parts


def _nice_max(value: int) -> int:
    """A round axis maximum ≥ value (1, 2, 5 × 10ⁿ), so the grid reads well."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _fmt(value: int, fmt: Callable[[int], str] | None) -> str:
    return fmt(value) if fmt else str(value)


def _value_text(value: int, fmt, unit: str, value_fmt) -> str:
    """A point's value as its tooltip and bar label say it: ``value_fmt`` if given, else ``fmt`` and ``unit``."""
    return value_fmt(value) if value_fmt else f"{_fmt(value, fmt)}{unit}"


def _tooltip(label: str, value: str) -> str:
    return _("%(label)s: %(value)s", label=label, value=value)


def line_chart(points: Sequence[Point], *, title: str, desc: str, fmt: Callable[[int], str] | None = None,
               unit: str = "", value_fmt: Callable[[int], str] | None = None) -> Markup:
    """A line of ``points`` (left to right) with one circle per point; ``fmt`` formats values (fen → 元)
    on the axis, ``value_fmt`` (default: ``fmt`` then ``unit``) in the tooltips."""
    _chart, parts = _head("line", WIDTH, HEIGHT, title, desc)
    top = _nice_max(max((p.value for p in points), default=0))
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    step = inner_w / max(len(points) - 1, 1)

    def x(i):
        return PAD_LEFT + (i * step if len(points) > 1 else inner_w / 2)

    def y(v):
        return PAD_TOP + inner_h - (max(v, 0) / top) * inner_h

    ticks = (0, top // 2, top) if top % 2 == 0 else (0, top)  # integer ticks: their labels are exact
    for tick in ticks:
        ty = y(tick)
        parts.append(f'<line x1="{PAD_LEFT}" y1="{ty:.1f}" x2="{WIDTH - PAD_RIGHT}" y2="{ty:.1f}" stroke="{GRID}"/>')
        label = _fmt(tick, fmt)
        parts.append(f'<text x="{PAD_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11" fill="{MUTED}">'
                     f'{escape(label)}</text>')
    if points:
        coords = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLOR}" stroke-width="2"/>')
    every = max(1, len(points) // 8)  # at most ~8 axis labels; every point keeps its tooltip
    for i, point in enumerate(points):
        parts.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(point.value):.1f}" r="3" fill="{COLOR}">'
                     f'<title>{escape(_tooltip(point.label, _value_text(point.value, fmt, unit, value_fmt)))}</title></circle>')
        if i % every == 0 or i == len(points) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" text-anchor="middle" font-size="11" '
                         f'fill="{MUTED}">{escape(point.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(points: Sequence[Point], *, title: str, desc: str, fmt: Callable[[int], str] | None = None,
              unit: str = "", value_fmt: Callable[[int], str] | None = None) -> Markup:
    """Horizontal bars, one per point (top to bottom), each with its label and value."""
    height = PAD_TOP + max(len(points), 1) * (BAR_HEIGHT + BAR_GAP) + PAD_TOP
    _chart, parts = _head("bar", BAR_WIDTH, height, title, desc)
    top = max((p.value for p in points), default=0) or 1
    inner_w = BAR_WIDTH - BAR_LABEL_WIDTH - PAD_RIGHT - 96  # room for the value after the bar
    if not points:
        empty = escape(_("No data"))
        parts.append(f'<text x="{BAR_WIDTH / 2}" y="{height / 2}" text-anchor="middle" fill="{MUTED}">{empty}</text>')
    for i, point in enumerate(points):
        y = PAD_TOP + i * (BAR_HEIGHT + BAR_GAP)
        width = max(point.value, 0) / top * inner_w
        value = _value_text(point.value, fmt, unit, value_fmt)
        parts.append(f'<text x="{BAR_LABEL_WIDTH - 8}" y="{y + BAR_HEIGHT * 0.7:.1f}" text-anchor="end" '
                     f'font-size="12">{escape(_shorten(point.label))}</text>')
        parts.append(f'<rect class="bar" x="{BAR_LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
                     f'fill="{COLOR}"><title>{escape(_tooltip(point.label, value))}</title></rect>')
        parts.append(f'<text x="{BAR_LABEL_WIDTH + width + 6:.1f}" y="{y + BAR_HEIGHT * 0.7:.1f}" font-size="12" '
                     f'fill="{MUTED}">{escape(value)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _shorten(label: str, limit: int = 10) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"
