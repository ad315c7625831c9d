"""Canvas benchmark, side by side with upstream Celery in one run: groups, chords, chains.

    .venv/bin/python bench/canvas.py --rounds 3
    .venv/bin/python bench/canvas.py --rounds 3 --prefork --json canvas.json
    .venv/bin/python bench/canvas.py --only ours,base --base /tmp/basevenv/bin/python  # A/B

Each run (bench/canvas_driver.py, in the implementation's own Python) starts a worker on
bench/canvasapp.py and drives it from one client with the blocking API: a 1,000-member
group (build, ``delay()``, ``get()`` of every value), a 1,000-member chord (no-op header,
sum body, ``get()`` of the sum), a 10-step chain (p50 of its total latency, and per step),
next to the round trip of a single task measured in the same run; and the same group and
chord with members that do real work (two Redis round trips, or ~1 ms of CPU). Workers:
ours ``--loop-workers 1 --sync-workers 4`` (``def`` tasks on the sync workers, the
``*_async`` workloads' ``async def`` tasks on the loop worker); upstream Celery 5.7
``-P threads -c 8`` (and ``-P prefork -c 2`` with ``--prefork``). Runs are interleaved (ours,
upstream, ours, ...) round by round on the same Redis (database 13, flushed before and after
each run); each figure is the best of ``--rounds`` (of ``--reps`` tries within each run).

Then the sends are counted: a client with no worker sends a 1,000-member group and chord
through a proxy in this process that parses the commands it forwards, and delays every
reply by ``--delay-ms``: a *round trip* is counted each time a connection writes again
after a reply reached it, so a pipelined batch counts once however Redis splits its
replies, and a command sent only after the previous one's reply counts once each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bench" / "canvas_driver.py"
sys.path.insert(0, str(ROOT / "bench"))
import peers  # noqa: E402  (bench/peers.py: the pinned upstream venv)

OURS_WORKER = ["--loop-workers", "1", "--sync-workers", "4"]
#: label -> (implementation, worker options). "base" is ours from another install (--base).
CONFIGS = {
    "ours": ("ours", OURS_WORKER),
    "base": ("base", OURS_WORKER),
    "upstream-threads": ("upstream", ["-P", "threads", "-c", "8"]),
    "upstream-prefork": ("upstream", ["-P", "prefork", "-c", "2"]),
}
THROUGHPUT = ["group_noop", "group_noop_async", "chord_noop", "chord_noop_async",
              "group_redis", "group_redis_async", "chord_redis", "chord_redis_async",
              "group_cpu", "chord_cpu"]
CHAINS = ["chain_noop", "chain_noop_async"]


# -- the runs ------------------------------------------------------------------------------------


def run_driver(python: Path, args, worker: list[str]) -> dict:
    cmd = [str(python), str(DRIVER), "run", "--url", args.url, "--members", str(args.members),
           "--chain-steps", str(args.chain_steps), "--chain-samples", str(args.chain_samples),
           "--rtt-samples", str(args.rtt_samples), "--reps", str(args.reps),
           "--workloads", args.workloads, "--", *worker]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout)
    if out.returncode != 0:
        raise SystemExit(f"canvas run failed ({python} {' '.join(worker)}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def better(name: str, metric: str, new: float, old: float) -> bool:
    return new > old if metric == "tasks_per_s" else new < old


def keep_best(best: dict, result: dict) -> None:
    """Best of the rounds, figure by figure (a workload's figures come from its best run)."""
    for name, figures in result.items():
        if not isinstance(figures, dict):
            best.setdefault(name, figures)
            continue
        metric = "tasks_per_s" if "tasks_per_s" in figures else \
            "step_p50_ms" if "step_p50_ms" in figures else "p50_ms"
        old = best.get(name)
        if old is None or better(name, metric, figures[metric], old[metric]):
            best[name] = figures


# -- counting the sends --------------------------------------------------------------------------


class _Commands:
    """Incremental RESP parser of a client's request stream: counts commands by name."""

    def __init__(self, counts: Counter) -> None:
        self.buf = bytearray()
        self.counts = counts

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self._command_end()
            if end is None:
                return
            del self.buf[:end]

    def _command_end(self) -> int | None:
        buf = self.buf
        line = buf.find(b"\r\n")
        if line < 0:
            return None
        if buf[:1] != b"*":  # an inline command
            self.counts[bytes(buf[:line]).split(b" ", 1)[0].upper().decode()] += 1
            return line + 2
        pos, name = line + 2, None
        for _ in range(int(buf[1:line])):
            head = buf.find(b"\r\n", pos)
            if head < 0:
                return None
            size = int(buf[pos + 1:head])
            if len(buf) < head + 2 + size + 2:
                return None
            if name is None:
                name = bytes(buf[head + 2:head + 2 + size]).upper().decode()
            pos = head + 2 + size + 2
        self.counts[name or "?"] += 1
        return pos


class CountingProxy:
    """A TCP proxy to Redis on its own thread and event loop (see the module docstring).

    Its counters live on its loop: ``reset`` and ``snapshot`` run there, called from any
    thread through ``run_coroutine_threadsafe``; ``delay`` is read on the loop and set
    only while no send is under way.
    """

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target = (host, port)
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.commands: Counter = Counter()  # shared with each connection's parser
        self._reset_counters()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _reset_counters(self) -> None:
        self.commands.clear()
        self.round_trips = 0
        self.connections = 0
        self.bytes_up = 0

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        replied = [True]  # a reply reached the client since it last wrote (a new one: yes)
        parser = _Commands(self.commands)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if replied[0]:
                    self.round_trips += 1
                    replied[0] = False
                self.bytes_up += len(data)
                parser.feed(data)
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            pending: asyncio.Queue = asyncio.Queue()

            async def deliver() -> None:
                while True:
                    due, data = await pending.get()
                    if data is None:
                        writer.close()
                        return
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    replied[0] = True
                    writer.write(data)
                    await writer.drain()

            delivery = asyncio.ensure_future(deliver())
            while data := await up_reader.read(65536):
                pending.put_nowait((time.monotonic() + self.delay, data))
            pending.put_nowait((0.0, None))
            await delivery

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            writer.close()
            up_writer.close()

    def _on_loop(self, fn):
        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def reset(self) -> None:
        self._on_loop(self._reset_counters)

    def snapshot(self) -> dict:
        return self._on_loop(lambda: {"round_trips": self.round_trips,
                                      "commands": dict(self.commands.most_common()),
                                      "total_commands": sum(self.commands.values()),
                                      "connections": self.connections,
                                      "bytes_sent": self.bytes_up})


def count_sends(python: Path, args) -> dict:
    """Commands and round trips of sending a ``--members`` group and chord (no worker)."""
    host, port = "127.0.0.1", 6379
    proxy = CountingProxy(host, port, args.delay_ms / 1000)
    db = args.url.rsplit("/", 1)[1]
    url = f"redis://127.0.0.1:{proxy.port}/{db}"
    proc = subprocess.Popen([str(python), str(DRIVER), "send-count", "--url", url,
                             "--members", str(args.members)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    counts = {}
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"send-count failed ({python})")
        for kind in ("group", "chord"):
            proxy.reset()
            proc.stdin.write(kind + "\n")
            proc.stdin.flush()
            sent = json.loads(proc.stdout.readline())
            time.sleep(0.2)  # anything written after the call returned is counted too
            counts[kind] = {**proxy.snapshot(), "seconds": sent["seconds"]}
    finally:
        proc.stdin.close()
        proc.wait(60)
        subprocess.run([str(python), str(ROOT / "bench" / "valkey_or_redis.py")],
                       env={"BENCH_URL": args.url}, check=True)
    return counts


# -- the report ----------------------------------------------------------------------------------


def report(best: dict, rounds: list[dict], sends: dict, args) -> None:
    labels = list(best)
    ref = "upstream-threads" if "upstream-threads" in best else None
    print(f"Canvas benchmark: {args.members}-member groups and chords, {args.chain_steps}-step "
          f"chains; best of {args.rounds} interleaved rounds ({args.reps} tries each); "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    for label in labels:
        print(f"  {label}: {best[label]['impl']}, worker {best[label]['worker']}")
    head = f"{'workload':22}" + "".join(f"{label:>18}" for label in labels)
    if ref:
        head += "".join(f"{label + ' / threads':>28}" for label in labels if label != ref)
    print("\ntasks/s (members / span from building the canvas to its last value)")
    print(head)
    for name in THROUGHPUT:
        cells = [best[label].get(name, {}).get("tasks_per_s") for label in labels]
        if all(c is None for c in cells):
            continue
        row = f"{name:22}" + "".join(f"{c:18,.0f}" if c else f"{'-':>18}" for c in cells)
        if ref and best[ref].get(name):
            base = best[ref][name]["tasks_per_s"]
            row += "".join(f"{c / base:27.1f}x" if c else f"{'-':>28}"
                           for label, c in zip(labels, cells, strict=True) if label != ref)
        print(row)
    print("\nby round (tasks/s of the best try in each run, in run order)")
    for name in THROUGHPUT:
        cells = []
        for label in labels:
            values = [r[name]["tasks_per_s"] for r in rounds if r["label"] == label and name in r]
            if values:
                cells.append(f"{label} " + "/".join(f"{v:,.0f}" for v in values))
        if cells:
            print(f"{name:22}" + "; ".join(cells))
    print("\nworker CPU per member, µs (its process tree; same runs)")
    for name in THROUGHPUT:
        cells = [best[label].get(name, {}).get("worker_cpu_us_per_task") for label in labels]
        if any(c is not None for c in cells):
            print(f"{name:22}" + "".join(f"{c:18,.0f}" if c is not None else f"{'-':>18}"
                                         for c in cells))
    print(f"\nlatency, ms (p50, best run): one task's round trip, and a {args.chain_steps}-step "
          "chain (total, per step, per step / the round trip of the chain's run)")
    for label in labels:
        r = best[label]
        line = f"{label:18} rtt {r['rtt']['p50_ms']:6.3f}"
        if "rtt_async" in r:
            line += f" (async def {r['rtt_async']['p50_ms']:.3f})"
        for name in CHAINS:
            if name in r:
                line += (f"; {name} {r[name]['total_p50_ms']:6.2f} total, "
                         f"{r[name]['step_p50_ms']:.3f}/step = {r[name]['step_over_rtt']:.2f}x "
                         "its run's rtt")
        print(line)
    if sends:
        print(f"\nsending one {args.members}-member canvas (no worker; replies delayed "
              f"{args.delay_ms} ms by the counting proxy)")
        for label, kinds in sends.items():
            for kind, c in kinds.items():
                top = ", ".join(f"{k} {v}" for k, v in list(c["commands"].items())[:5])
                print(f"  {label:18} {kind:5}: {c['round_trips']:5} round trips, "
                      f"{c['total_commands']:5} commands ({top}); {c['seconds'] * 1e3:.0f} ms "
                      "with the delay")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2, help="tries of each group/chord per run")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--chain-steps", type=int, default=10)
    parser.add_argument("--chain-samples", type=int, default=30)
    parser.add_argument("--rtt-samples", type=int, default=300)
    parser.add_argument("--workloads", default=",".join(THROUGHPUT + CHAINS))
    parser.add_argument("--only", default="ours,upstream-threads",
                        help=f"configurations, in run order, of: {', '.join(CONFIGS)}")
    parser.add_argument("--prefork", action="store_true", help="add upstream-prefork")
    parser.add_argument("--base", type=Path, help="python of another install of ours (A/B)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "peers",
                        help="where bench/peers.py keeps its venvs (upstream Celery's is 'celery')")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--delay-ms", type=float, default=5.0,
                        help="reply delay of the counting proxy")
    parser.add_argument("--no-count", action="store_true", help="skip counting the sends")
    parser.add_argument("--run-timeout", type=float, default=1200)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    labels = [label for label in args.only.split(",") if label]
    if args.prefork and "upstream-prefork" not in labels:
        labels.append("upstream-prefork")
    pythons = {"ours": Path(sys.executable)}
    if any(CONFIGS[label][0] == "upstream" for label in labels):
        pythons["upstream"] = peers.peer_python(args.cache, "celery")
    if "base" in labels:
        if args.base is None:
            raise SystemExit("--only base needs --base PYTHON")
        pythons["base"] = args.base
    best: dict[str, dict] = {label: {} for label in labels}
    rounds: list[dict] = []
    for n in range(args.rounds):
        # Alternate the order, so that neither side always runs right after the other.
        order = labels if n % 2 == 0 else labels[::-1]
        for label in order:
            impl, worker = CONFIGS[label]
            started = time.monotonic()
            result = run_driver(pythons[impl], args, worker)
            rounds.append({"round": n + 1, "label": label, **result})
            keep_best(best[label], result)
            print(f"round {n + 1}/{args.rounds} {label:18} ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr)
    sends = {} if args.no_count else \
        {label: count_sends(pythons[CONFIGS[label][0]], args)
         for label in dict.fromkeys(labels) if label != "upstream-prefork"}
    report(best, rounds, sends, args)
    if args.json:
        args.json.write_text(json.dumps({"best": best, "rounds": rounds, "sends": sends,
                                         "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
