"""A request's ``task.request`` context and time limits, a loop worker's bookkeeping of its
asyncio tasks, and the CLI worker's garbage collector settings."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from celery import Celery
from celery.bin.worker import tune_gc
from celery.messaging.protocol import Message
from celery.transport.base import Delivery
from celery.worker.executor.loop import _LoopWorker
from celery.worker.request import Outcome, Request

app = Celery("request-units", broker="memory://")


@app.task(name="units.add")
def add(x: int, y: int) -> int:
    return x + y


HEADERS = {
    "lang": "py", "task": "units.add", "id": "id-1", "shadow": "alias", "eta": "2026-01-01T00:00",
    "expires": "2026-01-02T00:00", "group": "g-1", "group_index": 3, "retries": 2,
    "timelimit": [30, 20], "root_id": "root-1", "parent_id": "parent-1", "argsrepr": "(1, 2)",
    "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": True,
}
PROPS = {"correlation_id": "id-1", "reply_to": "reply-q"}
EMBED = {"callbacks": ["cb"], "errbacks": ["eb"], "chain": ["next"], "chord": {"c": 1}}


def make_request(headers: dict | None = None, acks_late: bool = True) -> Request:
    message = Message(body=b"[[1, 2], {}, {}]", content_type="application/json",
                      content_encoding="utf-8", headers=dict(HEADERS if headers is None else headers),
                      properties=dict(PROPS))
    delivery = Delivery(message, "tag-1", "celery", delivery_info={"routing_key": "celery"})
    return Request(delivery, add, "units.add", "id-1", acks_late, True)


def test_headers_of_the_senders_own_are_request_attributes_that_replace_nothing() -> None:
    headers = {**HEADERS, "traceparent": "00-abc-def-01", "retries": 5, "hostname": "forged",
               "soft_deadline": 1.0, "children": ["forged"], "halt": "forged"}
    ctx = make_request(headers).context([1, 2], {}, {}, "worker@host")
    assert ctx.traceparent == "00-abc-def-01"  # type: ignore[attr-defined]
    assert ctx.get("traceparent") == "00-abc-def-01"
    assert ctx.retries == 5 and ctx.hostname == "worker@host"
    assert ctx.soft_deadline is None and ctx.children == [] and ctx.halt is None


def test_context_has_every_field_celery_fills() -> None:
    req = make_request()
    ctx = req.context([1, 2], {"k": 1}, EMBED, "worker@host")
    expected = {
        "id": "id-1", "task": "units.add", "args": [1, 2], "kwargs": {"k": 1}, "retries": 2,
        "eta": "2026-01-01T00:00", "expires": "2026-01-02T00:00", "group": "g-1",
        "group_index": 3, "root_id": "root-1", "parent_id": "parent-1", "origin": "gen1@host",
        "shadow": "alias", "timelimit": [30, 20], "argsrepr": "(1, 2)", "kwargsrepr": "{}",
        "ignore_result": True, "callbacks": ["cb"], "errbacks": ["eb"], "chain": ["next"],
        "chord": {"c": 1}, "correlation_id": "id-1", "reply_to": "reply-q",
        "delivery_info": {"routing_key": "celery"}, "hostname": "worker@host",
        "headers": req.headers, "properties": req.delivery.message.properties,
        "is_eager": False, "called_directly": False, "acks_late": True, "children": [],
        "lang": "py",  # every header is a request attribute, as in Celery
    }
    assert ctx.as_dict() == expected
    assert ctx.get("root_id") == "root-1" and ctx.get("nothing", "dflt") == "dflt"
    # Each execution gets its own children list (apply_async inside a task appends to it).
    other = req.context([], {}, {}, "worker@host")
    ctx.children.append("child")
    assert other.children == []


def test_context_defaults_for_a_sparse_message() -> None:
    ctx = make_request({"task": "units.add", "id": "id-1"}).context([], {}, {}, "w@h")
    assert (ctx.retries, ctx.eta, ctx.group, ctx.root_id, ctx.ignore_result) == (0, None, None,
                                                                                 None, False)
    assert ctx.callbacks is None and ctx.chord is None


@pytest.mark.parametrize(("header", "defaults", "expected"), [
    (None, (None, None), (None, None)),
    ([None, None], (60, 50), (60.0, 50.0)),
    ([30, 20], (60, 50), (30.0, 20.0)),
    (["2.5", 0], (None, None), (2.5, None)),
    (["nonsense", -1], (None, None), (None, None)),
    ("not a pair", (7, None), (7.0, None)),
])
def test_time_limits_header_then_task_then_worker(header, defaults, expected) -> None:
    headers = {"task": "units.add", "id": "id-1"}
    if header is not None:
        headers["timelimit"] = header
    assert make_request(headers).time_limits(*defaults) == expected


class _Tracer:
    """run_async waits until released; records outcomes."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run_async(self, req: Request) -> Outcome:
        await self.release.wait()
        return Outcome(req, "SUCCESS", None, 0.0)


def _on_loop(worker: _LoopWorker, fn):
    """Run ``fn`` on the worker's loop thread and return its value."""
    done = threading.Event()
    box: list = []

    def call() -> None:
        box.append(fn())
        done.set()

    worker.loop.call_soon_threadsafe(call)
    assert done.wait(5)
    return box[0]


def test_loop_worker_forgets_finished_and_cancelled_before_start_requests() -> None:
    outcomes: list[tuple[Outcome, bool]] = []
    tracer = _Tracer()
    worker = _LoopWorker(0, tracer, lambda outcome, alone=False: outcomes.append((outcome, alone)))
    worker.start()
    try:
        first, second = make_request(), make_request()
        # Abandoned in the same loop turn as it is handed over: cancelled before its first
        # step, so its _execute never runs; it must still be forgotten.
        worker.submit([first])
        worker.abandon(first, "terminated")
        worker.submit([second])
        assert _on_loop(worker, lambda: second in worker._by_request)
        _on_loop(worker, tracer.release.set)
        for _ in range(100):
            if not _on_loop(worker, lambda: len(worker._by_request) + len(worker._abandoned)):
                break
            threading.Event().wait(0.01)
        assert _on_loop(worker, lambda: (dict(worker._by_request), set(worker._abandoned))) == (
            {}, set())
        # The one that ran reported once; it was alone on its loop when it finished.
        assert [(o.request, o.state, alone) for o, alone in outcomes] == [(second, "SUCCESS", True)]
    finally:
        worker.stop(5)


@pytest.fixture
def gc_state():
    saved = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


def test_tune_gc_freezes_boot_objects_and_raises_the_young_threshold(gc_state) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc(10_000)
    assert gc.get_threshold() == (10_000, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("threshold", [None, 0, 500])
def test_tune_gc_leaves_the_collector_alone_when_off_or_lower(gc_state, threshold) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc(threshold)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
