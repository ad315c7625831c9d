"""Peer comparison on RabbitMQ: ours on amqp:// against upstream Celery and dramatiq, one run.

    .venv/bin/python bench/rabbitmq.py --rounds 3 --json rabbitmq.json
    .venv/bin/python bench/rabbitmq.py --quick --rounds 1 --only ours   # smoke test

Every configuration runs the workloads of bench/peers.py's harness (bench/peers/harness.py)
with the broker on RabbitMQ (``--amqp``, a virtual host made afresh before every run with
``rabbitmqctl``) and results in Redis (``--url``, database 13 by default, flushed before and
after every run):

1. no-op burst: ``--tasks`` no-op tasks sent one framework call each, then every result
   awaited in send order; tasks/s from the first send to the last result, and the worker's
   CPU time per task (user+system of the worker's whole process tree, prefork children and
   dramatiq's worker processes included, from /proc);
2. round-trip latency: ``--latency-samples`` sequential send-and-wait no-op tasks, p50/p99;
3. one Redis call: ``--call-tasks`` tasks whose body makes one Redis round trip (an INCR with
   the process's blocking client), tasks/s and worker CPU per task.

Configurations: ours (1 loop + 4 sync workers; with publisher confirms, our default, and
without them, as the peers publish by default; without them and without the direct
publisher, ``ours-portal``, which shows what it buys; and in 2 worker processes), upstream
Celery 5.7 with its threads pool and its prefork pool, both tuned as its optimizing guide
advises for many short tasks (``--without-gossip --without-mingle --without-heartbeat``,
``-O fair``, a high prefetch multiplier), and dramatiq's RabbitmqBroker (pika). Peers run in
the venvs bench/peers.py makes (``.cache/peers/<name>``, pinned versions). Runs are
interleaved round by round; each figure is the median of the rounds, with their min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import peers  # noqa: E402  (bench/peers.py: venvs, running a harness process)

UPSTREAM_TUNING = "--without-gossip --without-mingle --without-heartbeat --prefetch-multiplier 64"


@dataclass(frozen=True)
class Config:
    """One row of the table."""

    name: str  #: what --only selects
    venv: str | None  #: a key of peers.VENVS, or None for ours
    module: str  #: the peer module under bench/peers/
    worker: str  #: worker options
    about: str  #: the configuration, for the table
    env: dict[str, str] = field(default_factory=dict)


OURS = "--loop-workers 1 --loop-concurrency 100 --sync-workers 4"
#: Upstream Celery (kombu's py-amqp transport) and dramatiq (pika) publish without publisher
#: confirms by default; ours confirms each publish (so a returned ``delay()`` was accepted),
#: and a confirm of a persistent message to a durable queue waits for RabbitMQ's disk flush.
NO_CONFIRMS = {"BENCH_TRANSPORT_OPTIONS": json.dumps({"confirm_publish": False})}
CONFIGS = [
    Config("ours", None, "celery_peer", OURS,
           "`def` tasks: 1 loop + 4 sync workers; publisher confirms (our default)"),
    Config("ours-no-confirms", None, "celery_peer", OURS,
           "as ours, confirm_publish=False (as the peers publish)", NO_CONFIRMS),
    Config("ours-portal", None, "celery_peer", OURS,
           "as ours-no-confirms, direct_publish=False",
           {"BENCH_TRANSPORT_OPTIONS": json.dumps({"confirm_publish": False, "direct_publish": False})}),
    Config("ours-processes", None, "celery_peer", f"{OURS} --processes 2",
           "as ours, in 2 worker processes (--processes 2), confirm_publish=False", NO_CONFIRMS),
    Config("celery-threads", "celery", "celery_peer", f"-P threads -c 8 {UPSTREAM_TUNING}",
           "threads pool c=8, prefetch multiplier 64, without gossip/mingle/heartbeat"),
    Config("celery-prefork", "celery", "celery_peer", f"-P prefork -c 2 -O fair {UPSTREAM_TUNING}",
           "prefork pool c=2, -O fair, prefetch multiplier 64, without gossip/mingle/heartbeat"),
    Config("dramatiq", "dramatiq-amqp", "dramatiq_peer", "--processes 2 --threads 8",
           "RabbitmqBroker (pika), 2 processes x 8 threads; Results middleware, Redis backend"),
]
QUICK = {"tasks": 200, "latency_samples": 50, "call_tasks": 200}
FULL = {"tasks": 10000, "latency_samples": 500, "call_tasks": 5000}

#: (column, workload, key) of the harness JSON; each reported as median [min..max].
METRICS = [
    ("no-op tasks/s", "noop", "tasks_per_s"),
    ("no-op worker CPU µs/task", "noop", "worker_cpu_us_per_task"),
    ("RTT p50 ms", "latency", "p50_ms"),
    ("RTT p99 ms", "latency", "p99_ms"),
    ("one Redis call tasks/s", "call", "tasks_per_s"),
    ("its worker CPU µs/task", "call", "worker_cpu_us_per_task"),
]


def wait_for_broker(amqp: str, timeout: float = 180.0) -> None:
    """Until the broker accepts connections: a run that starts while the server is being
    restarted (by a fault test on a shared machine) would fail for nothing."""
    parts = urlsplit(amqp)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise peers.RunFailed(f"RabbitMQ unreachable for {timeout:.0f} s") from None
            time.sleep(1.0)


def fresh_vhost(amqp: str) -> str:
    """Delete and re-create the vhost of ``amqp`` (user guest, all permissions) with the
    server's own CLI, so a run starts with no queue or message left by an earlier one."""
    wait_for_broker(amqp)
    parts = urlsplit(amqp)
    vhost = parts.path[1:] or "/"
    user = parts.username or "guest"
    code = (f"V = binary:decode_hex(<<\"{vhost.encode().hex()}\">>), "
            f"U = binary:decode_hex(<<\"{user.encode().hex()}\">>), "
            "catch rabbit_vhost:delete(V, U), rabbit_vhost:add(V, U), "
            "rabbit_auth_backend_internal:set_permissions(U, V, <<\".*\">>, <<\".*\">>, "
            "<<\".*\">>, U).")
    done = subprocess.run(["rabbitmqctl", "-q", "eval", code], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 or done.stdout.strip() != "ok":
        raise peers.RunFailed(f"could not re-create vhost {vhost!r}: {done.stdout}{done.stderr}")
    return amqp


def run_config(config: Config, python: Path, args: argparse.Namespace) -> dict:
    """One harness run of ``config`` on a fresh vhost and a flushed Redis database."""
    options = {
        "--label": config.name,
        "--url": args.url,
        "--tasks": args.tasks,
        "--io-tasks": 0,
        "--latency-samples": args.latency_samples,
        "--call-tasks": args.call_tasks,
        "--worker-noop": config.worker,
    }
    cmd = [str(python), str(peers.PEERS_DIR / "harness.py"), config.module,
           *peers._flags(options)]
    env = dict(os.environ, **config.env, BENCH_BROKER_URL=fresh_vhost(args.amqp))
    env.pop("PYTHONPATH", None)
    if config.venv is None and args.ours_src:
        env["PYTHONPATH"] = str(args.ours_src)
    try:
        return peers.run_process(cmd, env, args.run_timeout)
    finally:
        peers.harness.flush_db(args.url)


def run_rounds(selected: list[Config], pythons: dict, args: argparse.Namespace) -> dict:
    """All rounds, interleaved; a failed run is tried again up to --retries times."""
    rounds: dict[str, list[dict]] = {c.name: [] for c in selected}
    try:
        for n in range(1, args.rounds + 1):
            for config in selected:
                failures, load = [], os.getloadavg()[0]
                for _ in range(1 + args.retries):
                    try:
                        result = run_config(config, pythons[config.venv], args)
                    except peers.RunFailed as exc:
                        failures.append(str(exc))
                        peers.log(f"round {n} {config.name}: FAILED {str(exc).splitlines()[0]}")
                        time.sleep(5.0)  # a broker restart: let it finish before the retry
                        continue
                    peers.log(f"round {n} {config.name}: {result['noop']['tasks_per_s']:.0f} "
                              f"tasks/s, p50 {result['latency']['p50_ms']:.2f} ms, one Redis "
                              f"call {result['call']['tasks_per_s']:.0f} tasks/s")
                    break
                else:
                    result = {"error": failures[-1]}
                rounds[config.name].append(result | {"round": n, "failed_attempts": failures,
                                                     "loadavg_1m_before": load})
    except KeyboardInterrupt:
        peers.log("interrupted: reporting the rounds done so far")
    return rounds


def spread(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric, the median, min and max over the rounds that produced figures."""
    ok = [r for r in rounds if "error" not in r]
    out = {}
    for column, workload, key in METRICS:
        values = [r[workload][key] for r in ok if workload in r]
        if values:
            out[column] = {"median": statistics.median(values), "min": min(values),
                           "max": max(values)}
    return out


def _cell(stats: dict | None, digits: int) -> str:
    if not stats:
        return "—"
    fmt = peers.report.fmt
    return (f"{fmt(stats['median'], digits)} [{fmt(stats['min'], digits)}.."
            f"{fmt(stats['max'], digits)}]")


def _ratio(ours: dict, peer: dict, column: str) -> float | None:
    a, b = ours.get(column), peer.get(column)
    return a["median"] / b["median"] if a and b and b["median"] else None


def _load(results: dict) -> str:
    loads = [r["loadavg_1m_before"] for res in results.values() for r in res["rounds"]
             if "loadavg_1m_before" in r]
    return f" (1-minute load average {min(loads):.1f} to {max(loads):.1f})" if loads else ""


def markdown(report: dict) -> str:
    meta, results = report["meta"], report["results"]
    lines = [
        f"{meta['tasks']:,} no-op tasks, {meta['latency_samples']} sequential round trips, "
        f"{meta['call_tasks']:,} tasks making one Redis call each; broker RabbitMQ "
        f"({meta['amqp_safe']}, a fresh vhost per run), results in Redis ({meta['url']}); "
        f"median [min..max] of {meta['rounds']} interleaved rounds on {meta['cpus']} cores"
        f"{_load(results)}.",
        "",
        "| implementation | version | configuration | " + " | ".join(c for c, _, _ in METRICS)
        + " |",
        "|---|---|---|" + "---:|" * len(METRICS),
    ]
    for name, result in results.items():
        if not result.get("spread"):
            lines.append(f"| {name} | | {result['about']} | failed: {result.get('error', '?')} |"
                         + " |" * (len(METRICS) - 1))
            continue
        digits = {"RTT p50 ms": 2, "RTT p99 ms": 2}
        cells = [_cell(result["spread"].get(c), digits.get(c, 0)) for c, _, _ in METRICS]
        done = sum("error" not in r for r in result["rounds"])
        about = result["about"] + (f" ({done} of {meta['rounds']} rounds)"
                                   if done < meta["rounds"] else "")
        lines.append(f"| {name} | {result['version']} | {about} | " + " | ".join(cells) + " |")
    for base in ("ours", "ours-no-confirms", "ours-processes"):
        ours = results.get(base, {}).get("spread")
        peers_done = {n: r["spread"] for n, r in results.items()
                      if not n.startswith("ours") and r.get("spread")}
        if not ours or not peers_done:
            continue
        lines += ["", f"Ratios of medians, {base} ÷ peer (tasks/s: higher is better for us; "
                  "CPU and latency: lower is better for us):", "",
                  "| peer | " + " | ".join(c for c, _, _ in METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        for name, spread_ in peers_done.items():
            ratios = [_ratio(ours, spread_, c) for c, _, _ in METRICS]
            lines.append(f"| {name} | " + " | ".join(
                "—" if r is None else f"{r:.2f}×" for r in ratios) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [c.name for c in CONFIGS]
    parser.add_argument("--tasks", type=int, help=f"no-op tasks per burst (default {FULL['tasks']})")
    parser.add_argument("--latency-samples", type=int, help=f"default {FULL['latency_samples']}")
    parser.add_argument("--call-tasks", type=int, help=f"default {FULL['call_tasks']}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(names),
                        help=f"comma separated, from: {','.join(names)}")
    parser.add_argument("--quick", action="store_true", help=f"small counts: {QUICK}")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all figures here")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/celery-interop-bench",
                        help="the broker; its vhost is deleted and re-created before every run")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13",
                        help="results; flushed before and after each run")
    parser.add_argument("--retries", type=int, default=2,
                        help="run a failed run again this often (the broker may be restarted)")
    parser.add_argument("--run-timeout", type=float, default=600.0)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "peers")
    parser.add_argument("--ours-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--ours-src", type=Path, default=ROOT / "src",
                        help="PYTHONPATH for ours (this checkout's package); '' for the "
                        "installed one")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.only.split(",")) - set(names)
    if unknown:
        parser.error(f"unknown --only {','.join(sorted(unknown))}; known: {','.join(names)}")
    if not urlsplit(args.amqp).path.strip("/"):
        parser.error("--amqp needs a vhost of its own (it is deleted and re-created)")
    return args


def main() -> None:
    args = parse_args()
    selected = [c for c in CONFIGS if c.name in args.only.split(",")]
    pythons: dict[str | None, Path] = {None: args.ours_python}
    for venv in sorted({c.venv for c in selected if c.venv}):
        pythons[venv] = peers.peer_python(args.cache, venv)
    started = time.time()
    peers.harness.flush_db(args.url)
    rounds = run_rounds(selected, pythons, args)
    results = {}
    for config in selected:
        ok = [r for r in rounds[config.name] if "error" not in r]
        entry = {"about": config.about, "worker": config.worker,
                 "pins": peers.VENVS.get(config.venv or "", []), "rounds": rounds[config.name]}
        if ok:
            entry.update(version=ok[0]["version"], spread=spread(ok))
        else:
            errors = [r["error"].splitlines()[0] for r in rounds[config.name] if "error" in r]
            entry["error"] = errors[-1] if errors else "not run"
        results[config.name] = entry
    parts = urlsplit(args.amqp)
    report = {
        "meta": {
            "tasks": args.tasks, "latency_samples": args.latency_samples,
            "call_tasks": args.call_tasks, "rounds": args.rounds, "url": args.url,
            "amqp_safe": f"{parts.scheme}://{parts.hostname}:{parts.port or 5672}"
                         f"/{quote(parts.path[1:], safe='')}",
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "started": started, "seconds": time.time() - started,
            "command": shlex.join(sys.argv),
        },
        "results": results,
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
