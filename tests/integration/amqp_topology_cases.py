"""Settings that declare one kind of queue each, shared by our process and upstream Celery's.

Each case names its own queue (``task_default_queue``), so all of them fit in one vhost.
Imports no Celery: the caller hands in the ``Queue``/``Exchange``/``binding`` classes
(kombu's, or ``celery.kombu_compat``'s).
"""

from __future__ import annotations

from typing import Any


def cases(Queue: Any, Exchange: Any, binding: Any) -> dict[str, dict[str, Any]]:  # noqa: N803
    return {
        # the default direct exchange and queue of an app with no settings
        "default": {},
        "topic": {"task_default_queue": "feeds",
                  "task_queues": [Queue("feeds", Exchange("feeds", type="topic"),
                                        routing_key="feed.#")]},
        "fanout": {"task_default_queue": "bcast",
                   "task_queues": [Queue("bcast", Exchange("bcast", type="fanout"))]},
        "priority": {"task_default_queue": "prio", "task_queue_max_priority": 10},
        "quorum": {"task_default_queue": "qq", "task_default_queue_type": "quorum"},
        "dead-letter": {"task_default_queue": "ttl", "task_queues": [
            Queue("ttl", Exchange("ttl"), "ttl", expires=300, max_length=1000,
                  queue_arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 60000})]},
        "bindings": {"task_default_queue": "multi", "task_queues": [
            Queue("multi", [binding(Exchange("m1", type="topic"), routing_key="a.#"),
                            binding(Exchange("m2", type="direct", durable=False), routing_key="b")])]},
        "dict-form": {"task_default_queue": "dictq", "task_queues": {
            "dictq": {"exchange": "dictx", "exchange_type": "topic", "routing_key": "d.#"}}},
    }
