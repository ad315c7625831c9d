"""Native delayed delivery (Celery 5.5 quorum queues) on a real RabbitMQ server.

Our declarations leave the same exchanges, queues and bindings as kombu's
``native_delayed_delivery`` (real kombu from our venv) in either order, and a message
published where ``native_delay_target`` says travels the delay levels into its task queue.
"""

from __future__ import annotations

import asyncio

import aio_pika
import kombu
import pytest
from kombu.transport import native_delayed_delivery as upstream_delay

from celery.app.config import Settings
from celery.kombu_compat import Exchange, Queue
from celery.transport.amqp_delayed import (
    declare_native_delayed_delivery,
    delayed_routing_key,
    native_delay_target,
)
from celery.transport.amqp_topology import Topology, declare_queue
from tests.conftest import fresh_amqp_vhost

from .test_amqp_topology import _listing

pytestmark = pytest.mark.amqp
AMQP_VHOST = "celery-topo-delayed"


def _topology(classes=(Queue, Exchange)):
    q, x = classes
    conf = Settings()
    conf["task_default_queue"] = "qfeeds"
    conf["task_queues"] = [
        q("qfeeds", x("qfeeds", type="topic"), "qf.#", queue_arguments={"x-queue-type": "quorum"}),
        q("qdirect", x("qdirect"), "qdirect", queue_arguments={"x-queue-type": "quorum"}),
    ]
    return Topology.from_conf(conf)


async def _ours(url):
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        topology = _topology()
        for name in topology.queues:
            await declare_queue(channel, topology.queue(name))
        await declare_native_delayed_delivery(channel, topology, topology.queues)
    finally:
        await connection.close()


def _upstream(url):
    topology = _topology((kombu.Queue, kombu.Exchange))
    with kombu.Connection(url) as conn:
        queues = []
        for decl in topology.queues.values():
            exchange = decl.bindings[0][0]
            queue = kombu.Queue(decl.name, kombu.Exchange(exchange.name, exchange.type),
                                decl.routing_key, queue_arguments=dict(decl.arguments))
            queue.bind(conn.default_channel).declare()
            queues.append(queue)
        # what an upstream worker's DelayedDelivery step does at start
        upstream_delay.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
        for queue in queues:
            upstream_delay.bind_queue_to_native_delayed_delivery_exchange(conn, queue)


def test_our_delay_topology_is_kombus_in_either_order(caplog):
    ours_first = fresh_amqp_vhost("celery-topo-delay-ours")
    asyncio.run(_ours(ours_first))
    ours = _listing(ours_first)
    _upstream(ours_first)
    assert _listing(ours_first) == ours
    upstream_first = fresh_amqp_vhost("celery-topo-delay-upstream")
    _upstream(upstream_first)
    upstream = _listing(upstream_first)
    asyncio.run(_ours(upstream_first))
    assert _listing(upstream_first) == upstream
    assert ours == upstream
    levels = [q for q in ours["queues"] if q["name"].startswith("celery_delayed_")]
    assert len(levels) == 28 and all(q["type"] == "quorum" for q in levels)
    assert {"source_name": "celery_delayed_delivery", "destination_name": "qfeeds",
            "destination_kind": "exchange", "routing_key": "#.qf.#", "arguments": []} \
        in ours["bindings"]
    # the direct exchange cannot take part: warned, as upstream
    assert any("qdirect is a direct exchange" in r.getMessage() for r in caplog.records)


def test_a_delayed_message_travels_the_levels_into_its_queue(amqp_url, caplog):
    topology = _topology()
    assert native_delay_target(topology, "qdirect", 5) is None  # direct: held by the worker
    assert native_delay_target(topology, "qfeeds", 0.5) is None  # under a second: not parked
    exchange, key = native_delay_target(topology, "qfeeds", 1)
    assert exchange == "celery_delayed_27" and key == "0." * 27 + "1.qf.#"
    # a retried task's key gets a new delay prefix instead of a second one
    assert delayed_routing_key(2, key) == "0." * 26 + "1.0.qf.#"

    async def scenario():
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            await declare_queue(channel, topology.queue("qfeeds"))
            await declare_native_delayed_delivery(channel, topology, ["qfeeds"])
            target = await channel.get_exchange(exchange)
            await target.publish(aio_pika.Message(b"parked", message_id="m1"), routing_key=key)
            queue = await channel.get_queue("qfeeds")
            async with asyncio.timeout(30):
                while (message := await queue.get(fail=False)) is None:
                    await asyncio.sleep(0.1)
            await message.ack()
            return message
        finally:
            await connection.close()

    message = asyncio.run(scenario())
    assert message.body == b"parked" and message.message_id == "m1"
    # it was dead-lettered out of the one-second level, not routed straight
    deaths = message.headers.get("x-death") or []
    assert [d["queue"] for d in deaths] == ["celery_delayed_0"]


def test_global_qos_is_off_when_a_quorum_queue_is_in_use():
    assert not _topology().global_qos()
    conf = Settings()
    assert Topology.from_conf(conf).global_qos()
    conf["task_create_missing_queue_type"] = "quorum"
    assert not Topology.from_conf(conf).global_qos(["fresh"])
    conf["worker_detect_quorum_queues"] = False
    assert Topology.from_conf(conf).global_qos(["fresh"])


def test_a_task_message_with_an_eta_is_parked_as_upstream_parks_it():
    import datetime as dt

    from celery import Celery
    from celery.transport.amqp_delayed import parked_target

    app = Celery("ours", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = "qfeeds"
    app.conf.task_queues = [
        Queue("qfeeds", Exchange("qfeeds", type="topic"), "qf.#",
              queue_arguments={"x-queue-type": "quorum"})]
    topology = Topology.from_conf(app.conf)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    eta = now + dt.timedelta(seconds=5, milliseconds=300)
    message, _ = app._prepare("t", (), {}, None, {"eta": eta})
    assert parked_target(topology, message, now=now) == ("celery_delayed_27", "0." * 25 + "1.0.1.qf.#")
    # a routing key the sender gave does not change the parking key (upstream's rule)
    message, _ = app._prepare("t", (), {}, None, {"eta": eta, "routing_key": "qf.other"})
    assert message.queue == "qfeeds"
    assert parked_target(topology, message, now=now) == ("celery_delayed_27", "0." * 25 + "1.0.1.qf.#")
    plain, _ = app._prepare("t", (), {}, None, {})
    assert parked_target(topology, plain, now=now) is None
    classic = Topology.default()
    message, _ = app._prepare("t", (), {}, None, {"queue": "celery", "eta": eta})
    assert parked_target(classic, message, now=now) is None
