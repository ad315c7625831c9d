"""The asyncio pool and connections of transport/redis_aio.py, on a real Redis: a command
costs no extra loop turn, and a connection that is not clean is still never handed out."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import valkey
import valkey.asyncio as avalkey
from valkey.asyncio.connection import Connection
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from celery.transport.redis_aio import (
    BlockingConnectionPool,
    ConnectionPool,
    direct_write,
    nothing_to_read,
)

from ..conftest import kill_clients_named

REDIS_DB = 2

pytestmark = pytest.mark.redis


def client(redis_url: str, pool_class: type = ConnectionPool, **kwargs) -> avalkey.Valkey:
    pool = pool_class.from_url(redis_url, connection_class=direct_write(Connection),
                               socket_timeout=5, **kwargs)
    return avalkey.Valkey(connection_pool=pool)


def turned(loop: asyncio.AbstractEventLoop) -> list[int]:
    """A list that gets an item once the loop has taken its next turn."""
    marks: list[int] = []
    loop.call_soon(marks.append, 1)
    return marks


@pytest.mark.parametrize("pool_class", [ConnectionPool, BlockingConnectionPool])
def test_checkout_and_write_take_no_loop_turn(redis_url, pool_class):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        c = client(redis_url, pool_class)
        await c.ping()  # connected, back in the pool
        marks = turned(loop)
        conn = await c.connection_pool.get_connection("GET")
        assert marks == []
        await conn.send_command("PING")
        assert marks == []
        assert await conn.read_response() == b"PONG"
        await c.connection_pool.release(conn)
        await c.aclose()

    asyncio.run(main())


def test_a_connection_with_an_unread_reply_is_replaced(redis_url):
    async def main() -> None:
        c = client(redis_url)
        await c.set("k", "v")
        conn = await c.connection_pool.get_connection("GET")
        await conn.send_command("PING")  # its reply is never read
        for _ in range(100):  # until the loop has read the reply into the stream
            if not nothing_to_read(conn):
                break
            await asyncio.sleep(0.01)
        assert not nothing_to_read(conn)
        await c.connection_pool.release(conn)
        assert await c.get("k") == b"v"  # not the stale PONG
        await c.aclose()

    asyncio.run(main())


def test_a_connection_the_server_closed_is_retried_on_a_new_one(redis_url):
    name = f"aio-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        c = client(redis_url, client_name=name, retry=Retry(NoBackoff(), 1),
                   retry_on_error=[ValkeyConnectionError])
        await c.set("k", "v")
        assert kill_clients_named(valkey.Valkey.from_url(redis_url), name) == 1
        assert await c.get("k") == b"v"
        await c.aclose()

    asyncio.run(main())


def test_a_write_larger_than_the_socket_buffer_is_sent_whole(redis_url):
    async def main() -> None:
        c = client(redis_url)
        big = b"x" * (32 << 20)  # far more than a socket buffer: the write waits to drain
        await c.set("big", big)
        assert await c.strlen("big") == len(big)
        await c.aclose()

    asyncio.run(main())


def test_the_connection_class_keeps_its_name_and_is_made_once():
    assert direct_write(Connection).__name__ == "Connection"
    assert direct_write(Connection) is direct_write(Connection)
    assert issubclass(direct_write(Connection), Connection)
