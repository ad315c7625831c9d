"""Render perf/history/*.json into perf/dashboard.html: one self-contained page (standard library only).

    .venv/bin/python perf/render.py                      # perf/history -> perf/dashboard.html
    .venv/bin/python perf/render.py --history DIR --out PAGE.html

The page has inline CSS and inline SVG charts, no script and no network access: it opens
from disk. Per benchmark, charts over commits (one series per machine) of throughput,
round-trip latency p50/p99 and worker CPU per task; the latest peer comparison
(bench/peers.py) with our ratios to each peer; the latest side-by-side with upstream Celery
(bench/compare.py); per machine, the latest scaling sweep (bench/scaling.py): speed-up over one
thread against the number of worker threads, per build and workload; how the numbers were
measured; and where every record came from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from charts import DASHES, PALETTE, Series, fmt, legend_swatch, line_chart  # noqa: E402

HISTORY = HERE / "history"
OUTPUT = HERE / "dashboard.html"

#: (chart kind, title, y-axis label, [(metric, sub-series label)]).
CHART_KINDS = [
    ("throughput", "Throughput", "tasks/s (higher is better)", [("tasks_per_s", "")]),
    (
        "latency",
        "Round-trip latency",
        "ms (lower is better)",
        [("p50_ms", "p50"), ("p99_ms", "p99")],
    ),
    (
        "cpu",
        "Worker CPU per task",
        "µs of CPU per task (lower is better)",
        [("cpu_us_per_task", "")],
    ),
]
#: Columns of the peer ratio table: (workload, metric, heading, higher_is_better).
PEER_COLUMNS = [
    ("noop", "tasks_per_s", "no-op tasks/s", True),
    ("noop", "cpu_us_per_task", "no-op CPU/task", False),
    ("latency", "p50_ms", "RTT p50", False),
    ("latency", "p99_ms", "RTT p99", False),
    ("io", "tasks_per_s", "I/O tasks/s", True),
    ("io", "cpu_us_per_task", "I/O CPU/task", False),
]
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       margin: 24px 32px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 4px; }
.sub { color: #555; margin: 0 0 12px; } .note { background: #f6f8fa; border-left: 4px solid #0072B2;
  padding: 8px 14px; max-width: 1100px; } .note p { margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
caption { text-align: left; caption-side: top; padding: 2px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; vertical-align: top; }
th { background: #f0f3f6; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.good { background: #dff3e4; } td.bad { background: #fbe3e0; } td.small { font-size: 12px; color: #444; }
.row { display: flex; flex-wrap: wrap; gap: 10px; } .chart { border: 1px solid #e3e3e3; background: #fff; }
.chart .grid { stroke: #e8e8e8; } .chart .axis { stroke: #666; }
.chart text { font: 11px system-ui, sans-serif; fill: #333; } .chart .ctitle { font-size: 13px; font-weight: 600; }
.chart .ytick { text-anchor: end; } .chart .xtick { text-anchor: middle; font-family: ui-monospace, monospace; }
.chart .atitle { text-anchor: middle; fill: #555; } .chart .vlabel { font-weight: 600; }
.legend { margin: 4px 0 8px; } .legend span.item { margin-right: 18px; white-space: nowrap; }
.swatch { display: inline-block; width: 30px; height: 0; vertical-align: middle; margin-right: 6px; }
code { font-size: 12px; background: #f3f3f3; padding: 0 3px; } details > summary { cursor: pointer;
  font-weight: 600; margin: 10px 0; }
"""


# --- the records -------------------------------------------------------------------------------


def load_records(history: Path) -> list[dict]:
    """Every record in ``history``, oldest commit first; unreadable files are reported and skipped."""
    records = []
    for path in sorted(history.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not (record["commit"]["sha"] and record["machine"]["id"]):
                raise ValueError("no commit sha or machine id")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"skipping {path.name}: {exc!r}", file=sys.stderr)
            continue
        record["_file"] = path.name
        records.append(record)
    records.sort(key=lambda r: (r["commit"].get("date", ""), r["commit"]["sha"], _recorded_at(r)))
    return records


def _recorded_at(record: dict) -> str:
    return max((run.get("recorded_at", "") for run in record.get("runs", [])), default="")


def machine_label(machine: dict) -> str:
    return f"{machine['id']}: {machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores"


def commits_of(records: list[dict]) -> list[dict]:
    """Distinct commits in record order (the x axis of every chart)."""
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(record["commit"]["sha"], record["commit"])
    return list(seen.values())


