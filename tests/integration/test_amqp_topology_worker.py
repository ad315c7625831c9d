"""Our client and workers on RabbitMQ with a Celery topology beyond the default queue:
a topic queue reached with a routing key the sender gives, a countdown task parked in the
broker (Celery 5.5's native delayed delivery on a quorum queue), a Broadcast queue that
every worker gets each message of, and consumer arguments (x-priority) on basic.consume.
Upstream Celery's client parks a countdown task for our workers too."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from celery import Celery
from celery.kombu_compat import Broadcast, Exchange, Queue
from tests.compat.test_upstream_interop import _upstream_python
from tests.conftest import fresh_amqp_vhost
from tests.faults.procs import Worker, wait_until

pytestmark = pytest.mark.amqp
AMQP_VHOST = "celery-topo-worker"


UPSTREAM_PARK = """
import sys
from celery import Celery
from kombu import Exchange, Queue
app = Celery("up", broker=sys.argv[1], set_as_current=False)
app.conf.task_queues = [Queue("qwork", Exchange("qwork", type="topic"), "qw.#",
                              queue_arguments={"x-queue-type": "quorum"})]
app.send_task("topo.where", ("upstream",), queue="qwork", countdown=2)
"""


def _seen(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_topic_routing_native_delay_and_broadcast_with_two_workers(tmp_path: Path) -> None:
    url = fresh_amqp_vhost(AMQP_VHOST)
    log = tmp_path / "seen.log"
    env = {"TOPOW_BROKER": url, "TOPOW_BACKEND": f"db+sqlite:///{tmp_path}/results.db",
           "TOPOW_LOG": str(log)}
    options = ("--loop-workers=1", "--sync-workers=1", "-Q", "feeds,qwork,everyone")
    workers = [Worker(env, *options, "-n", f"w{i}@%h", cwd=tmp_path,
                      app="amqp_topo_worker_app") for i in (1, 2)]
    client = Celery("client", broker=url, backend=env["TOPOW_BACKEND"], set_as_current=False)
    client.conf.task_queues = [  # as the workers' app declares them
        Queue("feeds", Exchange("feeds", type="topic"), "feed.#"),
        Queue("qwork", Exchange("qwork", type="topic"), "qw.#",
              queue_arguments={"x-queue-type": "quorum"}),
        Broadcast("everyone"),
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        # a routing key given with the queue: published to the topic exchange with that key
        topic = client.send_task("topo.where", ("topic",), queue="feeds",
                                 routing_key="feed.special").get(timeout=30)
        assert (topic["exchange"], topic["routing_key"]) == ("feeds", "feed.special")
        # quorum queue on a topic exchange: the countdown is parked in celery_delayed_27
        sent = time.time()
        parked = client.send_task("topo.where", ("parked",), queue="qwork",
                                  countdown=2).get(timeout=30)
        assert time.time() - sent >= 1.9
        # 28 binary digits of the whole seconds left when it was published (2, or 1 on a
        # machine slow enough to take a tenth of a second to publish), then the binding key
        assert re.fullmatch(r"(?:[01]\.){28}qw\.#", parked["routing_key"]), parked
        # upstream Celery 5.x parks its countdown task the same way; our worker's levels and
        # binding bring it in
        done = subprocess.run([str(_upstream_python()), "-c", UPSTREAM_PARK, url],
                              capture_output=True, text=True, timeout=120, env={})
        assert done.returncode == 0, done.stderr[-2000:]
        wait_until(lambda: any(s["tag"] == "upstream" for s in _seen(log)), 30,
                   "the task upstream parked to run")
        (upstream,) = [s for s in _seen(log) if s["tag"] == "upstream"]
        assert upstream["routing_key"] == "0." * 26 + "1.0.qw.#"
        # Broadcast: one message, run by both workers (each has a queue of its own)
        client.send_task("topo.where", ("all",), queue="everyone")
        wait_until(lambda: len([s for s in _seen(log) if s["tag"] == "all"]) == 2, 30,
                   "both workers to run the broadcast task")
        hosts = {s["hostname"].split("@")[0] for s in _seen(log) if s["tag"] == "all"}
        assert hosts == {"w1", "w2"}
        # consumer_arguments reach basic.consume: both workers consume feeds with x-priority 5
        listed = subprocess.run(["rabbitmqctl", "-q", "list_consumers", "-p", AMQP_VHOST,
                                 "queue_name", "arguments", "--formatter", "json"],
                                capture_output=True, text=True, timeout=60, check=True)
        feeds = [c["arguments"] for c in json.loads(listed.stdout) if c["queue_name"] == "feeds"]
        assert feeds == [[["x-priority", "byte", 5]]] * 2, feeds
    finally:
        client.close()
        for worker in workers:
            worker.stop(30)
    for worker in workers:
        assert "Traceback" not in worker.output, worker.output
