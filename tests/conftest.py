"""Shared fixtures: real servers, skipped locally when absent and failed under CI=true."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))


def server_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI) when a server the test needs is not listening."""
    if server_up(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests needing a server must not skip)")
    pytest.skip(message)


def need_module(name: str, install: str) -> object:
    """Import ``name``; skip (locally) or fail (under CI) when it is not installed, saying how
    to install it (``install``)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed ({install})"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: tests needing a package must not skip)")
        pytest.skip(message, allow_module_level=True)


POSTGRES_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
POSTGRES_USER = os.environ.get("TEST_POSTGRES_USER", "postgres")
MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))


def postgres_url(database: str) -> str:
    """A ``postgresql+psycopg://`` SQLAlchemy URL of ``database``, created when missing
    (trust auth, as ci/setup.sh sets it up)."""
    need_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import psycopg

    with psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER,
                         dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{database}"')
    return f"postgresql+psycopg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def mariadb_url(database: str) -> str:
    """A ``mysql+pymysql://`` SQLAlchemy URL of ``database`` (root, no password), created
    when missing."""
    need_server("MariaDB", MARIADB_HOST, MARIADB_PORT)
    import pymysql

    conn = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        conn.close()
    return f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{database}"


def flushed_redis_url(db: int) -> str:
    """URL of Redis database ``db`` after emptying it."""
    need_server("Redis", REDIS_HOST, REDIS_PORT)
    import valkey

    client = valkey.Valkey(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """A flushed Redis database for this test; the db number comes from the module's
    ``REDIS_DB`` (so modules worked on in parallel don't trample each other), default 9."""
    return flushed_redis_url(getattr(request.module, "REDIS_DB", 9))


AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TEST_AMQP_PORT", "5672"))


def fresh_amqp_vhost(vhost: str) -> str:
    """URL of RabbitMQ virtual host ``vhost`` (user guest) after deleting and re-creating it,
    so it holds no queue, exchange or message of an earlier test. One ``rabbitmqctl eval``
    (about a second): the server's own CLI, since the management plugin may be off."""
    need_server("RabbitMQ", AMQP_HOST, AMQP_PORT)
    name = vhost.encode().hex()  # an Erlang binary literal that needs no escaping
    code = (f"V = binary:decode_hex(<<\"{name}\">>), "
            "catch rabbit_vhost:delete(V, <<\"guest\">>), "
            "rabbit_vhost:add(V, <<\"guest\">>), "
            "rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, <<\".*\">>, "
            "<<\".*\">>, <<\".*\">>, <<\"guest\">>).")
    done = subprocess.run(["rabbitmqctl", "-q", "eval", code], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 or done.stdout.strip() != "ok":
        pytest.fail(f"could not make RabbitMQ vhost {vhost!r}: {done.stdout}{done.stderr}")
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"


def amqp_dead_letter_setup(url: str, vhost: str, queues: str) -> None:
    """In RabbitMQ vhost ``vhost`` (at ``url``): a policy dead-lettering the queues whose
    names match the regular expression ``queues`` to the fanout exchange ``dlx``, and the
    queue ``dead-letter`` bound to it (what the tests read rejected messages from)."""
    import asyncio

    subprocess.run(["rabbitmqctl", "-q", "set_policy", "-p", vhost, "dlx", queues,
                    '{"dead-letter-exchange":"dlx"}', "--apply-to", "queues"],
                   check=True, capture_output=True, timeout=60)

    async def declare() -> None:
        import aio_pika

        conn = await aio_pika.connect(url)
        async with conn:
            channel = await conn.channel()
            exchange = await channel.declare_exchange("dlx", "fanout")
            queue = await channel.declare_queue("dead-letter")
            await queue.bind(exchange)

    asyncio.run(declare())


@pytest.fixture
def amqp_url(request: pytest.FixtureRequest) -> str:
    """A fresh RabbitMQ virtual host for this test, named by the module's ``AMQP_VHOST``
    (modules worked on in parallel don't trample each other), default ``celery-test``."""
    return fresh_amqp_vhost(getattr(request.module, "AMQP_VHOST", "celery-test"))


def kill_clients_named(client, name: str) -> int:
    """CLIENT KILL every connection called ``name`` (set with the ``client_name`` option), so
    a test drops its own connections, never those of other tests or programs on the server."""
    ids = [int(c["id"]) for c in client.client_list() if c.get("name") == name]
    return sum(client.client_kill_filter(_id=i) for i in ids)


@contextlib.contextmanager
def app_module(name: str):
    """Import ``tests/apps/<name>.py`` afresh (it reads its settings from the environment
    at import) and yield its ``app``; close it and forget the module afterwards."""
    apps = str(Path(__file__).parent / "apps")
    sys.path.insert(0, apps)
    sys.modules.pop(name, None)
    module = importlib.import_module(name)
    try:
        yield module.app
    finally:
        module.app.close()
        sys.path.remove(apps)
        sys.modules.pop(name, None)


def stop_process(proc) -> str:
    """SIGTERM a worker process (if still running) and return its output; one that does not
    stop within 30 s is killed and fails the test with its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker did not stop:\n{out}") from None
    return out
