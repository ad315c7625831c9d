"""Turn one benchmark run's JSON into a history record in perf/history/ (standard library only).

    .venv/bin/python perf/record.py --run -- .venv/bin/python bench/compare.py --tasks 3000 --rounds 1 --json
    .venv/bin/python perf/record.py --run -- .venv/bin/python bench/peers.py --quick --rounds 1 --json /tmp/p.json
    .venv/bin/python perf/record.py peers.json            # a file bench/peers.py --json wrote earlier
    .venv/bin/python perf/record.py --run -- .venv/bin/python bench/scaling.py --rounds 3 --json /tmp/s.json
    .venv/bin/python bench/compare.py --json | .venv/bin/python perf/record.py - --command "..."

With ``--run`` the command is run here (from the repository root) and its JSON is read from
the file after its ``--json PATH`` option when it has one, else from its standard output; the
command is stored as given. Without it, pass the JSON file (or ``-`` for standard input) and,
unless the JSON names its own command (bench/peers.py and bench/scaling.py do), ``--command``.

Accepted shapes (unknown benchmarks, implementations, workloads and metrics are kept):

* bench/compare.py --json: ``{label: {"tasks_per_s": ..., "rtt_p50_ms": ..., ...}}``;
* bench/peers.py --json PATH: ``{"meta": ..., "results": {impl: {"median": {workload: ...}}}}``
  (``"best"`` in runs before issue 27);
* one bench/peers/harness.py line: ``{"impl": ..., "noop": {...}, "latency": {...}}``;
* bench/scaling.py --json PATH: ``{"meta": {"tool": "bench/scaling.py", ...},
  "interpreters": {...}, "points": [...]}``.

There is one record per (commit, machine): recording into a file that already exists merges
the new benchmarks into it (same name: the new figures win) and appends to its list of runs.
``--dry-run`` prints the merged record instead of writing it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT / "perf" / "history"
SCHEMA = 1

#: Input metric names -> record metric names; every other numeric field keeps its name.
METRIC_ALIASES = {
    "worker_cpu_us_per_task": "cpu_us_per_task",
    "rtt_p50_ms": "p50_ms",
    "rtt_p99_ms": "p99_ms",
}
#: bench/peers.py's flat "figures" names -> (workload, metric), used when "best" is missing.
PEER_FIGURES = {
    "noop_tasks_per_s": ("noop", "tasks_per_s"),
    "noop_cpu_us_per_task": ("noop", "cpu_us_per_task"),
    "latency_p50_ms": ("latency", "p50_ms"),
    "latency_p99_ms": ("latency", "p99_ms"),
    "io_tasks_per_s": ("io", "tasks_per_s"),
    "io_cpu_us_per_task": ("io", "cpu_us_per_task"),
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _round(value: float) -> float:
    """6 significant digits: far below the noise, and records stay short and readable."""
    return value if isinstance(value, int) else float(f"{value:.6g}")


def split_fields(raw: dict) -> tuple[dict[str, float], dict[str, Any]]:
    """Numeric fields (renamed per METRIC_ALIASES, rounded) and the other scalar fields, apart."""
    metrics, info = {}, {}
    for key, value in raw.items():
        if _is_number(value):
            metrics[METRIC_ALIASES.get(key, key)] = _round(value)
        elif isinstance(value, str | bool) or value is None:
            info[key] = value
    return metrics, info


# --- input shapes ----------------------------------------------------------------------------


def detect_kind(data: object) -> str:
    """Which producer wrote ``data``: "scaling", "peers", "harness" or "compare"; ValueError
    otherwise."""
    if isinstance(data, dict) and isinstance(data.get("points"), list) and \
            isinstance(data.get("interpreters"), dict):
        return "scaling"
    if isinstance(data, dict) and isinstance(data.get("results"), dict):
        return "peers"
    if isinstance(data, dict) and isinstance(data.get("noop"), dict) and "impl" in data:
        return "harness"
    if (
        isinstance(data, dict)
        and data
        and all(
            isinstance(v, dict) and any(_is_number(x) for x in v.values()) for v in data.values()
        )
    ):
        return "compare"
    raise ValueError("not a bench/compare.py --json, bench/peers.py --json, bench/scaling.py "
                     "--json or harness.py output")


def from_compare(data: dict) -> dict[str, dict]:
    """Benchmarks of a bench/compare.py --json output, one per configuration label."""
    benchmarks = {}
    for label, raw in data.items():
        metrics, info = split_fields(raw)
        impl = str(info.get("impl", ""))
        ours = "celery-asyncio" in impl or label.lower().startswith(("celery-asyncio", "ours"))
        benchmarks[f"compare: {label}"] = {
            "suite": "compare",
            "workload": "noop",
            "impl": label,
            "ours": ours,
            "metrics": metrics,
            "info": info,
        }
    return benchmarks


def _peer_workloads(result: dict) -> dict[str, dict]:
    """Per workload, the raw figures of one peers.py implementation: the medians of its rounds
    (bench/peers.py since issue 27), or its best round (older runs)."""
    for key in ("median", "best"):
        if isinstance(result.get(key), dict):
            return {w: v for w, v in result[key].items() if isinstance(v, dict)}
    workloads: dict[str, dict] = {}
    for key, value in (result.get("figures") or {}).items():
        if value is None:
            continue
        workload, metric = PEER_FIGURES.get(key, ("other", key))
        workloads.setdefault(workload, {})[metric] = value
    return workloads


def peer_benchmarks(impl: str, workloads: dict[str, dict]) -> dict[str, dict]:
    """One benchmark per (workload, implementation): "peers: noop / dramatiq"."""
    out = {}
    for workload, raw in workloads.items():
        metrics, info = split_fields(raw)
        if metrics:
            out[f"peers: {workload} / {impl}"] = {
                "suite": "peers",
                "workload": workload,
                "impl": impl,
                "ours": impl.startswith("ours"),
                "metrics": metrics,
                "info": info,
            }
    return out


def from_peers(data: dict) -> tuple[dict[str, dict], dict]:
    """Benchmarks of a bench/peers.py --json report, and its comparison table (compacted)."""
    benchmarks: dict[str, dict] = {}
    table: dict[str, dict] = {}
    for impl, result in data["results"].items():
        if not isinstance(result, dict):
            continue
        workloads = _peer_workloads(result)
        benchmarks.update(peer_benchmarks(impl, workloads))
        rounds = [r for r in result.get("rounds", []) if isinstance(r, dict)]
        loads = [r["loadavg_1m_before"] for r in rounds if _is_number(r.get("loadavg_1m_before"))]
        table[impl] = {
            "version": result.get("version"),
            "about": result.get("about"),
            "ours": impl.startswith("ours"),
            "error": result.get("error"),
            "figures": {w: split_fields(v)[0] for w, v in workloads.items()},
            "rounds": len(rounds),
            "failed_attempts": sum(len(r.get("failed_attempts", [])) for r in rounds),
            "max_loadavg_1m": max(loads) if loads else None,
        }
    meta = {k: v for k, v in (data.get("meta") or {}).items() if not isinstance(v, dict | list)}
    medians = any(isinstance(r, dict) and "median" in r for r in data["results"].values())
    meta["statistic"] = "median" if medians else "best"  # which round's figures the table holds
    pings = {key: {k: v for k, v in (data.get(key) or {}).items()
                   if not isinstance(v, dict | list)}
             for key in ("redis_ping", "redis_ping_ours")}  # redis-py's floors, and ours
    return benchmarks, {"meta": meta, **pings, "implementations": table}


#: bench/scaling.py's per-point fields kept as metrics (the rest of a point is its rounds).
SCALING_METRICS = ("threads", "task_cpu_ms", "tasks", "tasks_per_s", "median_tasks_per_s", "speedup",
                   "median_speedup", "cpu_us_per_task", "elapsed_s", "good_rounds")


def scaling_workload(point: dict) -> str:
    """A sweep's workload with its task size: "sync-cpu 5 ms" (sweeps of other sizes are
    other benchmarks), or "noop"."""
    cpu_ms = point.get("task_cpu_ms")
    workload = str(point.get("workload"))
    return f"{workload} {cpu_ms:g} ms" if _is_number(cpu_ms) and cpu_ms else workload


def from_scaling(data: dict) -> tuple[dict[str, dict], dict]:
    """Benchmarks of a bench/scaling.py --json report, one per (workload and task size,
    interpreter, thread count): "scaling: sync-cpu 5 ms / ft / 2 threads"; and its set-up
    (meta, interpreters)."""
    interps = {name: {k: v for k, v in facts.items() if not isinstance(v, dict | list)}
               for name, facts in data["interpreters"].items() if isinstance(facts, dict)}
    benchmarks = {}
    for point in data["points"]:
        if not isinstance(point, dict) or "error" in point:
            continue
        interp = str(point.get("interpreter"))
        metrics, _ = split_fields({k: point.get(k) for k in SCALING_METRICS})
        facts = interps.get(interp, {})
        threads = point.get("threads")
        plural = "" if threads == 1 else "s"
        workload = scaling_workload(point)
        name = f"scaling: {workload} / {interp} / {threads} thread{plural}"
        benchmarks[name] = {
            "suite": "scaling",
            "workload": workload,
            "impl": interp,
            "ours": True,
            "metrics": metrics,
            "info": {
                "interpreter": facts.get("label"),
                "free_threaded": facts.get("free_threaded"),
                "worker_gil": point.get("worker_gil"),
                "worker_python": point.get("worker_python"),
            },
        }
    meta = {k: v for k, v in (data.get("meta") or {}).items() if not isinstance(v, dict)}
    about = (data.get("meta") or {}).get("workload_about") or {}
    sized = {scaling_workload(p): about[p["workload"]] for p in data["points"]
             if isinstance(p, dict) and p.get("workload") in about}
    return benchmarks, {"meta": meta, "workload_about": sized, "interpreters": interps}


def convert(data: object) -> tuple[str, dict[str, dict], dict | None]:
    """(kind, benchmarks, the peer or scaling table or None) for any accepted input."""
    kind = detect_kind(data)
    assert isinstance(data, dict)
    if kind == "scaling":
        benchmarks, table = from_scaling(data)
        return kind, benchmarks, table
    if kind == "compare":
        return kind, from_compare(data), None
    if kind == "harness":
        workloads = {k: v for k, v in data.items() if isinstance(v, dict)}
        return kind, peer_benchmarks(str(data.get("impl")), workloads), None
    benchmarks, table = from_peers(data)
    return kind, benchmarks, table


# --- the machine and the commit ----------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def redis_version(url: str) -> str | None:
    """The server's version from INFO server (Redis or Valkey), or None when it does not answer."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), 2
        ) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply, deadline = b"", time.monotonic() + 2
            while b"\r\n\r\n" not in reply[-8:] and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    text = reply.decode(errors="replace")
    found = dict(re.findall(r"^(\w+):(.*?)\r?$", text, re.M))
    if "valkey_version" in found:
        return f"valkey {found['valkey_version']}"
    return found.get("redis_version")


