"""A small, dependency-free SVG interval plot (byte-identical output for equal input).

Each ranked row shows its mean (filled circle) with the 95% interval (line) and its IQM (hollow diamond)
with its interval (thin line) on a 0-100 % axis. Reference rows sit below a dashed rule, as grey squares,
labelled as published numbers that are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from llm_coop_leaderboard.stats import Interval

__all__ = ["PlotRow", "interval_plot"]

_WIDTH, _LABEL_W, _PLOT_W, _ROW_H, _TOP, _BOTTOM = 760, 300, 420, 26, 46, 44
_FONT = 'font-family="DejaVu Sans, Arial, sans-serif" font-size="12"'


@dataclass(frozen=True)
class PlotRow:
    """One row: ``mean``/``iqm`` intervals of a ranked entry, or the ``reported`` value of a reference."""

    label: str
    mean: Interval | None = None
    iqm: Interval | None = None
    reported: float | None = None


def _x(fraction: float) -> str:
    return f"{_LABEL_W + max(0.0, min(1.0, fraction)) * _PLOT_W:.1f}"


def _axis(height: int) -> list[str]:
    bottom = height - _BOTTOM
    parts = [f'<line x1="{_x(0)}" y1="{_TOP - 8}" x2="{_x(0)}" y2="{bottom}" stroke="#444"/>']
    for tick in range(0, 101, 20):
        x = _x(tick / 100)
        parts.append(f'<line x1="{x}" y1="{_TOP - 8}" x2="{x}" y2="{bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle" {_FONT}>{tick}%</text>')
    return parts


def _ranked(row: PlotRow, y: int) -> list[str]:
    assert row.mean is not None and row.iqm is not None
    mean, iqm = row.mean, row.iqm
    d = f"{_x(iqm.point)}"
    return [
        f'<line x1="{_x(mean.low)}" y1="{y - 3}" x2="{_x(mean.high)}" y2="{y - 3}" stroke="#1f5fa8" stroke-width="3"/>',
        f'<circle cx="{_x(mean.point)}" cy="{y - 3}" r="5" fill="#1f5fa8"/>',
        f'<line x1="{_x(iqm.low)}" y1="{y + 5}" x2="{_x(iqm.high)}" y2="{y + 5}" stroke="#c0571b" stroke-width="1.5"/>',
        f'<path d="M{d} {y + 1}l4 4l-4 4l-4 -4z" fill="#fff" stroke="#c0571b" stroke-width="1.5"/>',
    ]


def _reference(row: PlotRow, y: int) -> list[str]:
    assert row.reported is not None
    x = float(_x(row.reported))
    return [f'<rect x="{x - 4:.1f}" y="{y - 4}" width="8" height="8" fill="#999"/>']


def interval_plot(title: str, rows: Sequence[PlotRow], references: Sequence[PlotRow] = ()) -> str:
    """The SVG text: ranked ``rows`` first, then ``references`` under a 'not comparable' rule."""
    gap = _ROW_H if references else 0
    height = _TOP + _BOTTOM + _ROW_H * (len(rows) + len(references)) + gap
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#fff"/>',
        f'<text x="10" y="20" {_FONT} font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="36" {_FONT} fill="#555">● mean, ◇ IQM, lines: 95% stratified bootstrap intervals '
        f"(normalised joint return)</text>",
        *_axis(height),
    ]
    y = _TOP + _ROW_H // 2
    for row in rows:
        out.append(f'<text x="{_LABEL_W - 8}" y="{y + 4}" text-anchor="end" {_FONT}>{escape(row.label)}</text>')
        out.extend(_ranked(row, y))
        y += _ROW_H
    if references:
        rule_y = y - _ROW_H // 2 + 4
        out.append(
            f'<line x1="10" y1="{rule_y}" x2="{_WIDTH - 10}" y2="{rule_y}" stroke="#999" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="10" y="{rule_y + 16}" {_FONT} fill="#777">published numbers, other models and data: not comparable</text>'
        )
        y += gap
    for row in references:
        out.append(
            f'<text x="{_LABEL_W - 8}" y="{y + 4}" text-anchor="end" {_FONT} fill="#777">{escape(row.label)}</text>'
        )
        out.extend(_reference(row, y))
        y += _ROW_H
    out.append("</svg>")
    return "\n".join(out) + "\n"
