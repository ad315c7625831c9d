"""Bare Redis round trips, the floors under every task round trip, with valkey-py where it is
installed (ours uses it), else redis-py (the peers'):

* PING: sequential PINGs (one client, one server);
* queue: a message through Redis to a second process and back, as a task queue moves a task
  and its result without doing anything else: LPUSH, BRPOP in an echo process, LPUSH of
  the reply, BRPOP of it.

    python redis_ping.py --url redis://127.0.0.1:6379/11 --samples 2000

Prints one JSON object (p50/p99 in ms). Run by bench/peers.py from a peer's venv (redis-py)
and from ours (valkey-py): the issue's floor is "a bare Redis round trip from the same client
library", and the two differ (valkey-py parses replies with libvalkey, redis-py 8 without
hiredis in Python).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

try:  # ours: valkey-py (ours' venv may have redis-py as well: the floor is our library's)
    import valkey as redis

    CLIENT = f"valkey-py {redis.__version__}"
except ImportError:  # the peers' venvs: redis-py, the same API
    import redis  # type: ignore[no-redef]

    CLIENT = f"redis-py {redis.__version__}"

WARM_UP = 200


def percentiles(samples: list[float], prefix: str) -> dict:
    samples = sorted(samples)
    n = len(samples)
    return {
        f"{prefix}p50_ms": samples[n // 2] * 1e3,
        f"{prefix}p99_ms": samples[min(n - 1, int(0.99 * n))] * 1e3,
    }


def pings(client: redis.Redis, n: int) -> list[float]:
    for _ in range(WARM_UP):  # connect and warm up
        client.ping()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - start)
    return samples


def queue_round_trips(url: str, client: redis.Redis, n: int) -> list[float]:
    """n sequential round trips through the echo process (started here, stopped after)."""
    key = f"bench.echo.{uuid.uuid4().hex}"
    echo = subprocess.Popen([sys.executable, __file__, "--url", url, "--echo", key])
    try:
        samples = []
        for i in range(WARM_UP + n):
            start = time.perf_counter()
            client.lpush(f"{key}.in", b"x")
            if client.brpop([f"{key}.out"], timeout=10) is None:
                raise RuntimeError("the echo process did not answer within 10 s")
            if i >= WARM_UP:
                samples.append(time.perf_counter() - start)
        client.lpush(f"{key}.in", b"stop")
        echo.wait(10)
        return samples
    finally:
        if echo.poll() is None:
            echo.kill()
        client.delete(f"{key}.in", f"{key}.out")


def run_echo(url: str, key: str) -> None:
    client = redis.Redis.from_url(url)
    while True:
        popped = client.brpop([f"{key}.in"], timeout=30)
        if popped is None or popped[1] == b"stop":
            return
        client.lpush(f"{key}.out", popped[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--echo", metavar="KEY", help=argparse.SUPPRESS)  # the echo process
    args = parser.parse_args()
    if args.echo:
        run_echo(args.url, args.echo)
        return
    client = redis.Redis.from_url(args.url)
    try:
        figures = percentiles(pings(client, args.samples), "")
        figures |= percentiles(queue_round_trips(args.url, client, args.samples), "queue_")
    finally:
        client.close()
    print(json.dumps({"client": CLIENT, "samples": args.samples} | figures))


if __name__ == "__main__":
    main()
