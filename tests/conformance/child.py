"""What the conformance suites run in other processes: ``python -m tests.conformance.child``.

    publish <url> <options-json> <queue> <count> <prefix>   publish count messages
    reserve <url> <options-json> <queue> <count>            reserve, print READY, then hang
    store <backend-url> <count> <prefix>                    store count SUCCESS results
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from celery import Celery
from celery.messaging.protocol import build_task_message
from celery.transport.registry import transport_for_url


def publish(url: str, options: str, queue: str, count: str, prefix: str) -> None:
    transport = transport_for_url(url, transport_options=json.loads(options))
    for i in range(int(count)):
        transport.publish(build_task_message("conformance.t", (f"{prefix}-{i}",), queue=queue))
    transport.close()


def reserve(url: str, options: str, queue: str, count: str) -> None:
    async def main() -> None:
        transport = transport_for_url(url, transport_options=json.loads(options))
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < int(count) and time.monotonic() < deadline:
            got += await transport.fetch([queue], int(count) - len(got), 1.0)
        print("READY", len(got), flush=True)
        await asyncio.sleep(3600)  # killed by the test while holding the reservations

    asyncio.run(main())


def store(url: str, count: str, prefix: str) -> None:
    app = Celery("conformance-child", broker="memory://", backend=url)
    for i in range(int(count)):
        app.backend.store_result(f"{prefix}-{i}", {"n": i, "by": prefix}, "SUCCESS")
    app.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"publish": publish, "reserve": reserve, "store": store}[command](*args)
