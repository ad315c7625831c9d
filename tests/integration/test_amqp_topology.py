"""Our queue declarations and upstream Celery's are the same on a real RabbitMQ server.

For every case in ``amqp_topology_cases`` (default queue, topic, fanout, priority, quorum,
dead-letter arguments, extra bindings, Celery's dict form) one side declares, the server's
queues, exchanges and bindings are listed, the other side declares the same settings (no
``PRECONDITION_FAILED``) and nothing has changed; in both orders, and the listings of the two
orders are equal. Upstream runs from the venv ``tests/compat`` makes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika
import kombu
import pytest

from celery.app.config import Settings
from celery.exceptions import ImproperlyConfigured
from celery.kombu_compat import Exchange, Queue, binding
from celery.transport.amqp_topology import Topology, declare_queue
from tests.compat.test_upstream_interop import _upstream_python
from tests.conftest import fresh_amqp_vhost

from .amqp_topology_cases import cases

pytestmark = pytest.mark.amqp
AMQP_VHOST = "celery-topo-mismatch"

HERE = Path(__file__).parent

UPSTREAM_DECLARE = """
import sys
from celery import Celery
from kombu import Exchange, Queue, binding
from amqp_topology_cases import cases
url = sys.argv[1]
for settings in cases(Queue, Exchange, binding).values():
    app = Celery("up", broker=url, set_as_current=False)
    app.conf.update(settings)
    with app.connection_for_write() as conn:
        app.amqp.queues[app.conf.task_default_queue].bind(conn.default_channel).declare()
print("declared")
"""


def _topologies(classes):
    out = []
    for settings in cases(*classes).values():
        conf = Settings()
        for key, value in settings.items():
            conf[key] = value
        out.append(Topology.from_conf(conf))
    return out


async def _declare_ours(url, classes):
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for topology in _topologies(classes):
            await declare_queue(channel, topology.queue(topology.default_queue))
    finally:
        await connection.close()


def _declare_upstream(python, url):
    done = subprocess.run([str(python), "-c", UPSTREAM_DECLARE, url], cwd=HERE, text=True,
                          capture_output=True, timeout=120, env={"PYTHONPATH": str(HERE)})
    assert done.returncode == 0 and "declared" in done.stdout, done.stderr[-2000:]


def _rabbitmqctl(*args):
    done = subprocess.run(["rabbitmqctl", "-q", *args, "--formatter", "json"], text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


#: AMQP field-table integer types: aio-pika (pamqp) sends the smallest that fits, py-amqp a
#: 32-bit one; RabbitMQ holds declarations equivalent across them, so compare values only.
_INTEGER_TYPES = {"byte", "short", "unsignedshort", "signedint", "unsignedint", "long"}


def _arguments(arguments):
    return sorted([key, "integer" if kind in _INTEGER_TYPES else kind, value]
                  for key, kind, value in arguments)


def _listing(url):
    """Queues, exchanges and bindings of the URL's vhost, sorted, server defaults left out."""
    vhost = unquote(urlsplit(url).path[1:])
    commands = [
        ("list_queues", "name", "durable", "auto_delete", "exclusive", "arguments", "type"),
        ("list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments"),
        ("list_bindings", "source_name", "destination_name", "destination_kind", "routing_key",
         "arguments"),
    ]
    with ThreadPoolExecutor(3) as pool:
        queues, exchanges, bindings = pool.map(
            lambda c: _rabbitmqctl(c[0], "-p", vhost, *c[1:]), commands)
    exchanges = [e for e in exchanges if e["name"] and not e["name"].startswith("amq.")]
    bindings = [b for b in bindings if b["source_name"]]  # the default exchange's are implicit
    for row in queues + exchanges + bindings:
        row["arguments"] = _arguments(row["arguments"])
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    return {"queues": sorted(queues, key=key), "exchanges": sorted(exchanges, key=key),
            "bindings": sorted(bindings, key=key)}


@pytest.fixture(scope="module")
def upstream_python():
    return _upstream_python()


def test_ours_and_upstreams_declarations_are_identical_in_either_order(upstream_python):
    ours_first = fresh_amqp_vhost("celery-topo-ours-first")
    asyncio.run(_declare_ours(ours_first, (Queue, Exchange, binding)))
    ours = _listing(ours_first)
    _declare_upstream(upstream_python, ours_first)
    assert _listing(ours_first) == ours

    upstream_first = fresh_amqp_vhost("celery-topo-upstream-first")
    _declare_upstream(upstream_python, upstream_first)
    upstream = _listing(upstream_first)
    # real kombu objects in our settings this time
    asyncio.run(_declare_ours(upstream_first, (kombu.Queue, kombu.Exchange, kombu.binding)))
    assert _listing(upstream_first) == upstream
    assert ours == upstream
    # the listing shows what each case is about, so equality above is not vacuous
    by_name = {q["name"]: q for q in ours["queues"]}
    assert set(by_name) == {"celery", "feeds", "bcast", "prio", "qq", "ttl", "multi", "hdrs",
                            "dictq"}
    assert by_name["qq"]["type"] == "quorum"
    assert by_name["prio"]["arguments"] == [["x-max-priority", "integer", 10]]
    assert ["x-dead-letter-exchange", "longstr", "dlx"] in by_name["ttl"]["arguments"]
    assert {"source_name": "feeds", "destination_name": "feeds", "destination_kind": "queue",
            "routing_key": "feed.#", "arguments": []} in ours["bindings"]
    (headers,) = [b for b in ours["bindings"] if b["source_name"] == "hdrs"]
    assert headers["arguments"] == [["kind", "longstr", "report"], ["x-match", "longstr", "all"]]


def test_a_mismatched_declaration_is_refused_by_the_server(amqp_url):
    """The check above would catch a difference: the server refuses a queue re-declared with
    other arguments, and our declare_queue surfaces that as aio-pika's channel error."""
    conf = Settings()
    conf["task_queue_max_priority"] = 5

    async def scenario():
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            await declare_queue(channel, Topology.default().queue("celery"))
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await declare_queue(channel, Topology.from_conf(conf).queue("celery"))
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_unknown_queue_with_create_missing_off_is_refused_before_the_server():
    conf = Settings()
    conf["task_create_missing_queues"] = False
    with pytest.raises(ImproperlyConfigured):
        Topology.from_conf(conf).queue("elsewhere")
