"""Sync result reads on the Redis backend: read-ahead of sent tasks and waits on the caller's
thread, against a real Redis."""
# ruff: noqa: F811  (test arguments named after the imported fixtures)

from __future__ import annotations

import gc
import threading
import time
import uuid

import pytest
import valkey.exceptions

from celery import states
from celery.exceptions import TimeoutError

from ..conftest import kill_clients_named

# The Redis backend tests' fixtures, shared (pytest finds them by name in this module).
from .test_redis_backend import make_backend, raw  # noqa: F401

REDIS_DB = 3


class Handle:
    """Stands in for the AsyncResult that delay() returns (the backend holds it weakly)."""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())


def sent(backend, count):
    handles = [Handle() for _ in range(count)]
    for handle in handles:
        backend.on_sent(handle)
    return handles


def test_get_reads_the_results_sent_after_it_in_the_same_round_trip(make_backend, raw):
    backend = make_backend()
    handles = sent(backend, 10)
    for n, handle in enumerate(handles):
        backend.store_result(handle.id, n, states.SUCCESS)
    assert backend.wait_for(handles[0].id, timeout=5)["result"] == 0
    # The others came with it: overwrite them in Redis, and get() still answers from what
    # was read ahead (no second read).
    for handle in handles[1:]:
        raw.set(backend.get_key_for_task(handle.id), b'{"status": "SUCCESS", "result": -1}')
    assert [backend.wait_for(h.id, timeout=5)["result"] for h in handles[1:]] == list(range(1, 10))
    # Taken results are gone from memory: the next read is Redis again.
    assert backend.wait_for(handles[5].id, timeout=5)["result"] == -1


def test_results_not_ready_yet_are_read_again_later(make_backend):
    backend = make_backend()
    first, second = sent(backend, 2)
    backend.store_result(first.id, "a", states.SUCCESS)
    assert backend.wait_for(first.id, timeout=5)["result"] == "a"  # second: still PENDING
    backend.store_result(second.id, "b", states.SUCCESS)
    assert backend.wait_for(second.id, timeout=5)["result"] == "b"


def test_read_ahead_keeps_nothing_for_results_nobody_holds(make_backend):
    backend = make_backend()
    keep, drop = sent(backend, 2)
    dropped = drop.id
    backend.store_result(keep.id, 1, states.SUCCESS)
    backend.store_result(dropped, 2, states.SUCCESS)
    del drop
    gc.collect()
    backend.wait_for(keep.id, timeout=5)
    assert backend.sent.peek(dropped) is None
    assert backend.sent.batch(keep.id) == [keep.id]  # and nothing left to read ahead


def test_sync_wait_runs_on_the_calling_thread(make_backend):
    backend = make_backend()
    (handle,) = sent(backend, 1)
    storer = make_backend()  # another client stores it, later

    def store_later():
        time.sleep(0.2)
        storer.store_result(handle.id, "late", states.SUCCESS)

    thread = threading.Thread(target=store_later)
    thread.start()
    assert backend.wait_for(handle.id, timeout=5)["result"] == "late"
    thread.join()
    assert backend._portal is None  # the waiting thread never needed a portal


def test_sync_wait_times_out_and_unsubscribes(make_backend, raw):
    backend = make_backend()
    task_id = str(uuid.uuid4())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.wait_for(task_id, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    channel = backend.get_key_for_task(task_id)
    assert raw.pubsub_numsub(channel)[0][1] == 0


def test_sync_wait_survives_its_connection_being_killed(make_backend, raw):
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(result_backend_transport_options={"client_name": name})
    task_id = str(uuid.uuid4())
    channel = backend.get_key_for_task(task_id)
    got = {}
    thread = threading.Thread(target=lambda: got.update(backend.wait_for(task_id, timeout=10)))
    thread.start()
    deadline = time.monotonic() + 5
    while raw.pubsub_numsub(channel)[0][1] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kill_clients_named(raw, name) >= 1
    # Stored without a PUBLISH: only a re-read after the connection loss can find it.
    raw.set(channel, backend.encode(backend.prepare_meta(task_id, states.SUCCESS, "found")))
    thread.join(10)
    assert got.get("result") == "found"


def store_later(backend, task_id, value, delay=0.1) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: (time.sleep(delay), backend.store_result(task_id, value, states.SUCCESS)))
    thread.start()
    return thread


@pytest.mark.parametrize("resp3", [True, False], ids=["resp3", "resp2"])
def test_a_wait_leaves_its_channel_subscribed_until_the_next_wait_starts(make_backend, raw,
                                                                          resp3):
    backend = make_backend()
    backend._sync_side()._resp3 = resp3
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    channel = backend.get_key_for_task(first)
    store_later(backend, first, "a").join(0)
    assert backend.wait_for(first, timeout=5)["result"] == "a"  # came by PUBLISH
    assert raw.pubsub_numsub(channel)[0][1] == 1  # still subscribed: no UNSUBSCRIBE written
    # A message on that channel while the connection is idle waits in its socket; the next
    # wait, on the same connection, skips it and unsubscribes the channel.
    raw.publish(channel, backend.encode(backend.prepare_meta(first, states.SUCCESS, "stale")))
    thread = store_later(backend, second, "b")
    assert backend.wait_for(second, timeout=5)["result"] == "b"
    thread.join(5)
    assert raw.pubsub_numsub(channel)[0][1] == 0
    assert raw.pubsub_numsub(backend.get_key_for_task(second))[0][1] == 1


