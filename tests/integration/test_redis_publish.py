"""Sync publishing on a real Redis. Confirmed (the default): a refusal raised by its own
publish, a broken connection retried. Pipelined (``publish_pipeline=True``): order, refusals
raised later, broken connections, barriers."""
# ruff: noqa: F811 - pytest fixtures imported from the transport tests

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid

import pytest
import valkey

from celery import Celery
from celery.exceptions import ConnectionLost, OperationalError
from celery.transport import redis_publish
from celery.transport.redis import RedisTransport

from ..conftest import kill_clients_named
from .test_redis_transport import raw, task  # noqa: F401

REDIS_DB = 2

pytestmark = pytest.mark.redis


def named_transport(redis_url: str, **options) -> tuple[RedisTransport, str]:
    """A transport whose connections only the test kills; pipelined unless told."""
    name = f"ptest-{uuid.uuid4().hex[:8]}"
    options = {"client_name": name, "publish_pipeline": True, **options}
    return RedisTransport(redis_url, transport_options=options), name


def test_a_default_publish_is_confirmed_and_raises_its_own_refusal(redis_url, raw):
    """delay() returns once Redis accepted the message; one Redis refuses raises from that
    very delay() (it used to be raised by the sending thread's next call, or never)."""
    app = Celery("pub", broker=redis_url, backend=redis_url, set_as_current=False)

    @app.task(name="pub.add")
    def add(x, y):
        return x + y

    try:
        first = add.delay(1, 2)
        assert queued_ids(raw) == [first.id]  # accepted before delay() returned
        raw.set("celery", "not a list")  # LPUSH onto it gets WRONGTYPE
        with pytest.raises(OperationalError, match="WRONGTYPE") as info:
            add.delay(3, 4)
        assert "refused the message of task" in str(info.value)
        raw.delete("celery")
        after = add.delay(5, 6)  # nothing left over for the next call
        assert queued_ids(raw) == [after.id]
    finally:
        app.close()


def test_a_confirmed_publish_into_a_killed_connection_goes_again(redis_url, raw):
    transport, name = named_transport(redis_url, publish_pipeline=False)
    transport.publish(task("t", 0))
    assert kill_clients_named(raw, name) == 1  # the idle connection is closed by the server
    transport.publish(task("t", 1))
    assert len(queued_ids(raw)) == 2
    transport.close()


def queued_ids(raw: valkey.Valkey, queue: str = "celery") -> list[str]:
    """Task ids in ``queue`` in delivery order (consumers pop from the tail)."""
    return [json.loads(e)["headers"]["id"] for e in reversed(raw.lrange(queue, 0, -1))]


def pipeline_of(transport: RedisTransport) -> redis_publish.Pipeline:
    pipeline = transport._publisher._pipeline
    assert pipeline is not None
    return pipeline


def test_publishes_are_pipelined_and_keep_their_order(redis_url, raw):
    transport, _ = named_transport(redis_url)
    messages = [task("t", n) for n in range(300)]
    for m in messages:
        transport.publish(m)
    # A publish reads replies only before it writes, so at least the last one is unread;
    # how many more depends on how fast Redis answered, never more than the window.
    assert 0 < len(pipeline_of(transport)._unconfirmed) <= redis_publish.WINDOW
    transport.confirm_published()
    assert not pipeline_of(transport)._unconfirmed
    assert queued_ids(raw) == [m.headers["id"] for m in messages]
    transport.close()


def test_confirmed_mode_waits_for_each_reply(redis_url, raw):
    transport, _ = named_transport(redis_url, publish_pipeline=False)
    m = task("t", 1)
    transport.publish(m)
    assert transport._publisher._pipeline is None
    assert queued_ids(raw) == [m.headers["id"]]  # there before publish returned
    assert queued_ids(raw) == [m.headers["id"]]
    transport.close()


def test_a_refused_message_is_raised_by_the_next_publish_which_sends_nothing(redis_url, raw):
    transport, _ = named_transport(redis_url)
    raw.set("celery", "not a list")  # LPUSH onto it gets WRONGTYPE
    refused = task("t", 1)
    transport.publish(refused)
    assert pipeline_of(transport)._conn.can_read(timeout=5)  # its reply has arrived
    time.sleep(2 * redis_publish.IDLE_DRAIN)  # a pause: the next publish reads replies first
    raw.delete("celery")
    unsent = task("t", 2)
    with pytest.raises(OperationalError, match=refused.headers["id"]) as info:
        transport.publish(unsent)
    assert "WRONGTYPE" in str(info.value)
    after = task("t", 3)
    transport.publish(after)
    transport.confirm_published()
    assert queued_ids(raw) == [after.headers["id"]]  # the refused one's successor not sent
    transport.close()


def test_confirm_raises_a_refusal_and_get_does_not_time_out(redis_url, raw):
    app = Celery("pub", broker=redis_url, backend=redis_url,
                 broker_transport_options={"publish_pipeline": True})

    @app.task(name="pub.add")
    def add(x, y):
        return x + y

    raw.set("celery", "not a list")
    result = add.delay(1, 2)
    with pytest.raises(OperationalError, match=result.id):
        result.get(timeout=5)
    app.close()


