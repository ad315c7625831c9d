"""The rpc:// client's record of replies (no server): order, waiters, bounds, forget."""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from celery import states
from celery.backends import rpc_replies
from celery.backends.rpc_replies import Replies


def replies() -> Replies:
    return Replies(None, "q", {}, frozenset({"application/json"}),  # type: ignore[arg-type]
                   lambda task_id, meta: meta)


def meta(status: str, result: object = None) -> dict:
    return {"status": status, "result": result}


def test_a_final_state_wakes_every_waiter_and_is_never_replaced_by_a_late_interim_one():
    r = replies()
    assert r.latest("t") is None
    waiters = [r.waiter("t") for _ in range(3)]
    assert all(m is None and f is not None for m, f in waiters)
    r.arrived("t", meta(states.STARTED))
    assert not any(f.done() for _, f in waiters if f is not None)
    assert r.latest("t") == meta(states.STARTED)

    done = threading.Event()
    results: list[dict] = []

    def wait_in_a_thread() -> None:
        _, future = waiters[0]
        assert future is not None
        results.append(future.result(5))
        done.set()

    threading.Thread(target=wait_in_a_thread).start()
    r.arrived("t", meta(states.SUCCESS, 7))
    assert done.wait(5) and results == [meta(states.SUCCESS, 7)]
    assert all(f.result(0) == meta(states.SUCCESS, 7) for _, f in waiters if f is not None)

    r.arrived("t", meta(states.STARTED))  # redelivered or late: ignored
    assert r.latest("t") == meta(states.SUCCESS, 7)
    assert r.waiter("t") == (meta(states.SUCCESS, 7), None)
    r.arrived("t", meta(states.FAILURE, "again"))  # a success stays, as in every backend
    assert r.latest("t") == meta(states.SUCCESS, 7)
    r.arrived("f", meta(states.FAILURE, 1))
    r.arrived("f", meta(states.SUCCESS, 2))  # a failure run again that succeeded
    assert r.latest("f") == meta(states.SUCCESS, 2)

    r.forget("t")
    assert r.latest("t") is None


def test_a_waiter_given_back_is_not_resolved_and_the_oldest_states_go_past_the_bound(
        monkeypatch, caplog):
    r = replies()
    _, future = r.waiter("gone")
    assert isinstance(future, concurrent.futures.Future)
    r.unwait("gone", future)
    r.arrived("gone", meta(states.SUCCESS))
    assert not future.done()

    monkeypatch.setattr(rpc_replies, "MAX_KEPT", 3)
    with caplog.at_level(logging.WARNING, logger="celery.backends.rpc_replies"):
        for i in range(6):
            r.arrived(f"t{i}", meta(states.SUCCESS, i))
    assert [r.latest(f"t{i}") is not None for i in range(6)] == [False] * 3 + [True] * 3
    assert caplog.text.count("keeps the states of 3 tasks at most") == 1


def test_each_app_sends_its_own_reply_to_and_signatures_freeze_it():
    from celery import Celery

    one, two = Celery("one", broker="memory://rpc-one"), Celery("two", broker="memory://rpc-two")
    try:
        assert one.oid != two.oid
        message, _ = one._prepare("t.add", (1, 2), {}, None, {})
        assert message.properties["reply_to"] == one.oid
        message, _ = one._prepare("t.add", (1, 2), {}, None, {"reply_to": "theirs"})
        assert message.properties["reply_to"] == "theirs"
        sig = two.signature("t.add", (1, 2))
        sig.freeze()
        assert sig.options["reply_to"] == two.oid
    finally:
        one.close()
        two.close()