#: Order and chart-title prefix of bench/peers.py's workloads; others follow by name.
WORKLOADS = {
    "noop": "No-op burst",
    "latency": "Sequential round trips",
    "io": "I/O burst (10 ms tasks)",
}


def benchmark_groups(records: list[dict]) -> list[tuple[str, list[tuple[str, dict]]]]:
    """Benchmarks grouped per (suite, implementation), with their latest descriptions.

    Ours first, bench/compare.py before bench/peers.py; in a group, workloads in WORKLOADS order.
    """
    found: dict[str, dict] = {}
    for record in records:
        found.update(record.get("benchmarks", {}))
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for name, bench in found.items():
        suite, impl = bench.get("suite", "other"), bench.get("impl", name)
        if suite == "scaling":  # drawn against threads, by scaling_section
            continue
        key = (not bench.get("ours"), suite != "compare", suite, impl)
        groups.setdefault(key, []).append((name, bench))
    order = list(WORKLOADS)
    out = []
    for key in sorted(groups):
        items = sorted(
            groups[key],
            key=lambda kv: (
                order.index(w) if (w := kv[1].get("workload")) in order else len(order),
                kv[0],
            ),
        )
        out.append((f"bench/{key[2]}.py: {key[3]}", items))
    return out


# --- the charts --------------------------------------------------------------------------------


def benchmark_charts(
    name: str,
    records: list[dict],
    commits: list[dict],
    colors: dict[str, str],
    chart_id: str,
    prefix: str = "",
) -> list[str]:
    """The charts of one benchmark that have data: throughput, latency, CPU per task."""
    x = {c["sha"]: i for i, c in enumerate(commits)}
    labels = [c.get("short", c["sha"][:7]) for c in commits]
    tips = [f"{c['sha'][:10]} {c.get('date', '')} {c.get('subject', '')}" for c in commits]
    charts = []
    for kind, title, y_label, metrics in CHART_KINDS:
        series = []
        for sub, (metric, sub_label) in enumerate(metrics):
            for machine_id, color in colors.items():
                values: list[float | None] = [None] * len(commits)
                for record in records:
                    bench = record.get("benchmarks", {}).get(name)
                    if (
                        record["machine"]["id"] == machine_id
                        and bench
                        and metric in bench.get("metrics", {})
                    ):
                        values[x[record["commit"]["sha"]]] = bench["metrics"][metric]
                if any(v is not None for v in values):
                    label = f"{sub_label} {machine_id}".strip()
                    point_tips = [
                        f"{label} @ {labels[i]}: {fmt(v)} {y_label.split(' (')[0]}"
                        if v is not None
                        else ""
                        for i, v in enumerate(values)
                    ]
                    series.append(
                        Series(label, values, color, DASHES[sub % len(DASHES)], point_tips)
                    )
        if series:
            charts.append(
                line_chart(
                    f"{chart_id}-{kind}", prefix + title, y_label, labels, series, tips, width=430
                )
            )
    return charts


def legend(colors: dict[str, str], machines: dict[str, dict]) -> str:
    items = [
        f'<span class="item">{legend_swatch(color)}machine {escape(machine_label(machines[mid]))}</span>'
        for mid, color in colors.items()
    ]
    items.append(f'<span class="item">{legend_swatch("#555")}p50 (filled dots)</span>')
    items.append(f'<span class="item">{legend_swatch("#555", dash=True)}p99 (hollow dots)</span>')
    return f'<div class="legend" aria-label="legend">Legend: {"".join(items)}</div>'


def _about(records: list[dict], items: list[tuple[str, dict]]) -> str:
    """The configuration of a group: compare.py's worker options, or peers.py's description."""
    bench = items[0][1]
    if bench.get("info", {}).get("worker"):
        return f"worker options: {bench['info']['worker']}"
    for record in reversed(records):
        impl = ((record.get("peers") or {}).get("implementations") or {}).get(bench.get("impl"))
        if impl and impl.get("about"):
            return str(impl["about"])
    return ""


