"""Every transport runs the same conformance suite (transport_suite.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import amqp_dead_letter_setup, flushed_redis_url, fresh_amqp_vhost

from .transport_suite import TransportSuite

REDIS_DB = 7
AMQP_VHOST = "celery-amqp-conformance"
#: Every queue the suite's tests use (transport_suite.py), emptied between AMQP tests.
QUEUES = ("celery", "other")


class TestMemoryTransport(TransportSuite):
    multiprocess = False

    def make_url(self, tmp_path: Path) -> str:
        return f"memory://conformance-{tmp_path.name}"

    def plant_malformed(self, url: str, queue: str, raw: bytes) -> None:
        from celery.transport.memory import MemoryTransport

        MemoryTransport(url).put_raw(queue, raw.decode())

    def dead_letters(self, url: str) -> list[bytes]:
        from celery.transport.memory import MemoryTransport

        return [raw.encode() for _, raw, _ in MemoryTransport(url).dead_letters()]


@pytest.mark.redis
class TestRedisTransport(TransportSuite):
    def make_url(self, tmp_path: Path) -> str:
        return flushed_redis_url(REDIS_DB)

    def plant_malformed(self, url: str, queue: str, raw: bytes) -> None:
        import valkey

        client = valkey.Valkey.from_url(url)
        try:
            client.lpush(queue, raw)
        finally:
            client.close()

    def dead_letters(self, url: str) -> list[bytes]:
        import valkey

        from celery.transport.redis import DEAD_LETTER_KEY

        client = valkey.Valkey.from_url(url)
        try:
            return client.lrange(DEAD_LETTER_KEY, 0, -1)[::-1]
        finally:
            client.close()


class TestSQLiteTransport(TransportSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/broker.db"

    def plant_malformed(self, url: str, queue: str, raw: bytes) -> None:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as conn:
            conn.execute("INSERT INTO celery_messages (queue, payload) VALUES (?, ?)",
                         (queue, raw.decode()))
        conn.close()

    def dead_letters(self, url: str) -> list[bytes]:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as conn:
            rows = conn.execute("SELECT payload FROM celery_dead_letter ORDER BY id").fetchall()
        conn.close()
        return [p.encode() if isinstance(p, str) else bytes(p) for (p,) in rows]


class TestFilesystemTransport(TransportSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"filesystem://{tmp_path}/queue"

    def plant_malformed(self, url: str, queue: str, raw: bytes) -> None:
        import time
        import uuid

        folder = Path(url.removeprefix("filesystem://"))
        # Our own naming (priority, 19-digit time, uniquifier), so it sorts between the
        # good messages published before and after it.
        (folder / f"0_{time.time_ns():019d}_{uuid.uuid4().hex}.{queue}.msg").write_bytes(raw)

    def dead_letters(self, url: str) -> list[bytes]:
        folder = Path(url.removeprefix("filesystem://")) / ".dead-letter"
        return [f.read_bytes() for f in sorted(folder.iterdir())] if folder.exists() else []


@pytest.fixture(scope="class")
def amqp_conformance_vhost() -> str:
    """The AMQP class's vhost, made afresh once for the class: each ``rabbitmqctl`` call
    starts an Erlang VM (1-3 s), and two per test were most of the class's time."""
    return TestAMQPTransport().make_url(Path())


@pytest.mark.amqp
class TestAMQPTransport(TransportSuite):
    """RabbitMQ. Rejected messages reach a dead-letter queue through a server policy (the
    way operators add a DLX without changing queue declarations)."""

    envelopes = False
    requeue_to_back = False
    requeue_keeps_order = False

    def options(self) -> dict:
        return {}

    def make_url(self, tmp_path: Path) -> str:
        """A fresh vhost with the dead-letter policy (once per class: ``url`` empties it)."""
        url = fresh_amqp_vhost(AMQP_VHOST)
        amqp_dead_letter_setup(url, AMQP_VHOST, "^(celery|other)$")
        return url

    @pytest.fixture
    def url(self, amqp_conformance_vhost: str) -> str:
        """The class's vhost, emptied: the suite's queues deleted (the transport declares
        them again), the dead-letter queue purged. The suite uses no other queue."""

        async def empty() -> None:
            import aio_pika

            conn = await aio_pika.connect(amqp_conformance_vhost)
            async with conn:
                channel = await conn.channel()
                for name in QUEUES:
                    await channel.queue_delete(name)
                await (await channel.get_queue("dead-letter")).purge()

        asyncio.run(empty())
        return amqp_conformance_vhost

    def dead_letters(self, url: str) -> list[bytes]:
        """Each dead-lettered message as a JSON envelope like kombu's (RabbitMQ's ``x-death``
        header shown as text)."""
        import json

        async def read() -> list[bytes]:
            import aio_pika

            conn = await aio_pika.connect(url)
            async with conn:
                channel = await conn.channel()
                queue = await channel.get_queue("dead-letter")
                found = []
                while (message := await queue.get(fail=False)) is not None:
                    found.append(json.dumps({
                        "body": message.body.decode(), "headers": message.headers,
                        "properties": {"correlation_id": message.correlation_id,
                                       "reply_to": message.reply_to}}, default=str).encode())
                    await message.ack()
                return found

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:  # (called from the test's running loop)
            return pool.submit(asyncio.run, read()).result(30)
