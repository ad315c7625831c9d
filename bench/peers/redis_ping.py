"""Bare Redis round trip, the floor under every task round trip: sequential PINGs with redis-py.

    python redis_ping.py --url redis://127.0.0.1:6379/11 --samples 2000

Prints one JSON object (p50/p99 in ms). Run by bench/peers.py from a peer's venv (redis-py).
"""

from __future__ import annotations

import argparse
import json
import time

import redis


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    try:
        for _ in range(200):  # connect and warm up
            client.ping()
        samples = []
        for _ in range(args.samples):
            start = time.perf_counter()
            client.ping()
            samples.append(time.perf_counter() - start)
    finally:
        client.close()
    samples.sort()
    n = len(samples)
    print(
        json.dumps(
            {
                "client": f"redis-py {redis.__version__}",
                "samples": n,
                "p50_ms": samples[n // 2] * 1e3,
                "p99_ms": samples[min(n - 1, int(0.99 * n))] * 1e3,
            }
        )
    )


if __name__ == "__main__":
    main()
