"""The capacity report for people: text lines, and a self-contained HTML page (inline SVG
charts, no script, nothing fetched) from the ``celery capacity --json`` object."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from .model import Scaling, predict_latency

__all__ = ["html_page", "text_lines"]


def _curve(model: dict[str, Any]) -> Scaling:
    return Scaling(model["lambda"], model["sigma"], model["kappa"], model["r2"],
                   model["max_error"], model["points"])


def text_lines(r: dict[str, Any]) -> list[str]:
    """The report as the terminal shows it."""
    model, rec, target = r["model"], r["recommendation"], r["target"]
    lines = [f"{'points':<12}{model['axis']:>12}  processes   tasks/s  worker cores  "
             "p99 saturated"]
    for p in r["points"]:
        cores = f"{p['worker_cores']:.2f}" if p["worker_cores"] is not None else "-"
        p99 = f"{p['p99_ms']:.0f} ms" if p["p99_ms"] is not None else "-"
        lines.append(f"{'':<12}{p['slots']:>12}  {p['processes']:>9}  {p['throughput']:>8.1f}"
                     f"  {cores:>12}  {p99:>13}")
    base = r["base_latency"]
    procs = model["processes"]
    pred = rec["predicted"]
    lines += [
        f"model       {model['threads']['formula']}",
        f"            processes: {procs['formula'] if procs else 'not measured'}",
        _saturation(model),
        f"latency     one task at a time: p50 {base['p50_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms "
        f"({base['tasks']} tasks)",
        f"recommend   celery worker {' '.join(rec['worker_args'])}",
        f"            saturates at {pred['throughput_at_saturation']:.0f} tasks/s; at "
        f"{pred['rate'] or 0:.0f} tasks/s ({(pred['utilisation'] or 0):.0%} busy): "
        + (f"p50 {pred['p50_ms']:.1f} ms, p99 {pred['p99_ms']:.1f} ms"
           if pred["p50_ms"] is not None else "past saturation")
        + (f", {pred['cpu_cores']:.2f} cores" if pred["cpu_cores"] is not None else ""),
        f"bound       {rec['bound']}",
    ]
    if target["rate"] is not None:
        met = "met" if rec["meets_target"] else "NOT met"
        p99 = f", p99 under {target['p99_ms']:g} ms" if target["p99_ms"] else ""
        lines.append(f"target      {target['rate']:g} tasks/s{p99} at most "
                     f"{target['max_utilisation']:.0%} busy: {met}")
        if rec["processes_needed"]:
            lines.append(f"            needs about {rec['processes_needed']} worker processes: "
                         f"{rec['machines_needed']} machine(s) of {target['max_cores']} cores")
    for v in r.get("variants", []):
        lines.append(f"variant     {v['setting']} at {model['axis']} {v['slots']}: "
                     f"{v['throughput']:.1f} tasks/s ({v['gain'] - 1:+.0%})"
                     + ("; used" if v["used"] else ""))
    check = r.get("verification")
    if check:
        meets = "" if check["meets_target"] is None else \
            ("; meets the target" if check["meets_target"] else "; BELOW the target")
        lines.append(f"verified    the recommended worker did {check['throughput']:.0f} tasks/s, "
                     f"{check['error']:+.0%} off the prediction{meets}")
    lines.append(f"queue       {r['queue']} {'purged' if r['purged'] else 'NOT purged'}; "
                 f"sweep took {r['elapsed_s']:.1f} s")
    return lines + [f"note        {note}" for note in r["notes"]]


def _saturation(model: dict[str, Any]) -> str:
    sat = model["saturation"]
    where = f"{sat['throughput']:.0f} tasks/s at {model['axis']} {sat['slots']} (one process)"
    if sat["reached"]:
        return f"saturation  {where}"
    return f"saturation  not reached: {where}, the most measured, and still growing"


# -- SVG ------------------------------------------------------------------------------------

W, H, PAD = 580, 320, 60


class _Axes:
    """Maps data to pixels; x on a log2 scale when ``log_x``."""

    def __init__(self, x_max: float, y_max: float, log_x: bool) -> None:
        self.log_x, self.x_max, self.y_max = log_x, max(x_max, 1.0), max(y_max, 1e-9) * 1.1

    def x(self, value: float) -> float:
        if self.log_x:
            span = math.log2(self.x_max) or 1.0
            return PAD + (W - 2 * PAD) * math.log2(max(value, 1.0)) / span
        return PAD + (W - 2 * PAD) * value / self.x_max

    def y(self, value: float) -> float:
        return H - PAD - (H - 2 * PAD) * min(value, self.y_max) / self.y_max

    def frame(self, x_label: str, y_label: str, x_ticks: Sequence[float]) -> list[str]:
        out = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
               f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
               f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{html.escape(x_label)}</text>',
               f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" '
               f'text-anchor="middle">{html.escape(y_label)}</text>']
        for tick in x_ticks:
            out.append(f'<text x="{self.x(tick):.1f}" y="{H - PAD + 16}" '
                       f'text-anchor="middle">{tick:g}</text>')
        for i in range(5):
            value = self.y_max * i / 4
            label = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
            out.append(f'<text x="{PAD - 6}" y="{self.y(value) + 4:.1f}" '
                       f'text-anchor="end">{label}</text>')
        return out

    def polyline(self, points: Sequence[tuple[float, float]], colour: str,
                 dash: str = "") -> str:
        path = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in points)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{extra} points="{path}"/>'


def _svg(body: list[str], title: str) -> str:
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">'
            + "".join(body) + f"</svg><figcaption>{html.escape(title)}</figcaption></figure>")


def _sample(f: Callable[[float], float], lo: float, hi: float, log: bool,
            steps: int = 80) -> list[tuple[float, float]]:
    if log:
        xs = [lo * (hi / lo) ** (i / steps) for i in range(steps + 1)]
    else:
        xs = [lo + (hi - lo) * i / steps for i in range(steps + 1)]
    return [(x, f(x)) for x in xs]


def _throughput_chart(r: dict[str, Any]) -> str:
    model, rec, target = r["model"], r["recommendation"], r["target"]
    curve = _curve(model["threads"])
    one = [p for p in r["points"] if p["processes"] == 1]
    top = max(p["slots"] for p in one)
    log = top >= 16
    y_max = max([p["throughput"] for p in one] + [curve(top), target["rate"] or 0])
    axes = _Axes(top, y_max, log)
    ticks = [2 ** i for i in range(int(math.log2(top)) + 1)] if log else \
        sorted({p["slots"] for p in one})
    body = axes.frame(model["axis"], "tasks/s", ticks)
    body.append(axes.polyline(_sample(curve, 1, top, log), "#1f77b4"))
    for p in one:
        body.append(f'<circle cx="{axes.x(p["slots"]):.1f}" cy="{axes.y(p["throughput"]):.1f}" '
                    f'r="4" fill="#d62728"><title>{p["slots"]}: {p["throughput"]} tasks/s'
                    "</title></circle>")
    if target["rate"]:
        body.append(axes.polyline([(1, target["rate"]), (top, target["rate"])], "#2ca02c", "6 4"))
    slots = rec["slots"]
    on_one = rec["predicted"]["throughput_at_saturation"] if rec["worker"]["processes"] == 1 \
        else curve(slots)  # with more processes: where its slot count is on one
    x, y = axes.x(slots), axes.y(on_one)
    body.append(f'<path d="M{x:.1f},{y - 8:.1f} l8,8 l-8,8 l-8,-8 z" fill="#ff7f0e">'
                f"<title>recommended: {slots}</title></path>")
    return _svg(body, "Throughput against slots, one process: measured (red), fitted curve "
                      "(blue), target rate (green, dashed), recommendation (orange).")


def _latency_chart(r: dict[str, Any]) -> str:
    rec, base, target = r["recommendation"], r["base_latency"], r["target"]
    capacity = rec["predicted"]["throughput_at_saturation"]
    slots = rec["slots"] * rec["worker"]["processes"]

    def at(rate: float, which: str) -> float:
        latency = predict_latency(rate, capacity, slots, base["p50_ms"], base["p99_ms"])
        return getattr(latency, which) if latency else float("inf")

    top = capacity * 0.97
    p50 = _sample(lambda x: at(x, "p50_ms"), 0, top, False)
    p99 = _sample(lambda x: at(x, "p99_ms"), 0, top, False)
    y_max = min(max(b for _, b in p99), 20 * max(base["p99_ms"], 1.0))
    axes = _Axes(capacity, max(y_max, target["p99_ms"] or 0), False)
    body = axes.frame("arrival rate, tasks/s", "latency, ms",
                      [round(capacity * i / 4) for i in range(5)])
    body += [axes.polyline(p50, "#1f77b4"), axes.polyline(p99, "#9467bd")]
    if target["rate"]:
        x = axes.x(target["rate"])
        body.append(f'<line x1="{x:.1f}" y1="{PAD}" x2="{x:.1f}" y2="{H - PAD}" '
                    'stroke="#2ca02c" stroke-dasharray="6 4"/>')
    if target["p99_ms"]:
        body.append(axes.polyline([(0, target["p99_ms"]), (capacity, target["p99_ms"])],
                                  "#2ca02c", "2 3"))
    return _svg(body, "Predicted latency of the recommended worker against load (M/M/c on the "
                      "latency measured one task at a time): p50 (blue), p99 (purple), target "
                      "(green).")


def html_page(r: dict[str, Any]) -> str:
    """A page that needs nothing but itself: the text report, and the two charts."""
    text = html.escape("\n".join(text_lines(r)))
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>celery capacity"
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:70em}"
            "pre{background:#f6f6f6;padding:1em;overflow-x:auto}figure{display:inline-block;"
            "margin:1em;max-width:600px}</style></head><body><h1>celery capacity</h1>"
            f"<p>Broker {html.escape(str(r['broker']))}; workload "
            + html.escape(", ".join(f"{k} {v}" for k, v in r["workload"].items()
                                    if v is not None)) + "</p>"
            f"{_throughput_chart(r)}{_latency_chart(r)}<pre>{text}</pre></body></html>\n")
