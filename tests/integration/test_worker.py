"""The worker against real Redis: loop and sync workers, context, rejects, windows, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import threading
import time
import uuid
from typing import Any

import pytest
import valkey

from celery import Celery
from celery.exceptions import OperationalError
from celery.messaging.protocol import build_task_message

from ..conftest import kill_clients_named
from ..faults.procs import wait_until
from .worker_harness import running_worker

REDIS_DB = 4


def make_app(url: str, **conf) -> Celery:
    app = Celery("wtest", broker=url, backend=url, **conf)

    @app.task
    def add(x, y):
        return x + y

    @app.task
    async def aadd(x, y):
        await asyncio.sleep(0)
        return x + y

    @app.task(bind=True)
    async def whoami(self, expected, delay):
        await asyncio.sleep(delay)
        req = self.request
        return [req.id, expected, list(req.args), req.kwargs, req.retries, req.hostname,
                req.delivery_info.get("routing_key")]

    @app.task(bind=True)
    def sync_whoami(self):
        return [self.request.id, self.request.root_id, self.request.parent_id]

    @app.task
    def fail(msg):
        raise KeyError(msg)

    @app.task
    async def afail(msg):
        raise ValueError(msg)

    @app.task
    async def sleeper(seconds):
        await asyncio.sleep(seconds)
        return seconds

    @app.task
    def sync_sleeper(seconds):
        time.sleep(seconds)
        return seconds

    @app.task(bind=True)
    async def spawns_child(self):
        # A sync delay() from inside a running event loop (the loop worker's) must work.
        child = sync_whoami.delay()
        return [child.id, self.request.id]

    @app.task
    def sends_to(queue):
        # Redis refuses the LPUSH when ``queue`` is a key holding a string (WRONGTYPE).
        return add.apply_async((1, 1), queue=queue).id

    @app.task
    async def asends_to(queue):
        return add.apply_async((1, 1), queue=queue).id  # a sync delay() in an async task

    @app.task
    def sends_then_fails(queue):
        add.apply_async((1, 1), queue=queue)
        raise ValueError("failed after sending")

    @app.task(ignore_result=True)
    def quiet():
        return 1

    @app.task(acks_late=True)
    async def late(seconds):
        await asyncio.sleep(seconds)
        return "late"

    return app


@pytest.fixture
def app(redis_url):
    app = make_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def rclient(redis_url):
    client = valkey.Valkey.from_url(redis_url)
    yield client
    client.close()


def test_sync_and_async_tasks_run_and_store_results(app):
    with running_worker(app, loop_workers=2, sync_workers=2):
        assert app.tasks["tests.integration.test_worker.add"].delay(2, 3).get(timeout=10) == 5
        aadd = app.tasks["tests.integration.test_worker.aadd"]
        results = [aadd.delay(i, i) for i in range(50)]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
        assert results[0].state == "SUCCESS" and results[0].successful()


def test_failures_are_stored_and_propagated(app):
    with running_worker(app):
        r = app.tasks["tests.integration.test_worker.fail"].delay("nope")
        with pytest.raises(KeyError, match="nope"):
            r.get(timeout=10)
        assert r.failed() and r.state == "FAILURE"
        assert "KeyError" in r.traceback
        r2 = app.tasks["tests.integration.test_worker.afail"].delay("bad")
        assert isinstance(r2.get(timeout=10, propagate=False), ValueError)


def test_1000_interleaved_async_tasks_each_see_their_own_request(app):
    whoami = app.tasks["tests.integration.test_worker.whoami"]
    rng = random.Random(7)
    with running_worker(app, loop_workers=2, loop_concurrency=500, sync_workers=1):
        results = [whoami.apply_async((i, rng.random() * 0.05), {}, queue="celery") for i in range(1000)]
        seen = [r.get(timeout=60) for r in results]
    for i, (r, got) in enumerate(zip(results, seen, strict=True)):
        req_id, expected, args, kwargs, retries, hostname, routing_key = got
        assert req_id == r.id
        assert expected == i and args[0] == i
        assert kwargs == {} and retries == 0 and routing_key == "celery"
        assert hostname and "@" in hostname


async def test_await_result_and_async_send(app):
    aadd = app.tasks["tests.integration.test_worker.aadd"]
    with running_worker(app):
        result = await aadd.adelay(20, 22)
        assert await result == 42
        again = await aadd.aapply_async((1, 2))
        assert await again.aget(timeout=10) == 3


def test_sync_delay_inside_async_task_sets_parent_and_root(app):
    with running_worker(app, loop_workers=1, sync_workers=1):
        parent = app.tasks["tests.integration.test_worker.spawns_child"].delay()
        child_id, parent_id = parent.get(timeout=10)
        assert parent_id == parent.id
        child = app.AsyncResult(child_id)
        got_id, root_id, got_parent = child.get(timeout=10)
        assert got_id == child_id and root_id == parent.id and got_parent == parent.id
        assert parent.children and parent.children[0].id == child_id


def test_unknown_task_and_malformed_messages_are_rejected_and_worker_continues(app, rclient, caplog):
    caplog.set_level(logging.ERROR, logger="celery.worker.consumer")
    with running_worker(app):
        unknown = app.send_task("no.such.task", (1,))
        # a valid envelope whose headers are not a task message
        bogus = build_task_message("x", (), {})
        app.transport.publish(
            type(bogus)(bogus.body, bogus.content_type, bogus.content_encoding, {"foo": 1},
                        bogus.properties, "", "celery"))
        ok = app.tasks["tests.integration.test_worker.add"].delay(1, 1)
        assert ok.get(timeout=10) == 2
        assert unknown.state == "PENDING"
    text = caplog.text
    assert "unregistered task of type 'no.such.task'" in text
    assert "malformed message" in text
    assert rclient.hlen("unacked") == 0 and rclient.llen("celery") == 0


def test_refused_content_type_is_rejected_with_a_clear_log(app, rclient, caplog):
    caplog.set_level(logging.ERROR, logger="celery.worker.consumer")
    add = app.tasks["tests.integration.test_worker.add"]
    with running_worker(app):
        refused = add.apply_async((1, 2), serializer="pickle")
        ok = add.delay(2, 2)
        assert ok.get(timeout=10) == 4
        assert refused.state == "PENDING"
    assert "content type 'application/x-python-serialize' is not in accept_content" in caplog.text
    assert rclient.hlen("unacked") == 0


@pytest.mark.parametrize("pipelined", [False, True], ids=["confirmed", "pipelined"])
def test_a_message_redis_refuses_fails_the_task_that_sent_it(redis_url, rclient, pipelined):
    # A confirmed publish (the default) raises the refusal inside the task. Pipelined
    # (publish_pipeline=True), the worker waits for the replies to a task's own messages
    # before it settles the task: either way the refusal fails that task, not a later one.
    app = make_app(redis_url, broker_transport_options={"publish_pipeline": pipelined})
    rclient.set("not-a-queue", "a string")
    try:
        with running_worker(app, loop_workers=1, sync_workers=1):
            # Pipelined, a task that fails anyway keeps its own error (confirmed, the send
            # raised first); either way its thread's next task is not blamed.
            failed = app.tasks["tests.integration.test_worker.sends_then_fails"].delay("not-a-queue")
            error = (ValueError, "failed after sending") if pipelined else \
                (OperationalError, "WRONGTYPE")
            with pytest.raises(error[0], match=error[1]):
                failed.get(timeout=10)
            after = app.tasks["tests.integration.test_worker.sends_to"].delay("celery")
            assert app.AsyncResult(after.get(timeout=10)).get(timeout=10) == 2
            for name in ("sends_to", "asends_to"):
                task = app.tasks[f"tests.integration.test_worker.{name}"]
                refused = task.delay("not-a-queue")
                with pytest.raises(Exception, match="WRONGTYPE") as info:
                    refused.get(timeout=10)
                assert type(info.value).__name__ == "OperationalError"
                assert refused.state == "FAILURE"
                sent = task.delay("celery")  # the worker's queue: the child runs
                assert app.AsyncResult(sent.get(timeout=10)).get(timeout=10) == 2
    finally:
        rclient.delete("not-a-queue")
        app.close()


def test_prefetch_window_bounds_unacked_messages(redis_url, rclient):
    app = make_app(redis_url, worker_prefetch_multiplier=2, task_acks_late=True)
    sleeper = app.tasks["tests.integration.test_worker.sync_sleeper"]
    try:
        results = [sleeper.delay(0.2) for _ in range(20)]
        with running_worker(app, loop_workers=0, sync_workers=2):
            window = 2 * 2
            peak = 0
            deadline = time.monotonic() + 30
            while not all(r.ready() for r in results) and time.monotonic() < deadline:
                peak = max(peak, rclient.hlen("unacked"))
                assert rclient.hlen("unacked") <= window
                time.sleep(0.02)
            assert all(r.get(timeout=1) == 0.2 for r in results)
        assert peak == window  # the window was used, and never exceeded
    finally:
        app.close()


def test_acks_late_keeps_message_unacked_until_done(app, rclient):
    late = app.tasks["tests.integration.test_worker.late"]
    with running_worker(app):
        r = late.delay(0.5)
        deadline = time.monotonic() + 5
        while rclient.hlen("unacked") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rclient.hlen("unacked") == 1  # running, still reserved
        assert r.get(timeout=10) == "late"
        deadline = time.monotonic() + 5
        while rclient.hlen("unacked") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rclient.hlen("unacked") == 0


def fetching_app(redis_url: str) -> tuple[Celery, str]:
    """An app whose broker connections carry a name of their own (see ``wait_fetching``)."""
    name = f"wtest-{uuid.uuid4().hex[:8]}"
    return make_app(redis_url, broker_transport_options={"client_name": name}), name


def wait_fetching(rclient, name: str) -> None:
    """Until the worker of the app ``fetching_app`` named ``name`` waits for a message: each
    of its blocking fetch connections (BLMOVE, one per priority key) blocked in Redis."""

    def blocked() -> bool:
        fetches = [c for c in rclient.client_list()
                   if c.get("name") == name and c.get("cmd") == "blmove"]
        return bool(fetches) and all("b" in c.get("flags", "") for c in fetches)

    wait_until(blocked, 30, "the worker to wait in BLMOVE")


def held_task(app: Celery) -> tuple[Any, queue.SimpleQueue[str], threading.Event]:
    """A task that says it started and runs until the test releases it: the worker's thread
    puts its id in ``started`` (a SimpleQueue, read by the test's thread) and waits on
    ``release`` (an Event the test sets), so no step depends on the machine's speed."""
    release = threading.Event()
    started: queue.SimpleQueue[str] = queue.SimpleQueue()

    @app.task(bind=True, name="tests.integration.test_worker.held")
    def held(self):
        started.put(self.request.id)
        if not release.wait(30):
            raise TimeoutError("never released")
        return "done"

    return held, started, release


def test_an_idle_worker_starts_a_task_before_recording_its_message(redis_url, rclient,
                                                                   monkeypatch):
    """An idle worker hands the message BRPOP popped to its task at once. Acked early, it is
    never recorded in ``unacked`` and needs no ack; an acks_late one is recorded, and acked
    when done."""
    from celery.transport.redis import RedisTransport

    acked: list[str] = []
    real_ack = RedisTransport.ack

    async def ack(self, deliveries):
        acked.extend(d.message.headers["id"] for d in deliveries)
        await real_ack(self, deliveries)

    monkeypatch.setattr(RedisTransport, "ack", ack)
    app, name = fetching_app(redis_url)
    sleeper = app.tasks["tests.integration.test_worker.sync_sleeper"]
    late = app.tasks["tests.integration.test_worker.late"]
    try:
        with running_worker(app):
            wait_fetching(rclient, name)
            early = sleeper.delay(0.3)
            recorded = 0
            while not early.ready():
                recorded = max(recorded, rclient.hlen("unacked"))
                time.sleep(0.01)
            assert early.get(timeout=10) == 0.3 and recorded == 0
            wait_fetching(rclient, name)
            kept = late.delay(0.3)
            wait_until(lambda: rclient.hlen("unacked") or kept.ready(), 30,
                       "the acks_late message to be recorded")
            assert rclient.hlen("unacked") == 1  # running, and recorded
            assert kept.get(timeout=10) == "late"
        assert early.id not in acked and kept.id in acked
        assert rclient.exists("unacked", "unacked_index") == 0
    finally:
        app.close()


@pytest.mark.parametrize("pause", [20.0, 0.5], ids=["outcome-ends-it", "it-runs-out"])
def test_after_a_hand_off_the_next_fetch_waits_for_an_outcome_or_the_pause(
        redis_url, rclient, monkeypatch, pause):
    """After an early hand-off, the next fetch waits until an outcome comes back, or at
    most HANDOFF_PAUSE (set here so that each end can be seen on its own: 20 s, far longer
    than the test waits, can only end by the outcome; a task held until the test releases
    it gives no outcome, so its 0.5 s pause can only run out). The pause is for a GIL: a
    free-threaded build with the GIL off runs this as if the GIL were on."""
    from celery.worker import handoff

    monkeypatch.setattr(handoff, "HANDOFF_PAUSE", pause)
    monkeypatch.setattr(handoff.gil, "enabled", lambda: True)
    app, name = fetching_app(redis_url)
    held, started, release = held_task(app)
    add = app.tasks["tests.integration.test_worker.add"]
    try:
        with running_worker(app):
            wait_fetching(rclient, name)
            first = held.delay()
            assert started.get(timeout=30) == first.id  # handed off, running
            second = add.delay(1, 2)
            if pause > 10:
                release.set()  # its outcome ends the pause: the second comes well before
                assert second.get(timeout=10) == 3
                assert first.get(timeout=10) == "done"
            else:  # no outcome: fetched once the pause ran out, the first still running
                assert second.get(timeout=10) == 3
                assert not first.ready()
                release.set()
                assert first.get(timeout=10) == "done"
    finally:
        release.set()
        app.close()


def test_ignore_result_stores_nothing(app, rclient):
    with running_worker(app):
        r = app.tasks["tests.integration.test_worker.quiet"].delay()
        marker = app.tasks["tests.integration.test_worker.add"].delay(0, 0)
        assert marker.get(timeout=10) == 0
        assert rclient.get(f"celery-task-meta-{r.id}") is None


def test_warm_stop_requeues_unstarted_prefetched_messages_at_once(redis_url, rclient):
    """A warm stop gives the prefetched messages that did not start back to the queue while
    the running task still runs (not after the visibility timeout), then lets that one end.
    The task is held on an event, so no step of this depends on how fast the machine is."""
    app = make_app(redis_url, worker_prefetch_multiplier=4)
    held, started, release = held_task(app)
    try:
        results = [held.delay() for _ in range(6)]
        with running_worker(app, loop_workers=0, sync_workers=1) as worker:
            # a window of 4: 1 running (held), 3 prefetched, 2 left in the queue
            wait_until(lambda: started.qsize() == 1 and rclient.llen("celery") == 2, 30,
                       "one task running and 4 messages prefetched")
            running = next(r for r in results if r.id == started.get_nowait())
            worker.stop()
            wait_until(lambda: rclient.llen("celery") == 5, 30,
                       "the 3 unstarted messages back in the queue")
            assert not running.ready()  # ... while the running task still ran
            release.set()
        assert started.empty()  # no other task started
        assert running.get(timeout=10) == "done"
        assert [r.state for r in results if r is not running] == ["PENDING"] * 5
        assert rclient.llen("celery") == 5
        assert rclient.hlen("unacked") == 0
    finally:
        release.set()
        app.close()


def test_worker_consumes_several_queues(app, rclient):
    add = app.tasks["tests.integration.test_worker.add"]
    with running_worker(app, queues=["celery", "other"]):
        results = [add.apply_async((i, 0), queue="other") for i in range(5)]
        results.append(add.delay(7, 0))
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3, 4, 7]
    with running_worker(app, queues=["only-this"]):
        skipped = add.apply_async((1, 1), queue="other")
        assert add.apply_async((2, 2), queue="only-this").get(timeout=10) == 4
    assert rclient.llen("other") == 1 and skipped.state == "PENDING"


