"""The peer comparison's report: the median round per figure, its spread, ratios, Markdown.

Used by bench/peers.py (standard library only). A configuration's rounds are the harness
JSON objects (bench/peers/harness.py), or {"error": ...} for a run that failed. Every figure
is the median of the configuration's good rounds, shown with their minimum and maximum;
ratios divide medians of one configuration of ours by medians of one peer configuration,
workload by workload (never a figure of one configuration against another's elsewhere).
"""

from __future__ import annotations

import statistics

#: The workloads in report order: (key in the harness JSON, title).
WORKLOADS = [
    ("call", "one Redis call (INCR) per task"),
    ("kb1", "1 KB string argument"),
    ("kb100", "100 KB string argument"),
    ("options", "sent with countdown 0, a route and a priority"),
    ("mix", "0.2 ms of CPU work, then one Redis call"),
    ("io", "10 ms of I/O (sleep) per task"),
    ("noop", "empty task"),
]
#: Per-task costs of a burst, in µs: (key, column title).
COSTS = [
    ("worker_cpu_us_per_task", "worker CPU"),
    ("producer_cpu_us_per_task", "producer CPU"),
    ("redis_cpu_us_per_task", "Redis CPU"),
    ("total_cpu_us_per_task", "sum"),
]
LATENCY = ["p50_ms", "p99_ms"]


def spread(values: list[float]) -> dict:
    """Median, min and max of one figure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(rounds: list[dict]) -> dict | None:
    """Per workload and figure, the spread over the good rounds; None when none succeeded."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return None
    summary: dict = {"version": ok[0]["version"], "good_rounds": len(ok)}
    for workload in [w for w, _ in WORKLOADS] + ["latency"]:
        runs = [r[workload] for r in ok if isinstance(r.get(workload), dict)]
        if not runs:
            continue
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "tasks"]
        summary[workload] = {
            k: spread([run[k] for run in runs if isinstance(run.get(k), int | float)])
            for k in keys
        }
    return summary


def medians(summary: dict) -> dict:
    """{workload: {figure: median}}: the shape perf/record.py reads."""
    return {
        w: {k: s["median"] for k, s in figures.items()}
        for w, figures in summary.items() if isinstance(figures, dict)
    }


def _median(result: dict, workload: str, key: str) -> float | None:
    figure = (result.get("summary") or {}).get(workload, {}).get(key)
    return figure["median"] if figure else None


def ratios(results: dict, base: str) -> dict:
    """ours ``base`` ÷ each peer, per workload: tasks/s, total CPU per task; latency p50."""
    if not results.get(base, {}).get("summary"):
        return {}
    pairs = [(w, "tasks_per_s") for w, _ in WORKLOADS] + [
        (w, "total_cpu_us_per_task") for w, _ in WORKLOADS] + [("latency", "p50_ms")]
    table = {}
    for name, result in results.items():
        if name.startswith("ours") or not result.get("summary"):
            continue
        row = {}
        for workload, key in pairs:
            ours, peer = _median(results[base], workload, key), _median(result, workload, key)
            row[f"{workload}.{key}"] = ours / peer if ours and peer else None
        table[name] = row
    return table


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def cell(figure: dict | None, digits: int = 0) -> str:
    """``median [min..max]``, or — for a figure not measured."""
    if not figure:
        return "—"
    if figure["n"] == 1:
        return fmt(figure["median"], digits)
    return (f"{fmt(figure['median'], digits)} [{fmt(figure['min'], digits)}.."
            f"{fmt(figure['max'], digits)}]")


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _floors(report: dict) -> str:
    parts = []
    for key in ("redis_ping", "redis_ping_ours"):
        ping = report.get(key) or {}
        if ping:
            parts.append(
                f"{ping.get('client')}: PING p50 {fmt(ping.get('p50_ms'), 3)} ms, queue round "
                f"trip (LPUSH, BRPOP in a second process, LPUSH of the reply, BRPOP of it) p50 "
                f"{fmt(ping.get('queue_p50_ms'), 3)} ms"
            )
    return "Bare Redis round trips (median of the rounds): " + "; ".join(parts) + "." if parts \
        else ""


def _header(report: dict) -> str:
    meta = report["meta"]
    loads = [r.get("loadavg_1m_before") for res in report["results"].values()
             for r in res.get("rounds", []) if r.get("loadavg_1m_before") is not None]
    load = f"{min(loads):.2f}..{max(loads):.2f}" if loads else "?"
    return (
        f"Median [min..max] of {meta['rounds']} interleaved rounds on {meta['cpus']} cores, "
        f"1-minute load average {load} before the runs; Redis {meta['redis']}. Bursts: "
        f"{meta['tasks']:,} empty tasks, {meta.get('call_tasks') or 0:,} one-call tasks, "
        f"{meta.get('kind_tasks') or 0:,} of each other kind (a fifth for 100 KB), "
        f"{meta['io_tasks']:,} I/O tasks; {meta['latency_samples']} sequential round trips. "
        f"Each burst: one producer thread sends every task with one framework call, then "
        f"waits for every result in send order. Command: `{meta['command']}`. {_floors(report)}"
    )


def markdown(report: dict) -> str:
    results = report["results"]
    lines = [_header(report), "", "| configuration | version | set-up |", "|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| {name} | {result.get('version', '')} | {result['about']}"
                     + (f" (failed: {result['error']})" if result.get("error") else "") + " |")
    for workload, title in WORKLOADS:
        rows = [(n, r["summary"][workload]) for n, r in results.items()
                if (r.get("summary") or {}).get(workload)]
        if not rows:
            continue
        lines += ["", f"**{workload}**: {title}. Per task, µs:", "",
                  "| configuration | tasks/s | " + " | ".join(t for _, t in COSTS) + " |",
                  "|---|---:|" + "---:|" * len(COSTS)]
        for name, fig in rows:
            lines.append(f"| {name} | {cell(fig.get('tasks_per_s'))} | "
                         + " | ".join(cell(fig.get(k)) for k, _ in COSTS) + " |")
        missing = [n for n, r in results.items() if r.get("summary") and n not in dict(rows)]
        if missing:
            lines += ["", f"Not measured ({workload} not sent by their harness module): "
                      f"{', '.join(missing)}."]
    rows = [(n, r["summary"]["latency"]) for n, r in results.items()
            if (r.get("summary") or {}).get("latency")]
    if rows:
        lines += ["", "**latency**: sequential send-and-wait of empty tasks, ms:", "",
                  "| configuration | p50 | p99 |", "|---|---:|---:|"]
        lines += [f"| {n} | {cell(f.get('p50_ms'), 2)} | {cell(f.get('p99_ms'), 2)} |"
                  for n, f in rows]
    for base, table in report["ratios"].items():
        if not table:
            continue
        lines += ["", f"Ratios of medians, {base} ÷ peer: tasks/s (higher is better for us), "
                  "then whole CPU per task and round-trip p50 (lower is better for us):", "",
                  "| peer | " + " | ".join(f"{w} tasks/s" for w, _ in WORKLOADS)
                  + " | " + " | ".join(f"{w} CPU" for w, _ in WORKLOADS) + " | RTT p50 |",
                  "|---|" + "---:|" * (2 * len(WORKLOADS) + 1)]
        for peer, r in table.items():
            lines.append(f"| {peer} | " + " | ".join(_ratio(v) for v in r.values()) + " |")
    return "\n".join(lines)
