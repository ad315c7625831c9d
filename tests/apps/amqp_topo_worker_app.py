"""App for tests/integration/test_amqp_topology_worker.py: a topic queue, a quorum queue on a
topic exchange (Celery 5.5's native delayed delivery) and a Broadcast queue; the task logs
where each message came from.

Settings from the environment: TOPOW_BROKER, TOPOW_BACKEND, TOPOW_LOG.
"""

from __future__ import annotations

import json
import os

from celery import Celery
from celery.kombu_compat import Broadcast, Exchange, Queue

app = Celery("amqp_topo_worker_app", broker=os.environ["TOPOW_BROKER"],
             backend=os.environ.get("TOPOW_BACKEND") or None, set_as_current=False)
app.conf.task_queues = [
    Queue("feeds", Exchange("feeds", type="topic"), "feed.#",
          consumer_arguments={"x-priority": 5}),
    Queue("qwork", Exchange("qwork", type="topic"), "qw.#",
          queue_arguments={"x-queue-type": "quorum"}),
    Broadcast("everyone"),
]
# O_APPEND: each line is written whole, whatever other processes append meanwhile.
_LOG = os.open(os.environ["TOPOW_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.task(name="topo.where", bind=True)
def where(self, tag: str) -> dict:
    info = self.request.delivery_info or {}
    seen = {"tag": tag, "hostname": self.request.hostname, "exchange": info.get("exchange"),
            "routing_key": info.get("routing_key")}
    os.write(_LOG, (json.dumps(seen) + "\n").encode())
    return seen