def test_worker_recovers_when_broker_connections_are_dropped(redis_url, rclient):
    # Every connection of this app (broker and results, worker and producer) is named, and
    # only those are killed: other programs on the same Redis are left alone.
    name = f"wtest-{uuid.uuid4().hex[:8]}"
    app = make_app(redis_url, broker_transport_options={"client_name": name},
                   result_backend_transport_options={"client_name": name})
    add = app.tasks["tests.integration.test_worker.add"]
    aadd = app.tasks["tests.integration.test_worker.aadd"]
    with running_worker(app):
        first = [add.delay(i, 1) for i in range(100)]
        assert kill_clients_named(rclient, name) > 0
        second = [aadd.delay(i, 2) for i in range(100)]
        assert kill_clients_named(rclient, name) > 0
        assert [r.get(timeout=30) for r in first] == [i + 1 for i in range(100)]
        assert [r.get(timeout=30) for r in second] == [i + 2 for i in range(100)]
    app.close()
    assert rclient.hlen("unacked") == 0
    # A publish whose connection was killed before its reply came is sent again, and may
    # have landed the first time too (at-least-once): a copy of a task already done may be
    # left in the queue, one per kill at most, and nothing else.
    left = [json.loads(raw)["headers"]["id"] for raw in rclient.lrange("celery", 0, -1)]
    assert set(left) <= {r.id for r in first + second} and len(left) <= 2, left


