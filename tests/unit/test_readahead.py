"""SentResults: which results a get() reads ahead, and how far (no network)."""

from __future__ import annotations

import gc
import json
import uuid

from celery.backends.readahead import MAX_AHEAD, SentResults


class Handle:
    def __init__(self) -> None:
        self.id = str(uuid.uuid4())


def decode(task_id, raw):
    return {"status": "PENDING", "result": None} if raw is None else json.loads(raw)


def ready(value):
    return json.dumps({"status": "SUCCESS", "result": value}).encode()


def sent_handles(count: int, **options) -> tuple[SentResults, list[Handle]]:
    """A SentResults that was told of ``count`` tasks sent, and their handles, oldest first."""
    sent = SentResults(**options)
    handles = [Handle() for _ in range(count)]
    for h in handles:
        sent.sent(h)
    return sent, handles


def test_batch_is_the_target_then_the_oldest_unread():
    sent, handles = sent_handles(40)
    ids = sent.batch(handles[3].id)
    assert ids[0] == handles[3].id
    assert ids[1:] == [h.id for h in handles if h is not handles[3]][: len(ids) - 1]
    assert len(ids) == 17  # the first read-ahead is 16 others


def test_read_ahead_grows_while_everything_is_ready_and_shrinks_when_not():
    sent, handles = sent_handles(2000)
    ids = sent.batch(handles[0].id)
    sent.absorb(ids, [ready(1)] * len(ids), decode)
    grown = sent.batch(handles[len(ids)].id)
    assert len(grown) == 33  # doubled: all 16 were ready
    raws = [ready(1)] + [ready(1)] * 3 + [None] * (len(grown) - 4)
    sent.absorb(grown, raws, decode)
    assert len(sent.batch(handles[-1].id)) == 1 + 2 * 3  # twice what was ready
    for _ in range(20):
        ids = sent.batch(handles[0].id)
        sent.absorb(ids, [ready(1)] * len(ids), decode)
    assert len(sent.batch(handles[0].id)) <= 1 + MAX_AHEAD


def test_absorb_keeps_ready_results_for_take_and_leaves_the_rest_unread():
    sent = SentResults()
    a, b, c = Handle(), Handle(), Handle()
    for h in (a, b, c):
        sent.sent(h)
    ids = sent.batch(a.id)
    assert ids == [a.id, b.id, c.id]
    first = sent.absorb(ids, [ready("a"), ready("b"), None], decode)
    assert first["result"] == "a"
    assert sent.peek(b.id)["result"] == "b"
    assert sent.take(b.id)["result"] == "b" and sent.take(b.id) is None
    assert sent.batch(a.id) == [a.id, c.id]  # c is still unread; b is taken


def test_undecodable_read_ahead_is_left_for_its_own_get():
    sent = SentResults()
    a, b = Handle(), Handle()
    sent.sent(a)
    sent.sent(b)
    sent.absorb(sent.batch(a.id), [ready(1), b"not json"], decode)
    assert sent.peek(b.id) is None
    assert b.id in sent.batch(a.id)


def test_dead_handles_are_dropped_and_the_maps_are_bounded():
    sent, keep = sent_handles(40, limit=50)
    for _ in range(2000):  # sent and dropped at once: fire and forget
        sent.sent(Handle())
    gc.collect()
    ids = sent.batch(keep[0].id)
    assert set(ids) <= {h.id for h in keep}
    assert len(sent._unread) <= 50