def chart_sections(records: list[dict]) -> str:
    commits = commits_of(records)
    machines = {r["machine"]["id"]: r["machine"] for r in records}
    colors = {mid: PALETTE[i % len(PALETTE)] for i, mid in enumerate(machines)}
    ours, others = [], []
    for g, (heading, items) in enumerate(benchmark_groups(records)):
        charts = []
        for b, (name, bench) in enumerate(items):
            workload = bench.get("workload", "")
            prefix = f"{WORKLOADS.get(workload, workload)}: " if len(items) > 1 else ""
            charts += benchmark_charts(name, records, commits, colors, f"c{g}-{b}", prefix)
        if not charts:
            continue
        about = _about(records, items)
        block = (
            f"<section><h3>{escape(heading)}</h3>"
            + (f'<p class="sub">{_text(about)}</p>' if about else "")
            + f'<div class="row">{"".join(charts)}</div></section>'
        )
        (ours if items[0][1].get("ours") else others).append(block)
    out = [f"<h2 id='charts'>celery-asyncio over commits</h2>{legend(colors, machines)}", *ours]
    if others:
        out.append(
            f"<details><summary>Upstream Celery and peers over commits ({len(others)} configurations; "
            "they are the control: when they move, the machine moved)</summary>"
            f"{legend(colors, machines)}{''.join(others)}</details>"
        )
    return "\n".join(out)