def test_an_idle_connection_the_server_closed_is_replaced(make_backend, raw, caplog):
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(result_backend_transport_options={"client_name": name})
    first = str(uuid.uuid4())
    store_later(backend, first, 1).join(0)
    assert backend.wait_for(first, timeout=5)["result"] == 1  # its connection is kept idle
    assert kill_clients_named(raw, name) >= 1
    thread = store_later(backend, second := str(uuid.uuid4()), 2)
    assert backend.wait_for(second, timeout=5)["result"] == 2
    thread.join(5)
    assert "portal loop" not in caplog.text  # replaced at once, no fallback


def test_idle_pubsub_connections_are_reused_but_not_across_a_fork(make_backend):
    backend = make_backend()
    with pytest.raises(TimeoutError):
        backend.wait_for(str(uuid.uuid4()), timeout=0.05)  # a timed-out wait closes its own
    backend.store_result(done := str(uuid.uuid4()), 1, states.SUCCESS)
    side = backend._sync_side()
    conn = side._connect()
    side._checkin(conn, b"nothing", clean=True)
    assert side._checkout() == (conn, b"nothing")  # reused, with its channel
    side._checkin(conn, b"nothing", clean=True)
    side._pid = -1  # as seen from a forked child
    assert side._checkout()[0] is not conn
    assert backend.wait_for(done, timeout=5)["result"] == 1


def test_resp2_a_ready_result_costs_one_read_and_a_pending_one_reads_again_after_subscribing(
    make_backend, monkeypatch
):
    """RESP2: the first read overlaps the subscription; a result stored right after it,
    perhaps before the subscription took effect, is still found by a read once the
    subscription is confirmed."""
    backend = make_backend()
    side = backend._sync_side()
    side._resp3 = False
    calls, confirms = [], []
    real_read, real_get = side.read, side.client.get
    monkeypatch.setattr(backend, "confirm_published", lambda: confirms.append(1))
    monkeypatch.setattr(side.client, "get", lambda key: calls.append("GET") or real_get(key))
    ready = str(uuid.uuid4())
    backend.store_result(ready, 1, states.SUCCESS)
    assert backend.wait_for(ready, timeout=5)["result"] == 1
    assert calls == ["GET"] and confirms == []  # ready: one read, no confirm
    calls.clear()
    late = str(uuid.uuid4())

    def read_then_store(ids):
        raws = real_read(ids)
        backend.store_result(late, 2, states.SUCCESS)  # right after our read: a race
        return raws

    monkeypatch.setattr(side, "read", read_then_store)
    assert backend.wait_for(late, timeout=5)["result"] == 2
    assert calls == ["GET", "GET"] and confirms == [1]  # pending: confirm, read again
    assert side._resp3 is False


def test_resp3_reads_the_key_on_the_waiting_connection_only(make_backend, monkeypatch):
    """RESP3: the GET written with the SUBSCRIBE answers for the task itself; the pool's
    connection is read only to read other results ahead."""
    backend = make_backend()
    side = backend._sync_side()
    reads, confirms = [], []
    real_read = side.read
    monkeypatch.setattr(backend, "confirm_published", lambda: confirms.append(1))
    monkeypatch.setattr(side, "read", lambda ids: reads.append(len(ids)) or real_read(ids))
    ready = str(uuid.uuid4())
    backend.store_result(ready, 1, states.SUCCESS)
    assert backend.wait_for(ready, timeout=5)["result"] == 1
    assert reads == [] and confirms == []  # ready: one round trip, no confirm
    thread = store_later(backend, late := str(uuid.uuid4()), 2)
    assert backend.wait_for(late, timeout=5)["result"] == 2
    thread.join(5)
    assert reads == [] and confirms == [1]  # pending: confirmed before it blocked
    first, second = sent(backend, 2)  # now there is something to read ahead
    backend.store_result(second.id, "b", states.SUCCESS)
    thread = store_later(backend, first.id, "a")
    assert backend.wait_for(first.id, timeout=5)["result"] == "a"
    thread.join(5)
    assert reads == [2]  # one MGET, with the result sent after it
    raw_b = backend.get_key_for_task(second.id)
    side.client.set(raw_b, b'{"status": "SUCCESS", "result": -1}')
    assert backend.wait_for(second.id, timeout=5)["result"] == "b"  # read ahead, kept
    assert side._resp3 is True


def test_a_server_without_resp3_is_waited_on_the_resp2_way(make_backend, monkeypatch):
    backend = make_backend()
    side = backend._sync_side()
    base = side.client.connection_pool.connection_class

    class OldServer(base):  # answers HELLO as Redis 5 does
        def on_connect(self):
            if self.protocol in (3, "3"):
                raise valkey.exceptions.ResponseError("unknown command 'HELLO'")
            super().on_connect()

    monkeypatch.setattr(side.client.connection_pool, "connection_class", OldServer)
    thread = store_later(backend, task_id := str(uuid.uuid4()), "old")
    assert backend.wait_for(task_id, timeout=5)["result"] == "old"
    thread.join(5)
    assert side._resp3 is False
