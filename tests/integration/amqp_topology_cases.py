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
        "headers": {"task_default_queue": "hdrs", "task_queues": [
            Queue("hdrs", Exchange("hdrs", type="headers"),
                  binding_arguments={"x-match": "all", "kind": "report"})]},
        "dict-form": {"task_default_queue": "dictq", "task_queues": {
            "dictq": {"exchange": "dictx", "exchange_type": "topic", "routing_key": "d.#"}}},
    }


def route_cases(Queue: Any, Exchange: Any, binding: Any, Broadcast: Any) -> list[tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]]:  # noqa: N803
    """``(settings, [(task name, apply_async options), ...])``: sends whose exchange and routing
    key upstream's ``send_task_message`` picks and ``Topology.target`` must pick alike."""
    mixed = {
        "task_queues": [
            Queue("celery"),
            Queue("feeds", Exchange("feeds", type="topic"), "feed.#"),
            Queue("bcast", Exchange("bcast", type="fanout")),
            Queue("video", Exchange("media"), "media.video"),
            Queue("multi", [binding(Exchange("m1", type="topic"), routing_key="a.#")]),
            Broadcast("everyone"),
        ],
        "task_routes": {
            "r.feeds": {"queue": "feeds"},
            "r.key": {"queue": "feeds", "routing_key": "feed.special"},
            "r.obj": {"queue": Queue("routed", Exchange("rx", type="topic"), "r.#")},
            "r.ex": {"exchange": "media", "routing_key": "media.video"},
            "r.str": "video",
        },
    }
    sends = [
        ("t", {}), ("t", {"queue": "feeds"}), ("t", {"queue": "feeds", "routing_key": "feed.x"}),
        ("t", {"queue": "bcast"}), ("t", {"queue": "video"}),
        ("t", {"queue": "video", "routing_key": "media.other"}), ("t", {"queue": "multi"}),
        ("t", {"queue": "nowhere"}), ("t", {"exchange": "media", "routing_key": "media.video"}),
        ("t", {"exchange": "media"}), ("t", {"routing_key": "foo"}),
        ("r.feeds", {}), ("r.key", {}), ("r.obj", {}), ("r.ex", {}), ("r.str", {}),
        ("r.feeds", {"routing_key": "feed.override"}), ("t", {"queue": "everyone"}),
        ("t", {"queue": "feeds", "routing_key": "feeds"}),  # a key equal to the queue's name
    ]
    topic_default = {"task_default_queue": "work", "task_default_exchange": "tasks",
                     "task_default_exchange_type": "topic", "task_default_routing_key": "task.default"}
    return [
        ({}, [("t", {}), ("t", {"queue": "other"}), ("t", {"routing_key": "k"})]),
        (mixed, sends),
        (topic_default, [("t", {}), ("t", {"queue": "other"}), ("t", {"routing_key": "task.k"}),
                         ("t", {"queue": "work", "routing_key": "task.k"})]),
        ({"task_create_missing_queue_exchange_type": "topic"},
         [("t", {"queue": "fresh"}), ("t", {"queue": "fresh", "routing_key": "fresh.k"})]),
    ]