# --- the tables --------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Escaped text, with peers.py's Markdown `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(str(value or "")))


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def advantage(ours: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    """How many times better ours is: > 1 means celery-asyncio is better, < 1 the peer."""
    if not ours or not peer:
        return None
    return ours / peer if higher_is_better else peer / ours


def _ratio_cell(value: float | None) -> str:
    if value is None:
        return '<td class="n">—</td>'
    verdict = "good" if value >= 1 else "bad"
    return f'<td class="n {verdict}">{value:.2f}×</td>'


def peer_tables(records: list[dict]) -> str:
    latest = next((r for r in reversed(records) if r.get("peers")), None)
    if latest is None:
        return "<h2>Latest peer comparison</h2><p>No record holds a bench/peers.py run yet.</p>"
    peers = latest["peers"]
    impls, meta = peers.get("implementations", {}), peers.get("meta", {})
    ping = peers.get("redis_ping", {})
    fig = lambda impl, w, m: impls[impl].get("figures", {}).get(w, {}).get(m)  # noqa: E731
    rows = []
    for name, impl in impls.items():
        if impl.get("error") and not impl.get("figures"):
            rows.append(
                f"<tr><td>{escape(name)}</td><td></td><td colspan='7'>failed: "
                f"{escape(str(impl['error']))}</td></tr>"
            )
            continue
        cells = "".join(
            f'<td class="n">{_num(fig(name, w, m), 2 if m.endswith("_ms") else 0)}</td>'
            for w, m, _, _ in PEER_COLUMNS
        )
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{escape(str(impl.get('version') or ''))}</td>{cells}"
            f'<td class="small">{_text(impl.get("about"))}</td></tr>'
        )
    heads = "".join(f"<th>{h}</th>" for _, _, h, _ in PEER_COLUMNS)
    units = "tasks/s, µs of worker CPU per task, ms"
    figures = (
        f"<table><caption class='sub'>Figures ({units}), {meta.get('statistic', 'best')} of "
        f"{meta.get('rounds', '?')} "
        f"round(s)</caption><tr><th>implementation</th><th>version</th>{heads}<th>configuration</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    bases = [n for n, i in impls.items() if i.get("ours") and i.get("figures")]
    peer_names = [n for n, i in impls.items() if not i.get("ours") and i.get("figures")]
    ratio_rows = []
    for base in bases:
        for peer in peer_names:
            cells = "".join(
                _ratio_cell(advantage(fig(base, w, m), fig(peer, w, m), hib))
                for w, m, _, hib in PEER_COLUMNS
            )
            ratio_rows.append(f"<tr><td>{escape(base)}</td><td>{escape(peer)}</td>{cells}</tr>")
    ratios = (
        "<table><caption class='sub'>How many times better celery-asyncio is: ours ÷ peer for tasks/s, "
        "peer ÷ ours for CPU and latency; above 1× (green) we are better, below (red) the peer is"
        f"</caption><tr><th>ours</th><th>peer</th>{heads}</tr>{''.join(ratio_rows)}</table>"
    )
    when = f"commit {latest['commit'].get('short')} on machine {latest['machine']['id']}"
    command = next(
        (run["command"] for run in reversed(latest.get("runs", [])) if run.get("kind") == "peers"),
        meta.get("command", "?"),
    )
    sizes = (
        f"{_num(meta.get('tasks'))} no-op tasks, {_num(meta.get('latency_samples'))} sequential round trips, "
        f"{_num(meta.get('io_tasks'))} I/O tasks of 10 ms"
    )
    floor = (
        f"; bare Redis round trip (PING): p50 {_num(ping.get('p50_ms'), 3)} ms, "
        f"p99 {_num(ping.get('p99_ms'), 3)} ms"
        if ping
        else ""
    )
    if ping.get("queue_p50_ms") is not None:
        floor += (
            f"; bare queue round trip (LPUSH, BRPOP in a second process, and back): "
            f"p50 {_num(ping.get('queue_p50_ms'), 3)} ms"
        )
    ours = peers.get("redis_ping_ours") or {}
    if ours.get("queue_p50_ms") is not None:
        floor += (
            f" ({escape(str(ping.get('client', '')))}); with our client library "
            f"({escape(str(ours.get('client', '')))}): PING p50 {_num(ours.get('p50_ms'), 3)} ms, "
            f"queue p50 {_num(ours.get('queue_p50_ms'), 3)} ms"
        )
        floor += _over_floor({n: fig(n, "latency", "p50_ms") for n in bases}, ours["queue_p50_ms"])
    return (
        f"<h2>Latest peer comparison (bench/peers.py)</h2><p class='sub'>{escape(when)}: {sizes}{floor}. "
        f"Command: <code>{escape(str(command))}</code></p>{ratios}{figures}"
    )


def _over_floor(p50s: dict[str, float | None], queue_p50_ms: float) -> str:
    """Our round-trip p50s (by configuration) over the queue floor of our client library
    (issue 5's target: at most 2x), as a sentence for the peer table's heading."""
    parts = [f"{escape(name)} {p50 / queue_p50_ms:.2f}×"
             for name, p50 in p50s.items() if p50 is not None and queue_p50_ms]
    return f"; our round-trip p50 over that queue floor: {', '.join(parts)}" if parts else ""


def compare_table(records: list[dict]) -> str:
    latest = next(
        (
            r
            for r in reversed(records)
            if any(b.get("suite") == "compare" for b in r.get("benchmarks", {}).values())
        ),
        None,
    )
    if latest is None:
        return ""
    benches = {n: b for n, b in latest["benchmarks"].items() if b.get("suite") == "compare"}
    upstream = [b["metrics"].get("tasks_per_s") for b in benches.values() if not b.get("ours")]
    best = max((v for v in upstream if v), default=None)
    rows = []
    for bench in benches.values():
        m = bench["metrics"]
        ratio = advantage(m.get("tasks_per_s"), best, True)
        ratio = (
            _ratio_cell(ratio)
            if bench.get("ours")
            # colour says better/worse for ours only
            else f'<td class="n">{"—" if ratio is None else f"{ratio:.2f}×"}</td>'
        )
        rows.append(
            f"<tr><td>{escape(bench.get('impl', ''))}</td><td class='n'>{_num(m.get('tasks'))}</td>"
            f"<td class='n'>{_num(m.get('tasks_per_s'))}</td>{ratio}"
            f"<td class='n'>{_num(m.get('cpu_us_per_task'))}</td><td class='n'>{_num(m.get('p50_ms'), 2)}</td>"
            f"<td class='n'>{_num(m.get('p99_ms'), 2)}</td></tr>"
        )
    command = next(
        (
            run["command"]
            for run in reversed(latest.get("runs", []))
            if run.get("kind") == "compare"
        ),
        "?",
    )
    return (
        f"<h2>Latest side-by-side with upstream Celery (bench/compare.py)</h2><p class='sub'>commit "
        f"{escape(latest['commit'].get('short', ''))} on machine {escape(latest['machine']['id'])}; "
        f"command: <code>{escape(command)}</code></p><table><tr><th>configuration</th><th>tasks</th>"
        "<th>tasks/s</th><th>× best upstream</th><th>worker CPU µs/task</th><th>RTT p50 ms</th>"
        f"<th>RTT p99 ms</th></tr>{''.join(rows)}</table>"
    )


# --- scaling with threads (bench/scaling.py) ------------------------------------------------------


def _scaling_points(record: dict) -> dict[tuple[str, str], dict[int, dict]]:
    """(workload, interpreter) -> threads -> the benchmark of that point, in one record."""
    curves: dict[tuple[str, str], dict[int, dict]] = {}
    for bench in record.get("benchmarks", {}).values():
        threads = bench.get("metrics", {}).get("threads")
        if bench.get("suite") == "scaling" and isinstance(threads, int | float):
            key = (str(bench.get("workload")), str(bench.get("impl")))
            curves.setdefault(key, {})[int(threads)] = bench
    return curves


def _workload_order(workload: str) -> tuple[str, float]:
    """"sync-cpu 5 ms" before "sync-cpu 20 ms": by name, then by task size."""
    match = re.fullmatch(r"(.*) ([0-9.]+) ms", workload)
    return (match[1], float(match[2])) if match else (workload, 0.0)


def _interpreter_label(record: dict, name: str) -> str:
    facts = ((record.get("scaling") or {}).get("interpreters") or {}).get(name) or {}
    return f"{name}: {facts['label']}" if facts.get("label") else name


def scaling_charts(record: dict, chart_id: str) -> list[str]:
    """Per workload, speed-up over one thread against threads: a line per interpreter, and
    the ideal (N threads, N times) dashed."""
    curves = _scaling_points(record)
    names = sorted({interp for _, interp in curves})
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    charts = []
    for w, workload in enumerate(sorted({wl for wl, _ in curves}, key=_workload_order)):
        threads = sorted({t for (wl, _), c in curves.items() if wl == workload for t in c})
        labels = [str(t) for t in threads]
        series = []
        for name in names:
            points = curves.get((workload, name), {})
            values: list[float | None] = [
                points[t]["metrics"].get("speedup") if t in points else None for t in threads
            ]
            tips = [
                f"{_interpreter_label(record, name)}, {t} threads: {fmt(v)}× "
                f"({fmt(points[t]['metrics'].get('tasks_per_s', 0))} tasks/s, worker GIL "
                f"{points[t].get('info', {}).get('worker_gil') or '?'})"
                if v is not None
                else ""
                for t, v in zip(threads, values, strict=True)
            ]
            if any(v is not None for v in values):
                series.append(Series(name, values, colors[name], "", tips))
        if not series:
            continue
        ideal = [float(t) for t in threads]
        series.append(Series("ideal", ideal, "#999999", DASHES[2],
                             [f"ideal: {t}×" for t in threads]))
        charts.append(
            line_chart(f"{chart_id}-{w}", f"{workload}: speed-up over 1 thread",
                       "× tasks/s of 1 thread", labels, series, labels, width=430,
                       x_title="worker threads", x_what="worker threads")
        )
    return charts


def scaling_table(record: dict) -> str:
    rows = []
    curves = _scaling_points(record)
    for workload, name in sorted(curves, key=lambda k: (_workload_order(k[0]), k[1])):
        points = curves[(workload, name)]
        for threads, bench in sorted(points.items()):
            m, info = bench.get("metrics", {}), bench.get("info", {})
            speedup = m.get("speedup")
            rows.append(
                f"<tr><td>{escape(workload)}</td><td>{escape(_interpreter_label(record, name))}"
                f"</td><td class='n'>{threads}</td><td class='n'>{_num(m.get('tasks'))}</td>"
                f"<td class='n'>{_num(m.get('tasks_per_s'))}</td>"
                f"<td class='n'>{_num(m.get('median_tasks_per_s'))}</td>"
                f"<td class='n'>{'—' if speedup is None else f'{speedup:.2f}×'}</td>"
                f"<td class='n'>{_num(m.get('cpu_us_per_task'))}</td>"
                f"<td>{escape(str(info.get('worker_gil') or '?'))}</td></tr>"
            )
    return (
        "<table><tr><th>workload</th><th>interpreter</th><th>threads</th><th>tasks</th>"
        "<th>tasks/s (best)</th><th>tasks/s (median)</th><th>speed-up (best)</th>"
        f"<th>worker CPU µs/task</th><th>GIL in the worker</th></tr>{''.join(rows)}</table>"
    )


def scaling_section(records: list[dict]) -> str:
    """Per machine, its latest record with a bench/scaling.py run: charts and table."""
    latest: dict[str, dict] = {}
    for record in records:
        if _scaling_points(record):
            latest[record["machine"]["id"]] = record
    if not latest:
        return ""
    out = ["<h2 id='scaling'>Scaling with threads (bench/scaling.py)</h2>"]
    for m, record in enumerate(latest.values()):
        about = (record.get("scaling") or {}).get("workload_about", {})
        runs = [run for run in record.get("runs", []) if run.get("kind") == "scaling"]
        commands = "".join(
            f"<li><code>{escape(str(run.get('command')))}</code>"
            + (f" (load {run['loadavg_1m_before']:.1f} → {run['loadavg_1m_after']:.1f})"
               if "loadavg_1m_after" in run else "")
            + (f"<br><em>note: {escape(str(run['note']))}</em>" if run.get("note") else "")
            + "</li>"
            for run in runs
        )
        workloads = "".join(f"<li><code>{escape(str(w))}</code>: {_text(a)}</li>"
                            for w, a in sorted(about.items(),
                                               key=lambda kv: _workload_order(kv[0])))
        out.append(
            f"<h3>machine {escape(machine_label(record['machine']))}, commit "
            f"{escape(record['commit'].get('short', ''))}</h3><p class='sub'>Each point is the "
            "best of its rounds (load only slows a run down); speed-up is over the same "
            "interpreter and workload at 1 thread. Commands (1-minute load average before → "
            f"after):</p><ul class='sub'>{commands}</ul>"
            + (f"<p class='sub'>Workloads:</p><ul class='sub'>{workloads}</ul>"
               if workloads else "")
            + f"<div class='row'>{''.join(scaling_charts(record, f's{m}'))}</div>"
            + scaling_table(record)
        )
    return "\n".join(out)


def provenance(records: list[dict]) -> str:
    rows = []
    for r in reversed(records):
        c, m = r["commit"], r["machine"]
        runs = "<br>".join(
            f"{escape(run.get('recorded_at', ''))} {escape(run.get('kind', ''))}: "
            f"<code>{escape(run.get('command', ''))}</code>"
            + (
                f" (load {run['loadavg_1m_before']:.1f} → {run['loadavg_1m_after']:.1f})"
                if "loadavg_1m_after" in run
                else ""
            )
            + (f"<br><em>note: {escape(str(run['note']))}</em>" if run.get("note") else "")
            for run in r.get("runs", [])
        )
        dirty = " (uncommitted changes)" if c.get("dirty") else ""
        rows.append(
            f"<tr><td><code>{escape(c.get('short', ''))}</code>{dirty}<br>{escape(c.get('date', ''))}</td>"
            f"<td>{escape(c.get('subject', ''))}</td><td>{escape(machine_label(m))}<br>Python "
            f"{escape(str(m.get('python')))}, Redis {escape(str(m.get('redis')))}</td>"
            f"<td class='small'>{runs}</td><td class='small'>{escape(r['_file'])}</td></tr>"
        )
    return (
        "<h2>Records</h2><table><tr><th>commit</th><th>subject</th><th>machine</th><th>runs (UTC; 1-minute load average before → after)</th>"
        f"<th>file in perf/history/</th></tr>{''.join(rows)}</table>"
    )


NOTE = """<div class="note"><p><strong>How these numbers are measured.</strong> Every figure comes from a
real run of <code>bench/compare.py</code>, <code>bench/peers.py</code> or
<code>bench/scaling.py</code>, recorded by
<code>perf/record.py</code> with its command (see Records below). Each run starts a worker and a
single producer on the same machine, with Redis on loopback as broker and result store; the
benchmark machine so far is a shared virtual machine with 2 cores, busy with other work.</p>
<p><strong>Ratios from one run matter; absolute numbers are noisy.</strong> Within a run, the
implementations are interleaved round by round so they see the same load, which makes their
ratios meaningful. Across runs and commits, absolute tasks/s, latency and CPU can move by tens of
percent with the machine's load alone: compare commits only on the same machine (one line per
machine), and read the upstream Celery and peer series as the control: when they move too, the
machine moved, not our code. No-op throughput is bound by the single producer (send all, then
wait on each result), not by the worker.</p></div>"""


def render(records: list[dict]) -> str:
    machines = sorted({machine_label(r["machine"]) for r in records})
    head = (
        f"<p class='sub'>{len(records)} record(s), {len(commits_of(records))} commit(s), "
        f"machine(s): {escape('; '.join(machines)) or 'none'}. Generated by perf/render.py from perf/history/; "
        "hover a point for its value and commit.</p>"
    )
    body = [
        head,
        NOTE,
        peer_tables(records),
        compare_table(records),
        scaling_section(records),
        chart_sections(records) if records else "",
        provenance(records),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>celery-asyncio performance</title><style>{CSS}</style></head>\n<body>"
        "<h1>celery-asyncio performance</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=Path, default=HISTORY)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    records = load_records(args.history)
    args.out.write_text(render(records), encoding="utf-8")
    print(f"wrote {args.out} from {len(records)} record(s) ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
