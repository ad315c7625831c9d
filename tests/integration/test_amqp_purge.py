"""``celery purge`` on RabbitMQ purges the queues task_queues names as Queue objects."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from celery.transport.amqp_topology import Topology, declare_queue
from tests.apps.amqp_topo_app import app

pytestmark = pytest.mark.amqp
AMQP_VHOST = "celery-topo-purge"
ROOT = Path(__file__).resolve().parents[2]
COUNTS = {"feeds": 2, "plain": 3, "prio": 1, "celery": 4}


async def _fill(url):
    """Declare the app's queues (and the default one) and put COUNTS messages in them."""
    topology = Topology.from_conf(app.conf)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name, count in COUNTS.items():
            await declare_queue(channel, topology.queue(name))
            for i in range(count):
                await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), name)
    finally:
        await connection.close()


async def _lengths(url):
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        out = {}
        for name in COUNTS:
            queue = await channel.declare_queue(name, passive=True)
            out[name] = queue.declaration_result.message_count
        return out
    finally:
        await connection.close()


def _purge(url, *args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("APP", "BROKER_URL", "CELERY_BROKER_URL", "CONFIG_MODULE")}
    env["TOPOAPP_BROKER"] = url
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.amqp_topo_app",
                           "purge", "-f", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_purge_empties_the_queues_named_by_queue_objects(amqp_url):
    asyncio.run(_fill(amqp_url))
    assert asyncio.run(_lengths(amqp_url)) == COUNTS
    only = _purge(amqp_url, "-Q", "feeds,prio", "-X", "prio")
    assert only.returncode == 0, only.stderr
    assert "Purged 2 messages from 1 known task queue." in only.stdout
    assert asyncio.run(_lengths(amqp_url)) == {**COUNTS, "feeds": 0}
    done = _purge(amqp_url)
    assert done.returncode == 0, done.stderr
    # plain, prio and the default queue celery; feeds was empty already
    assert "Purged 8 messages from 4 known task queues." in done.stdout
    assert asyncio.run(_lengths(amqp_url)) == dict.fromkeys(COUNTS, 0)
    # a queue the server does not have purges nothing and is no error, as upstream
    missing = _purge(amqp_url, "-Q", "not-declared")
    assert missing.returncode == 0, missing.stderr
    assert "No messages purged from 1 queue." in missing.stdout
