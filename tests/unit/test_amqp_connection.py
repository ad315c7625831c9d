"""AMQP URLs read as kombu reads them, and per-loop robust connections to the real RabbitMQ."""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest
from aio_pika.exceptions import ChannelNotFoundEntity

from celery.exceptions import ConnectionLost, ImproperlyConfigured
from celery.transport.amqp_connection import Connections, parse_amqp_url

AMQP_VHOST = "celery-amqp-conn"


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://", ("localhost", 5672, "guest", "guest", "/", False)),
    ("amqp://localhost", ("localhost", 5672, "guest", "guest", "/", False)),
    ("amqp://u:p@h:1234//", ("h", 1234, "u", "p", "/", False)),
    ("amqp://u:p@h/%2F", ("h", 5672, "u", "p", "/", False)),
    ("pyamqp://u:p%40ss@h/my%2Fvhost", ("h", 5672, "u", "p@ss", "my/vhost", False)),
    ("amqps://u:p@h/v", ("h", 5671, "u", "p", "v", True)),
    ("amqp://h/v?ssl=1", ("h", 5672, "guest", "guest", "v", True)),
    ("amqp://[::1]:5673/v", ("::1", 5673, "guest", "guest", "v", False)),
])
def test_urls_as_kombu_reads_them(url: str, expected: tuple) -> None:
    p = parse_amqp_url(url)
    assert (p.host, p.port, p.login, p.password, p.virtualhost, p.ssl) == expected
    assert p.url == url and p.confirm_publish is True


def test_options_from_url_settings_and_transport_options() -> None:
    p = parse_amqp_url("amqp://u:secret@h/v", heartbeat=120.0, connection_timeout=4.0,
                       transport_options={"confirm_publish": False})
    assert (p.heartbeat, p.connect_timeout, p.confirm_publish) == (120.0, 4.0, False)
    assert "secret" not in p.safe_url and "h" in p.safe_url
    # the URL's query wins over the settings, as in kombu
    q = parse_amqp_url("amqp://h/v?heartbeat=10&connect_timeout=2.5", heartbeat=120.0,
                       connection_timeout=4.0)
    assert (q.heartbeat, q.connect_timeout) == (10.0, 2.5)


def test_broker_use_ssl() -> None:
    p = parse_amqp_url("amqp://h/v", use_ssl={"cert_reqs": ssl.CERT_NONE})
    assert p.ssl and p.port == 5671
    context = p.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    q = parse_amqp_url("amqps://h/v", use_ssl=True)
    ctx = q.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert parse_amqp_url("amqp://h/v").ssl_context() is None


@pytest.mark.parametrize(("url", "kwargs", "message"), [
    ("redis://h/0", {}, "Not an AMQP URL"),
    ("amqp:h", {}, "expected amqp://"),
    ("amqp://h:notaport/v", {}, "Invalid AMQP broker URL"),
    ("amqp://h/v?heartbeat=soon", {}, "heartbeat"),
    ("amqp://h/v?frobnicate=1", {}, "Unknown option(s) frobnicate"),
    ("amqp://h/v", {"use_ssl": {"ciphers": "x"}}, "unknown option(s) ciphers"),
    ("amqp://h/v", {"use_ssl": "yes"}, "broker_use_ssl must be"),
    ("amqp://h/v", {"transport_options": {"confirm_publish": "maybe"}}, "confirm_publish"),
])
def test_bad_urls_are_one_line_errors(url: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="^[^\n]*$") as info:
        parse_amqp_url(url, **kwargs)
    assert message in str(info.value)


def test_unreachable_broker_is_connection_lost() -> None:
    conns = Connections(parse_amqp_url("amqp://guest:hunter2@127.0.0.1:1/v", connection_timeout=2))

    async def main() -> None:
        with pytest.raises(ConnectionLost) as info:
            await conns.connection()
        assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
        await conns.aclose()

    asyncio.run(main())


@pytest.mark.amqp
def test_one_connection_per_loop_and_channels_per_purpose(amqp_url: str) -> None:
    conns = Connections(parse_amqp_url(amqp_url, heartbeat=30))
    seen: dict[str, object] = {}

    async def use(name: str) -> None:
        first, second = await asyncio.gather(conns.connection(), conns.connection())
        assert first is second
        publish = await conns.channel("publish")
        assert await conns.channel("publish") is publish
        consume = await conns.channel("consume", confirms=False)
        assert consume is not publish
        queue = await consume.declare_queue(f"q-{name}", auto_delete=True)
        await publish.default_exchange.publish(
            __import__("aio_pika").Message(b"hi"), routing_key=f"q-{name}")
        message = await queue.get(timeout=5)
        assert message.body == b"hi"
        await message.ack()
        # a channel the server closed (a passive declare of a missing queue) is re-opened
        with pytest.raises(ChannelNotFoundEntity):
            await consume.declare_queue("no-such-queue", passive=True)
        await asyncio.sleep(0.05)
        again = await conns.channel("consume", confirms=False)
        assert not again.is_closed
        seen[name] = first
        await conns.aclose()
        assert first.is_closed

    asyncio.run(use("a"))
    thread = threading.Thread(target=lambda: asyncio.run(use("b")))
    thread.start()
    thread.join(30)
    assert set(seen) == {"a", "b"} and seen["a"] is not seen["b"]
    conns.close()
