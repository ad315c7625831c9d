"""An app on RabbitMQ (``TOPOAPP_BROKER``) whose task_queues mix real kombu and kombu_compat
queues, for ``celery purge`` on AMQP (tests/integration/test_amqp_purge.py)."""

from __future__ import annotations

import os

import kombu

from celery import Celery
from celery.kombu_compat import Exchange, Queue

app = Celery("amqp_topo_app", broker=os.environ.get("TOPOAPP_BROKER", "amqp://"),
             set_as_current=False)
app.conf.task_queues = [
    kombu.Queue("feeds", kombu.Exchange("feeds", type="topic"), routing_key="feed.#"),
    Queue("plain", Exchange("plain"), "plain"),
    Queue("prio", max_priority=5),
]
