"""Sync publishing without confirms from the caller's thread (transport/amqp_direct.py), on
the real RabbitMQ: the first publish to a queue goes through the portal (which declares it),
the rest straight to the socket; a connection or channel the server closed is made again; an
unroutable message is logged; an unreachable broker raises ConnectionLost after the retries;
an idle connection is made again before the heartbeat could expire."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celery import Celery
from celery.exceptions import ConnectionLost
from celery.messaging.protocol import decode_body

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-amqp-direct"


@pytest.fixture
def app(amqp_url: str) -> Iterator[Celery]:
    app = Celery("amqp-direct", broker=amqp_url, set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": False}
    try:
        yield app
    finally:
        app.close()


def queued_args(app: Celery, expected: int, queue: str = "celery") -> list[Any]:
    """The first argument of each message in ``queue``, in queue order, once ``expected``
    are there (a message written to the socket is in the queue a moment later)."""
    transport = app.transport
    deadline = time.monotonic() + 10
    while app.portal.call(transport.queue_length(queue)) < expected:
        assert time.monotonic() < deadline, app.portal.call(transport.queue_length(queue))
        time.sleep(0.02)

    async def fetch() -> list[Any]:
        got: list[Any] = []
        while len(got) < expected:
            deliveries = await transport.fetch([queue], expected - len(got), 1.0)
            assert deliveries, f"{len(got)} of {expected} fetched"
            got += deliveries
        await transport.ack(got)
        await transport.stop_consuming()
        return [decode_body(d.message.body, d.message.content_type, d.message.content_encoding,
                            frozenset({"application/json"})).args[0] for d in got]

    return app.portal.call(fetch())


def test_publishes_after_the_first_go_straight_to_the_socket(app: Celery) -> None:
    for i in range(300):
        app.send_task("direct.t", (i,))
    direct = app.transport._direct
    assert direct is not None and direct.connects == 1 and direct.ready("celery")
    args = queued_args(app, 300)
    assert sorted(args) == list(range(300))  # each exactly once
    assert args[1:] == sorted(args[1:])  # those from one thread's socket: in order
    assert app.portal.call(app.transport.queue_length("celery")) == 0


def test_with_confirms_every_sync_publish_goes_through_the_portal(amqp_url: str) -> None:
    app = Celery("amqp-confirmed", broker=amqp_url, set_as_current=False)
    try:
        app.send_task("direct.t", (1,))
        assert app.transport._direct is None
        assert queued_args(app, 1) == [1]
    finally:
        app.close()


def test_a_connection_the_server_closed_is_made_again_before_the_next_publish(
        app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    app.send_task("direct.t", (0,))
    app.send_task("direct.t", (1,))  # direct: its connection is made
    direct = app.transport._direct
    assert direct is not None and direct.connects == 1
    subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "-p", AMQP_VHOST,
                    "test: closed by the server"], check=True, capture_output=True, timeout=60)
    time.sleep(0.2)  # the server's Connection.Close is in our socket
    with caplog.at_level(logging.WARNING, logger="celery.transport.amqp_direct"):
        app.send_task("direct.t", (2,))  # finds the connection closed: portal, then direct
    for i in range(3, 10):
        app.send_task("direct.t", (i,))
    assert direct.connects == 2
    assert "publisher connection to" in caplog.text and "CONNECTION_FORCED" in caplog.text
    assert sorted(queued_args(app, 10)) == list(range(10))


def test_a_channel_the_server_closed_is_opened_again_and_logged(
        app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    app.send_task("direct.t", (0,))
    # No such exchange: the server closes the channel (404).
    app.send_task("direct.t", (-1,), exchange="no-such-exchange", routing_key="nobody")
    deadline = time.monotonic() + 5
    with caplog.at_level(logging.ERROR, logger="celery.transport.amqp_direct"):
        i = 1
        while "closed the publishing channel" not in caplog.text:
            assert time.monotonic() < deadline, "the channel's close was never read"
            time.sleep(0.01)
            app.send_task("direct.t", (i,))
            i += 1
    assert "NOT_FOUND" in caplog.text and "no-such-exchange" in caplog.text
    assert app.transport._direct.connects == 1  # the channel only, not the connection
    app.send_task("direct.t", (i,))
    args = queued_args(app, i + 1)
    # Those written after the channel closed and before its Close was read are lost: that is
    # what a publish without confirms gives up. The one after the reopening arrived.
    assert args[0] == 0 and args[-1] == i and -1 not in args


def test_an_unroutable_message_is_logged_with_its_task_id(
        app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    app.send_task("direct.t", (0,))
    lost = app.send_task("direct.t", (1,), exchange="amq.direct", routing_key="nobody")
    deadline = time.monotonic() + 5
    with caplog.at_level(logging.WARNING, logger="celery.transport.amqp_direct"):
        while "returned a message as unroutable" not in caplog.text:
            assert time.monotonic() < deadline, "the return was never read"
            time.sleep(0.01)
            app.send_task("direct.t", (2,))
    assert f"task id {lost.id}" in caplog.text and "NO_ROUTE" in caplog.text


def test_an_unreachable_broker_raises_connection_lost_after_the_retries() -> None:
    app = Celery("amqp-down", broker="amqp://guest:guest@127.0.0.1:1//", set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": False}
    app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0,
                                          "interval_step": 0.05, "interval_max": 0.1}
    try:
        direct = app.transport._direct
        assert direct is not None
        direct.mark_ready("celery")  # as if declared before the broker went away
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"failed after 3 attempt\(s\): "
                                                 r"ConnectionRefusedError"):
            app.send_task("direct.t", (1,))
        assert direct.connects == 0
        assert 0.05 <= time.monotonic() - started < 5  # slept 0, then 0.05, between tries
    finally:
        app.close()


def test_an_idle_connection_is_made_again_before_its_heartbeat_could_expire(
        amqp_url: str) -> None:
    app = Celery("amqp-idle", broker=amqp_url, set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": False}
    app.conf.broker_heartbeat = 2  # made again after 1 s without a publish
    try:
        app.send_task("direct.t", (0,))
        app.send_task("direct.t", (1,))
        direct = app.transport._direct
        assert direct is not None and direct.connects == 1
        time.sleep(1.2)
        app.send_task("direct.t", (2,))  # the new connection: through the portal first
        app.send_task("direct.t", (3,))
        assert direct.connects == 2
        assert sorted(queued_args(app, 4)) == [0, 1, 2, 3]
    finally:
        app.close()


def test_direct_publish_false_keeps_every_publish_on_the_portal(amqp_url: str) -> None:
    app = Celery("amqp-portal-only", broker=amqp_url, set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": False, "direct_publish": False}
    try:
        for i in range(3):
            app.send_task("direct.t", (i,))
        assert app.transport._direct is None
        assert queued_args(app, 3) == [0, 1, 2]  # one connection: in order
    finally:
        app.close()


def test_a_direct_publish_option_that_is_not_a_bool_is_refused() -> None:
    from celery.exceptions import ImproperlyConfigured
    from celery.transport.amqp import AMQPTransport

    with pytest.raises(ImproperlyConfigured, match="direct_publish: 'no' is not true or false"):
        AMQPTransport("amqp://guest:guest@127.0.0.1:5672//",
                      transport_options={"direct_publish": "no"})


def test_tls_connections_publish_through_the_portal() -> None:
    from celery.transport.amqp import AMQPTransport

    options = {"confirm_publish": False}
    assert AMQPTransport("amqp://guest:guest@127.0.0.1//", transport_options=options)._direct
    assert AMQPTransport("amqps://guest:guest@127.0.0.1//",
                         transport_options=options)._direct is None
