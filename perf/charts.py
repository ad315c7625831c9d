"""Line charts as inline SVG strings (standard library only), for perf/render.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

#: Okabe-Ito colours: told apart with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
#: Line styles, one per sub-series (p50 solid, p99 dashed).
DASHES = ["", "6 4", "2 3"]


@dataclass
class Series:
    """One line: a value (or None) per x position, drawn in ``color`` with ``dash``."""

    label: str
    values: list[float | None]
    color: str
    dash: str = ""
    tips: list[str] = field(default_factory=list)  #: hover text per point


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-9 * step:
        ticks.append(ticks[-1] + step)
    return ticks


def fmt(value: float) -> str:
    """Short number: 1,899 / 2.7 / 0.35."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def line_chart(
    chart_id: str,
    title: str,
    y_label: str,
    x_labels: list[str],
    series: list[Series],
    x_tips: list[str] | None = None,
    width: int = 440,
    height: int = 250,
    x_title: str = "commit (oldest → newest)",
    x_what: str = "commit",
) -> str:
    """An SVG line chart over categorical x positions (commits, or ``x_what``); y starts at 0.

    The chart has a <title>/<desc> for screen readers, axis titles, tick labels, and the last
    value of each series written in the right margin, at its height.
    """
    left, right, top, bottom = 58, 50, 30, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None]
    ticks = nice_ticks(max(values) * 1.08 if values else 1.0)
    y_max = ticks[-1]
    n = max(len(x_labels), 1)

    def x_at(i: int) -> float:
        return left + plot_w / 2 if n == 1 else left + 12 + i * (plot_w - 24) / (n - 1)

    def y_at(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    desc = "; ".join(
        f"{s.label}: {', '.join(fmt(v) for v in s.values if v is not None)}" for s in series
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(y_label)} by {escape(x_what)}. {escape(desc)}</desc>',
        f'<text x="{left}" y="18" class="ctitle">{escape(title)}</text>',
    ]
    for tick in ticks:
        y = y_at(tick)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="ytick">{fmt(tick)}</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>')
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>'
    )
    every = max(1, math.ceil(n / max(1, plot_w // 60)))  # a 7-character sha is ~50 px wide
    for i, label in enumerate(x_labels):
        x = x_at(i)
        out.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" class="axis"/>'
        )
        if (n - 1 - i) % every == 0:  # the newest commit always has its label
            tip = f"<title>{escape(x_tips[i])}</title>" if x_tips else ""
            out.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="xtick">{tip}{escape(label)}</text>'
            )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" class="atitle">'
        f"{escape(x_title)}</text>"
    )
    out.append(
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" class="atitle">'
        f"{escape(y_label)}</text>"
    )
    labels = []
    for s in series:
        out.extend(_series(s, x_at, y_at))
        last = next(((i, v) for i, v in reversed(list(enumerate(s.values))) if v is not None), None)
        if last is not None:
            labels.append(
                [y_at(last[1]) + 4, left + plot_w + 5, fmt(last[1]), s.color, x_at(last[0])]
            )
    out.extend(_value_labels(labels, top + 10, top + plot_h + 4))
    out.append("</svg>")
    return "\n".join(out)


def _series(s: Series, x_at, y_at) -> list[str]:
    points = [(i, v) for i, v in enumerate(s.values) if v is not None]
    if not points:
        return []
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    coords = " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in points)
    out = [f'<g class="series"><title>{escape(s.label)}</title>']
    if len(points) > 1:
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>'
        )
    for i, v in points:
        tip = s.tips[i] if i < len(s.tips) else f"{s.label}: {fmt(v)}"
        fill = "#fff" if s.dash else s.color
        out.append(
            f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="3.5" fill="{fill}" stroke="{s.color}" '
            f'stroke-width="2"><title>{escape(tip)}</title></circle>'
        )
    out.append("</g>")
    return out


def _value_labels(labels: list[list], y_min: float, y_max: float, gap: float = 12) -> list[str]:
    """Each series' last value in the right margin at its height, moved apart so none overlap."""
    labels.sort(key=lambda label: label[0])
    for a, b in zip(labels, labels[1:], strict=False):
        if b[0] - a[0] < gap:
            b[0] = a[0] + gap
    overflow = labels[-1][0] - y_max if labels else 0
    for label in labels:
        label[0] = max(y_min, label[0] - max(overflow, 0))
    out = []
    for y, x, text, color, x_point in labels:
        if x - x_point > 20:  # the series ends before the newest commit: lead the eye to its label
            out.append(
                f'<line x1="{x_point + 5:.1f}" y1="{y - 4:.1f}" x2="{x - 3:.1f}" y2="{y - 4:.1f}" '
                f'stroke="{color}" stroke-width="1" stroke-dasharray="1 3"/>'
            )
        out.append(f'<text x="{x:.1f}" y="{y:.1f}" class="vlabel" fill="{color}">{text}</text>')
    return out


def legend_swatch(color: str, dash: bool = False) -> str:
    """A short line sample in a series' colour and style, for HTML legends (no SVG of its own)."""
    style = "dashed" if dash else "solid"
    return (
        f'<span class="swatch" style="border-top: 3px {style} {color}" aria-hidden="true"></span>'
    )
