"""Every broker with ``CAP_BROADCAST`` runs the same Mailbox suite (mailbox_suite.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from celery.transport import envelope
from tests.conftest import flushed_redis_url, fresh_amqp_vhost

from .mailbox_suite import MailboxSuite

REDIS_DB = 7
AMQP_VHOST = "celery-pidbox-conformance"


class TestMemoryMailbox(MailboxSuite):
    multiprocess = False

    def make_url(self, tmp_path: Path) -> str:
        return f"memory://mailbox-{tmp_path.name}"


@pytest.mark.redis
class TestRedisMailbox(MailboxSuite):
    def make_url(self, tmp_path: Path) -> str:
        return flushed_redis_url(REDIS_DB)


class TestSQLiteMailbox(MailboxSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/broker.db"

    def plant_malformed(self, url: str, kind: str, name: str, raw: bytes) -> None:
        # Both a BLOB and TEXT that is not UTF-8 (which sqlite3 cannot turn into a str).
        if kind == "fanout":
            sql = ("INSERT INTO celery_fanout (exchange, payload, published_at) "
                   "VALUES (?, {}, strftime('%s', 'now'))")
        else:
            sql = "INSERT INTO celery_direct (queue, payload) VALUES (?, {})"
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as conn:
            conn.execute(sql.format("?"), (name, raw))
            conn.execute(sql.format("CAST(? AS TEXT)"), (name, raw))
        conn.close()


class TestFilesystemMailbox(MailboxSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"filesystem://{tmp_path}/queue"

    def plant_malformed(self, url: str, kind: str, name: str, raw: bytes) -> None:
        control = Path(url.removeprefix("filesystem://")).parent / "control"
        folder = control / f"{'fanout' if kind == 'fanout' else 'queue'}.{quote(name, safe='')}"
        folder.mkdir(parents=True, exist_ok=True)
        # A payload name (a 19-digit time and a uniquifier) holding bytes that are not UTF-8,
        # a folder with such a name, and names that are no payload's.
        (folder / f"{time.time_ns():019d}_{uuid.uuid4().hex}.msg").write_bytes(raw)
        (folder / f"{time.time_ns():019d}_{uuid.uuid4().hex}.msg").mkdir()
        (folder / "not-a-payload.msg").write_bytes(raw)
        (folder / "12_34.msg").write_bytes(b"{}")


@pytest.mark.amqp
class TestAMQPMailbox(MailboxSuite):
    counts_queues = False  # AMQP only says whether a message was routed, not to how many

    def make_url(self, tmp_path: Path) -> str:
        return fresh_amqp_vhost(AMQP_VHOST)

    def canonical(self, payload: str) -> Any:
        # An envelope crosses RabbitMQ as the AMQP message it stands for (what upstream's
        # clients read); what arrives is an envelope of the same body, bytes for bytes, with
        # the same headers and properties (its delivery tag and delivery_info are new).
        message = envelope.decode("", payload, "").message
        props = message.properties
        return (message.body, message.content_type, message.content_encoding, message.headers,
                props.get("delivery_mode"), props.get("priority") or 0,
                props.get("correlation_id"), props.get("reply_to"))

    def plant_malformed(self, url: str, kind: str, name: str, raw: bytes) -> None:
        # Published by a client of its own, bytes as they are: on the fanout exchange, or
        # straight into the queue through the default exchange. The test's loop is running,
        # so the client runs on a loop of its own in a thread.
        async def plant() -> None:
            import aio_pika

            connection = await aio_pika.connect(url)
            async with connection:
                channel = await connection.channel()
                if kind == "fanout":
                    exchange = await channel.get_exchange(name)
                    await exchange.publish(aio_pika.Message(raw), routing_key="")
                else:
                    await channel.default_exchange.publish(aio_pika.Message(raw), routing_key=name)

        failed: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catch(failed, lambda: asyncio.run(plant())))
        thread.start()
        thread.join(30)
        assert not thread.is_alive() and not failed, failed


def _catch(failed: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the test's thread, which raises it
        failed.append(exc)