def machine_id() -> str:
    """This machine's stable id: 8 hex digits of a hash of /etc/machine-id (or the hostname),
    the CPU model and the number of cores (no hostname in clear). bench/suite/passes.py
    keys the perf gate's record by it too."""
    try:
        base = Path("/etc/machine-id").read_text().strip()
    except OSError:
        base = socket.gethostname()
    return hashlib.sha256(f"{base}|{cpu_model()}|{os.cpu_count() or 0}".encode()).hexdigest()[:8]


def machine_info(redis_url: str, machine_id_: str | None = None) -> dict:
    """What the numbers depend on; ``id`` is a stable hash (``machine_id``)."""
    model, cores = cpu_model(), os.cpu_count() or 0
    return {
        "id": machine_id_ or machine_id(),
        "cpu_model": model,
        "cores": cores,
        "python": platform.python_version(),
        "redis": redis_version(redis_url),
        "os": f"{platform.system()} {platform.release()}",
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def commit_info() -> dict:
    """HEAD's sha, committer date (UTC) and subject, and whether tracked files differ from it."""
    sha, date, subject = _git("log", "-1", "--format=%H%n%cI%n%s").strip().split("\n", 2)
    changed = [
        line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    # New files of the package or the benchmarks change what is measured too.
    untracked = [
        line[3:]
        for line in _git(
            "status", "--porcelain", "--untracked-files=all", "--", "src", "bench"
        ).splitlines()
        if line.startswith("??")
    ]
    utc = dt.datetime.fromisoformat(date).astimezone(dt.UTC)
    info = {
        "sha": sha,
        "short": sha[:7],
        "date": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "subject": subject,
        "dirty": bool(changed or untracked),
        "changed_files": sorted(changed + untracked)[:30],
    }
    if info["dirty"]:  # tells two records of one dirty commit apart
        digest = hashlib.sha256(_git("diff", "HEAD").encode())
        for path in sorted(untracked):
            digest.update(path.encode() + b"\0" + (ROOT / path).read_bytes())
        info["diff_sha256"] = digest.hexdigest()[:12]
    return info


# --- the record ----------------------------------------------------------------------------------


def build_record(
    data: object, command: str, commit: dict, machine: dict, run: dict | None = None
) -> dict:
    """A fresh record holding one run's benchmarks (and the peer table of bench/peers.py, or
    the set-up of bench/scaling.py)."""
    kind, benchmarks, table = convert(data)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "peers" and table and table["meta"].get("python"):
        machine = dict(machine, python=table["meta"]["python"])
    entry = {
        "kind": kind,
        "command": command,
        "recorded_at": now,
        "dirty": commit.get("dirty"),
        "diff_sha256": commit.get("diff_sha256"),
        "benchmarks": sorted(benchmarks),
        **(run or {}),
    }
    return {
        "schema": SCHEMA,
        "commit": commit,
        "machine": machine,
        "runs": [entry],
        "benchmarks": benchmarks,
        "peers": table if kind == "peers" else None,
        **({"scaling": table} if kind == "scaling" else {}),
    }


def merge(old: dict, new: dict) -> dict:
    """``new``'s run added to ``old`` (same commit and machine); new figures replace old ones."""
    merged = dict(old)
    merged["runs"] = [*old.get("runs", []), *new["runs"]]
    merged["benchmarks"] = {**old.get("benchmarks", {}), **new["benchmarks"]}
    merged["peers"] = new["peers"] if new.get("peers") else old.get("peers")
    if new.get("scaling") or old.get("scaling"):  # sweeps of other task sizes add up
        old_s, new_s = old.get("scaling") or {}, new.get("scaling") or {}
        merged["scaling"] = {
            "meta": new_s.get("meta") or old_s.get("meta", {}),
            **{key: {**old_s.get(key, {}), **new_s.get(key, {})}
               for key in ("workload_about", "interpreters")},
        }
    merged["machine"] = {**old.get("machine", {}), **{k: v for k, v in new["machine"].items() if v}}
    merged["commit"] = new["commit"]
    return merged


def record_path(record: dict, history: Path = HISTORY) -> Path:
    """``<commit date, UTC>_<short commit>_<machine id>.json``: one file per (commit, machine)."""
    date = record["commit"]["date"].replace(":", "").replace("-", "")
    return history / f"{date}_{record['commit']['short']}_{record['machine']['id']}.json"


def dumps(record: dict) -> str:
    return json.dumps(record, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


# --- the command line ----------------------------------------------------------------------------


def parse_json_output(text: str) -> object:
    """The last JSON object in a command's output (pip or progress lines may precede it)."""
    decoder = json.JSONDecoder()
    found, index = None, text.find("{")
    while index != -1:
        try:
            found, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            end = index + 1
        index = text.find("{", end)
    if found is None:
        raise ValueError("the output holds no JSON object (bench/compare.py needs --json)")
    return found


def json_option(argv: list[str]) -> str | None:
    """The PATH of a ``--json PATH`` / ``--json=PATH`` option (bench/peers.py), if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--json="):
            return arg.split("=", 1)[1]
        if arg == "--json" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            return argv[i + 1]
    return None


def run_command(argv: list[str]) -> tuple[object, dict]:
    """Run the benchmark, return its JSON and facts about the run."""
    load_before, t0 = os.getloadavg()[0], time.time()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(proc.stdout, end="", flush=True)  # the benchmark's own report, as it would have shown it
    if proc.returncode != 0:
        raise SystemExit(f"the benchmark exited with {proc.returncode}")
    json_path = json_option(argv)
    if json_path:
        path = ROOT / json_path
        if not path.exists() or path.stat().st_mtime < t0:
            raise SystemExit(f"the benchmark did not write {path}")
        data = json.loads(path.read_text())
    else:
        data = parse_json_output(proc.stdout)
    return data, {
        "seconds": round(time.time() - t0, 1),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", help="benchmark JSON file, or - for standard input")
    parser.add_argument(
        "--run",
        action="store_true",
        help="run the benchmark command given after -- and record its output",
    )
    parser.add_argument("--command", help="the command that produced INPUT (stored in the record)")
    parser.add_argument("--note", help="stored with the run, e.g. what else the machine was doing")
    parser.add_argument("--dry-run", action="store_true", help="print the record, write nothing")
    parser.add_argument("--history", type=Path, default=HISTORY)
    parser.add_argument(
        "--machine-id", help="instead of the hash of /etc/machine-id, CPU and cores"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="asked for its version"
    )
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(cmd) - 1] if "--" in argv else argv)
    run: dict | None = None
    commit = commit_info()  # before the run: the code it measures
    if args.run:
        if not cmd:
            parser.error("--run needs the command after --")
        data, run = run_command(cmd)
        command = shlex.join(cmd)
    elif args.input:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
        data = parse_json_output(text)
        embedded = data.get("meta", {}).get("command") if isinstance(data, dict) else None
        command = args.command or embedded
        if not command:
            parser.error("--command is needed: this JSON does not say which command produced it")
    else:
        parser.error("give a JSON file or --run CMD")
    try:
        run = {**(run or {}), **({"note": args.note} if args.note else {})}
        record = build_record(
            data, command, commit, machine_info(args.redis_url, args.machine_id), run
        )
    except ValueError as exc:
        parser.error(str(exc))
    if commit["dirty"]:
        print(
            f"note: the working tree differs from HEAD {commit['short']} ({len(commit['changed_files'])} "
            "files); the record says so",
            file=sys.stderr,
        )
    path = record_path(record, args.history)
    if path.exists():
        record = merge(json.loads(path.read_text()), record)
    if args.dry_run:
        print(dumps(record), end="")
        print(
            f"(dry run: would write {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})",
            file=sys.stderr,
        )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(record))
    print(f"wrote {path} ({len(record['benchmarks'])} benchmarks, {path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
