"""The Redis pop-to-reserved window (issue 20, item 7): a message a blocking wait takes is
reserved in that consumer's own list from that moment, so a worker killed before the fetch
script records it in ``unacked`` loses nothing; a live consumer's list is left alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import valkey

from celery.messaging.protocol import build_task_message
from celery.transport.redis import RedisTransport

from .brokers import make_broker
from .procs import ROOT

#: Fetches with a handler that kills its own process (kill -9) the moment a blocking wait
#: hands it a message: after the wait took it, before anything recorded it.
CHILD = """
import asyncio, json, os, signal, sys
from celery.transport.redis import RedisTransport

async def main():
    transport = RedisTransport(sys.argv[1], transport_options=json.loads(sys.argv[2]))
    assert await transport.fetch(["celery"], 10, 0.01) == []  # drained: the next one waits
    print("READY", flush=True)
    while True:  # (each wait lasts half the visibility timeout at most)
        await transport.fetch(["celery"], 10, 30,
                              early=lambda d: os.kill(os.getpid(), signal.SIGKILL))

asyncio.run(main())
"""
OPTIONS = {"visibility_timeout": 1}


def message(n: int):
    return build_task_message("fault.echo", (n,), task_id=f"reserved-{n}")


async def test_a_worker_killed_between_taking_and_recording_a_message_loses_nothing(
        tmp_path: Path):
    broker = make_broker("redis", tmp_path)
    raw = valkey.Valkey.from_url(broker.url)
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.url, json.dumps(OPTIONS)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "READY"
    time.sleep(0.3)  # its wait is blocked in Redis now
    transport = RedisTransport(broker.url, transport_options=OPTIONS)
    try:
        transport.publish(message(1))
        assert child.wait(10) == -9
        assert raw.llen("celery") == 0 and raw.hlen("unacked") == 0  # taken, not recorded
        assert await transport.restore_visible() == 0  # its heartbeat is still fresh
        await asyncio.sleep(OPTIONS["visibility_timeout"] + 0.3)
        assert await transport.restore_visible() == 1  # its consumer is gone: it comes back
        [again] = await transport.fetch(["celery"], 10, 1)
        assert again.message.headers["id"] == "reserved-1" and again.redelivered
        await transport.ack([again])
        assert raw.keys("celery-asyncio.reserved.*") == []
        assert raw.zcard("celery-asyncio.reserved") == 0  # the dead consumer's lists unregistered
    finally:
        await transport.aclose()
        transport.close()
        raw.close()


async def test_a_live_consumers_reserved_message_is_not_restored(tmp_path: Path):
    """A wait armed by a fetch that was then cancelled takes a message: the consumer is
    alive (its heartbeat is fresh), so another worker's restore leaves the message, and the
    consumer's next fetch delivers it once."""
    broker = make_broker("redis", tmp_path)
    raw = valkey.Valkey.from_url(broker.url)
    options = {"visibility_timeout": 30}
    holder = RedisTransport(broker.url, transport_options=options)
    other = RedisTransport(broker.url, transport_options=options)
    try:
        fetching = asyncio.create_task(holder.fetch(["celery"], 10, 5))
        await asyncio.sleep(0.3)
        fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
        holder.publish(message(2))
        deadline = time.monotonic() + 5
        while not raw.keys("celery-asyncio.reserved.*") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert raw.llen("celery") == 0
        assert await other.restore_visible() == 0
        [got] = await holder.fetch(["celery"], 10, 1)
        assert got.message.headers["id"] == "reserved-2" and not got.redelivered
        await holder.ack([got])
        assert await other.fetch(["celery"], 10, 0.2) == []
    finally:
        for t in (holder, other):
            await t.aclose()
            t.close()
        raw.close()