def test_a_lone_result_is_written_by_the_thread_that_ran_the_task(app, monkeypatch):
    """An executor with nothing else to do stores the result itself (worker/results.py);
    in a burst, results go to the consumer's flusher, in batches."""
    from celery.backends.redis import RedisBackend

    writers: list[str] = []
    real = RedisBackend.store_now

    def spy(self, task_id, payload, state):
        writers.append(threading.current_thread().name)
        return real(self, task_id, payload, state)

    monkeypatch.setattr(RedisBackend, "store_now", spy)
    add = app.tasks["tests.integration.test_worker.add"]
    aadd = app.tasks["tests.integration.test_worker.aadd"]
    with running_worker(app, loop_workers=1, sync_workers=2):
        assert add.delay(2, 3).get(timeout=10) == 5
        assert aadd.delay(4, 5).get(timeout=10) == 9
        assert writers[0].startswith("sync-worker-") and writers[1] == "loop-worker-0"
        writers.clear()
        burst = [add.delay(i, i) for i in range(300)]
        assert [r.get(timeout=20) for r in burst] == [2 * i for i in range(300)]
        assert len(writers) < 300  # some, at least, were batched by the flusher


def test_a_lone_result_whose_direct_write_fails_is_written_by_the_flusher(app, monkeypatch):
    """A sync thread's write of a lone result fails (injected here, as a connection error
    would surface): the result goes to the flusher, which stores it, and further lone
    results go to the flusher too for a while."""
    from celery.backends.redis import RedisBackend
    from celery.exceptions import ConnectionLost

    calls: list[str] = []
    real = RedisBackend.store_now

    def flaky(self, task_id, payload, state):
        calls.append(task_id)
        if len(calls) == 2:
            raise ConnectionLost("injected: Redis went away")
        return real(self, task_id, payload, state)

    monkeypatch.setattr(RedisBackend, "store_now", flaky)
    add = app.tasks["tests.integration.test_worker.add"]
    with running_worker(app, loop_workers=1, sync_workers=1):
        first = add.delay(1, 1)
        assert first.get(timeout=10) == 2
        failed = add.delay(2, 2)
        assert failed.get(timeout=10) == 4  # written by the flusher
        after = add.delay(3, 3)
        assert after.get(timeout=10) == 6  # by the flusher too: direct writes paused
        assert calls == [first.id, failed.id]
