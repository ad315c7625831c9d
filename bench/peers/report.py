"""The peer comparison's report: best round per configuration, ratios, the Markdown table.

Used by bench/peers.py (standard library only). A configuration's rounds are the harness
JSON objects (bench/peers/harness.py), or {"error": ...} for a run that failed.
"""

from __future__ import annotations


def best_of(rounds: list[dict]) -> dict | None:
    """Per workload, the round with the best main figure (with that round's other figures)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return None
    best = {"version": ok[0]["version"]}
    best["noop"] = max((r["noop"] for r in ok), key=lambda w: w["tasks_per_s"])
    best["latency"] = min((r["latency"] for r in ok), key=lambda w: w["p50_ms"])
    for workload in ("io", "call"):
        runs = [r[workload] for r in ok if workload in r]
        if runs:
            best[workload] = max(runs, key=lambda w: w["tasks_per_s"])
    return best


METRICS = [  # (name, workload, key): ratios are ours / peer for each
    ("noop_tasks_per_s", "noop", "tasks_per_s"),
    ("noop_cpu_us_per_task", "noop", "worker_cpu_us_per_task"),
    ("latency_p50_ms", "latency", "p50_ms"),
    ("latency_p99_ms", "latency", "p99_ms"),
    ("io_tasks_per_s", "io", "tasks_per_s"),
    ("io_cpu_us_per_task", "io", "worker_cpu_us_per_task"),
    ("call_tasks_per_s", "call", "tasks_per_s"),
    ("call_cpu_us_per_task", "call", "worker_cpu_us_per_task"),
]


def figures_of(best: dict, fallback_io: dict | None = None) -> dict:
    io = best.get("io") or fallback_io
    out = {}
    for name, workload, key in METRICS:
        source = io if workload == "io" else best.get(workload)
        out[name] = source[key] if source else None
    return out


def ratios(results: dict, base: str) -> dict:
    ours = results.get(base, {}).get("figures")
    if not ours:
        return {}
    table = {}
    for name, result in results.items():
        if name.startswith("ours") or not result.get("figures"):
            continue
        table[name] = {
            m: (ours[m] / result["figures"][m] if ours[m] and result["figures"][m] else None)
            for m, _, _ in METRICS
        }
    return table


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _ours_floor(ping: dict | None) -> str:
    if not ping:
        return ""
    return (f" With our client library ({ping.get('client')}): PING p50 "
            f"{fmt(ping.get('p50_ms'), 3)} ms, queue round trip p50 "
            f"{fmt(ping.get('queue_p50_ms'), 3)} ms.")


def markdown(report: dict) -> str:
    meta, ping = report["meta"], report["redis_ping"]
    lines = [
        f"{meta['tasks']:,} no-op tasks, {meta['latency_samples']} sequential round trips, "
        f"{meta['io_tasks']:,} I/O tasks (10 ms sleep each), {meta.get('call_tasks') or 0:,} tasks "
        f"making one Redis call each; results stored in Redis "
        f"({meta['url']}); best of {meta['rounds']} interleaved rounds on {meta['cpus']} cores "
        f"(shared machine, figures are noisy). Bare Redis round trip ({ping.get('client', 'redis-py')} "
        f"PING x {meta['ping_samples']}): p50 {fmt(ping.get('p50_ms'), 3)} ms, "
        f"p99 {fmt(ping.get('p99_ms'), 3)} ms. Bare queue round trip (LPUSH, BRPOP in a second "
        f"process, LPUSH of the reply, BRPOP of it): p50 {fmt(ping.get('queue_p50_ms'), 3)} ms, "
        f"p99 {fmt(ping.get('queue_p99_ms'), 3)} ms.{_ours_floor(report.get('redis_ping_ours'))}",
        "",
        "| implementation | version | configuration | no-op tasks/s | worker CPU µs/task | RTT p50 ms "
        "| RTT p99 ms | I/O tasks/s | I/O worker CPU µs/task | one Redis call tasks/s "
        "| its worker CPU µs/task |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        f = result.get("figures")
        if not f:
            lines.append(
                f"| {name} | | {result['about']} | failed: {result.get('error', '?')} "
                "| | | | | | | |"
            )
            continue
        lines.append(
            f"| {name} | {result['version']} | {result['about']} | {fmt(f['noop_tasks_per_s'])} "
            f"| {fmt(f['noop_cpu_us_per_task'])} | {fmt(f['latency_p50_ms'], 2)} "
            f"| {fmt(f['latency_p99_ms'], 2)} | {fmt(f['io_tasks_per_s'])} | {fmt(f['io_cpu_us_per_task'])} "
            f"| {fmt(f['call_tasks_per_s'])} | {fmt(f['call_cpu_us_per_task'])} |"
        )
    for base, table in report["ratios"].items():
        if not table:
            continue
        lines += [
            "",
            f"Ratios {base} ÷ peer (tasks/s: higher is better for us; CPU and latency: lower is "
            "better for us):",
            "",
            "| peer | no-op tasks/s | no-op CPU/task | RTT p50 | RTT p99 | I/O tasks/s | I/O CPU/task "
            "| call tasks/s | call CPU/task |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for peer, r in table.items():
            lines.append(f"| {peer} | " + " | ".join(_ratio(r[m]) for m, _, _ in METRICS) + " |")
    return "\n".join(lines)