@pytest.mark.parametrize("pause", ["checked after a pause", "found at the next read"])
def test_messages_sent_into_a_killed_connection_are_sent_again(redis_url, raw, pause,
                                                               monkeypatch):
    if pause == "found at the next read":  # no idle check: the burst writes into the dead socket
        monkeypatch.setattr(redis_publish, "IDLE_DRAIN", 10**9)
    transport, name = named_transport(redis_url)
    first = [task("t", n) for n in range(5)]
    for m in first:
        transport.publish(m)
    transport.confirm_published()
    assert kill_clients_named(raw, name) == 1
    # Either the first publish after the kill sees the closed connection, or the burst's
    # writes succeed locally, the next read of replies finds the connection closed and
    # everything unanswered goes again on a new connection.
    burst = [task("t", n) for n in range(5, 60)]
    for m in burst:
        transport.publish(m)
    transport.confirm_published()
    ids = queued_ids(raw)
    assert set(ids) == {m.headers["id"] for m in first + burst}  # at least once, none lost
    assert ids[:5] == [m.headers["id"] for m in first]
    transport.close()


def test_gives_up_after_its_retries_and_keeps_earlier_messages(redis_url):
    transport = RedisTransport("redis://127.0.0.1:1/0",
                               transport_options={"max_retries": 1, "publish_pipeline": True})
    with pytest.raises(ConnectionLost, match="127.0.0.1:1"):
        transport.publish(task("t"))
    assert not pipeline_of(transport)._unconfirmed  # the failed publish's own message went
    transport.close()


def test_the_window_bounds_messages_without_a_reply(redis_url, raw, monkeypatch):
    monkeypatch.setattr(redis_publish, "DRAIN_EVERY", 10**9)  # only the window reads
    monkeypatch.setattr(redis_publish, "IDLE_DRAIN", 10**9)
    monkeypatch.setattr(redis_publish, "WINDOW", 64)
    transport, _ = named_transport(redis_url)
    for n in range(200):
        transport.publish(task("t", n))
        assert len(pipeline_of(transport)._unconfirmed) <= 64
    transport.confirm_published()
    assert raw.llen("celery") == 200
    transport.close()


async def test_queue_length_and_purge_see_pipelined_publishes(redis_url, raw):
    transport, _ = named_transport(redis_url)
    for n in range(40):
        transport.publish(task("t", n))
    assert await transport.queue_length("celery") == 40
    transport.publish(task("t", 40))
    assert await transport.purge("celery") == 41
    await transport.aclose()
    transport.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_publishes_on_its_own_connection(redis_url, raw):
    transport, _ = named_transport(redis_url)
    parent = task("t", "parent")
    transport.publish(parent)
    pid = os.fork()
    if pid == 0:  # child: its own connection, none of the parent's unconfirmed messages
        try:
            transport.publish(task("t", "child"))
            transport.confirm_published()
            os._exit(0 if not pipeline_of(transport)._unconfirmed else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    transport.confirm_published()
    bodies = [json.loads(e)["headers"]["argsrepr"] for e in raw.lrange("celery", 0, -1)]
    assert sorted(bodies) == ["('child',)", "('parent',)"]
    transport.close()


def test_a_refusal_is_raised_to_the_thread_that_sent_it(redis_url, raw):
    transport, _ = named_transport(redis_url)
    raw.set("celery", "not a list")  # LPUSH onto it gets WRONGTYPE
    refused, errors = task("t", "refused"), []
    published, go_on = threading.Event(), threading.Event()

    def sender() -> None:
        transport.publish(refused)
        published.set()
        go_on.wait(10)
        try:
            transport.confirm_own_published()
        except OperationalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    assert published.wait(10)
    pipeline = pipeline_of(transport)
    assert pipeline._conn.can_read(timeout=5)  # the refusal's reply has arrived
    raw.delete("celery")
    answered = pipeline._answered
    transport.confirm_own_published()  # this thread sent nothing: no wait, nothing read
    assert pipeline._answered == answered
    time.sleep(2 * redis_publish.IDLE_DRAIN)
    mine = task("t", "mine")
    transport.publish(mine)  # reads the refused one's reply first: not this thread's to raise
    transport.confirm_published()  # nor here
    go_on.set()
    thread.join(10)
    assert len(errors) == 1 and refused.headers["id"] in str(errors[0])
    assert "WRONGTYPE" in str(errors[0])
    assert queued_ids(raw) == [mine.headers["id"]]
    transport.close()


def test_a_refusal_whose_thread_ended_goes_to_the_next_caller(redis_url, raw):
    transport, _ = named_transport(redis_url)
    raw.set("celery", "not a list")
    refused = task("t", "refused")
    thread = threading.Thread(target=transport.publish, args=(refused,))
    thread.start()
    thread.join(10)
    with pytest.raises(OperationalError, match=refused.headers["id"]):
        transport.confirm_published()
    transport.close()


async def test_each_asyncio_task_confirms_its_own_messages(redis_url, raw):
    transport, _ = named_transport(redis_url)
    raw.set("celery", "not a list")

    async def send(message) -> None:
        transport.publish(message)  # a sync publish inside a coroutine, as a task may make
        await asyncio.sleep(0.05)
        transport.confirm_own_published()

    refused, fine = task("t", "refused"), task("t", "fine")
    first = asyncio.create_task(send(refused))
    await asyncio.sleep(0.01)  # its message is written, and refused
    raw.delete("celery")
    second = asyncio.create_task(send(fine))
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(outcomes[0], OperationalError)
    assert refused.headers["id"] in str(outcomes[0])
    assert outcomes[1] is None  # same thread, other task: not its refusal
    assert queued_ids(raw) == [fine.headers["id"]]
    transport.close()
