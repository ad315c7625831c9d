"""``EventDispatcher`` on the in-process broker: batching within the flush delay into ``task.multi``,
order kept across groups, the backlog bound, client-mode sends, groups and enable/disable;
and the events our receiver reads back from what it sends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from celery import Celery
from celery.events import EventReceiver
from celery.events.dispatcher import FLUSH_DELAY, MULTI_MAX, EventDispatcher


@pytest.fixture
def app():
    app = Celery("evdisp", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)
    yield app
    app.close()


async def received(app: Celery, coro: Any) -> list[tuple[str | None, Any]]:
    """Run ``coro`` while subscribed to ``celeryev``; ``(routing key, body)`` of each
    message published meanwhile."""
    from celery.transport import envelope

    subscription = await app.transport.fanout_subscribe("celeryev", "#")
    try:
        await coro
        payloads = await subscription.get(0.5)
    finally:
        await subscription.close()
    out = []
    for payload in payloads:
        message = envelope.decode("", payload, "").message
        import json

        out.append((message.routing_key, json.loads(message.body)))
    return out


def test_task_events_within_the_flush_delay_go_as_one_task_multi_message(app):
    async def main() -> list[tuple[str | None, Any]]:
        dispatcher = EventDispatcher(app=app, hostname="w@x", buffer_group={"task"},
                                     loop=asyncio.get_running_loop())

        async def send() -> None:
            for i in range(3):
                dispatcher.send("task-received", uuid=str(i))
            dispatcher.send("worker-heartbeat", freq=2.0)
            dispatcher.send("task-succeeded", uuid="0", result="1")
            await asyncio.sleep(0)  # a loop turn: still buffered
            assert len(dispatcher._buffer) == 5
            await asyncio.sleep(FLUSH_DELAY * 2)  # the delay is over: one flush
            assert not dispatcher._buffer and dispatcher.sent == 5
            dispatcher.send("task-started", uuid="9")
            await dispatcher.aclose()

        return await received(app, send())

    messages = asyncio.run(main())
    assert [key for key, _ in messages] == \
        ["task.multi", "worker.heartbeat", "task.multi", "task.multi"]
    first, beat, second, third = (body for _, body in messages)
    assert [e["type"] for e in first] == ["task-received"] * 3
    assert beat["type"] == "worker-heartbeat" and beat["hostname"] == "w@x"
    assert [e["uuid"] for e in second] == ["0"] and [e["uuid"] for e in third] == ["9"]
    clocks = [e["clock"] for e in first] + [beat["clock"]] + [second[0]["clock"]]
    assert clocks == sorted(clocks) and len(set(clocks)) == 5
    assert set(first[0]) == {"type", "uuid", "hostname", "utcoffset", "pid", "clock",
                             "timestamp"}


def test_long_runs_are_split_and_a_backlog_beyond_the_bound_is_dropped(app):
    async def main() -> tuple[EventDispatcher, list[tuple[str | None, Any]]]:
        dispatcher = EventDispatcher(app=app, hostname="w@x", buffer_group={"task"},
                                     loop=asyncio.get_running_loop(), max_pending=MULTI_MAX)

        async def send() -> None:
            for i in range(MULTI_MAX + 1):
                dispatcher.send("task-succeeded", uuid=str(i))
            dispatcher.flush()  # two messages wait: MULTI_MAX + 1 events > the bound
            await dispatcher.aclose()

        return dispatcher, await received(app, send())

    dispatcher, messages = asyncio.run(main())
    # the oldest message (MULTI_MAX events) was dropped; the newest, of one event, went
    assert dispatcher.dropped == MULTI_MAX and dispatcher.sent == 1
    assert [len(body) for _, body in messages] == [1]
    assert messages[0][1][0]["uuid"] == str(MULTI_MAX)


def test_groups_and_enable_disable(app):
    async def main() -> list[tuple[str | None, Any]]:
        dispatcher = EventDispatcher(app=app, hostname="w@x", groups={"worker"},
                                     loop=asyncio.get_running_loop())
        seen: list[str] = []
        dispatcher.on_disabled.add(lambda: seen.append("off"))

        async def send() -> None:
            dispatcher.send("task-received", uuid="a")  # not in the groups
            dispatcher.send("worker-online")
            dispatcher.disable()
            dispatcher.send("worker-heartbeat")
            dispatcher.enable()
            dispatcher.groups.add("task")
            dispatcher.send("task-received", uuid="b")
            await dispatcher.aclose()
            assert seen == ["off"]

        return await received(app, send())

    messages = asyncio.run(main())
    assert [key for key, _ in messages] == ["worker.online", "task.received"]
    assert messages[1][1]["uuid"] == "b"


def test_client_dispatcher_sends_at_once_and_our_receiver_reads_it(app):
    receiver = EventReceiver(None, app=app)

    async def main() -> list[tuple[str | None, Any]]:
        async def send() -> None:
            # from another thread, as a client's code would: send() blocks until published
            await asyncio.to_thread(_send_two, app)

        return await received(app, send())

    messages = asyncio.run(main())
    assert [key for key, _ in messages] == ["task.sent", "worker.custom"]
    sent = messages[0][1]
    assert sent["hostname"].startswith("gen") and sent["uuid"] == "x"
    event_type, event = receiver.event_from_message(dict(sent))
    assert event_type == "task-sent" and "local_received" in event


def _send_two(app: Celery) -> None:
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send("task-sent", uuid="x", name="t")
        dispatcher.send("worker-custom", blind=True)
    assert dispatcher.sent == 2 and not dispatcher.enabled  # closed by the with


def test_a_serializer_other_than_json_is_refused_with_one_line(app):
    app.conf.event_serializer = "pickle"
    with pytest.raises(ValueError, match="event_serializer 'pickle' is not supported"):
        EventDispatcher(app=app)


def test_celery_arguments_not_implemented_here_are_warned_of_once(app, caplog):
    from celery.events import dispatcher as module

    module._WARNED.clear()
    with caplog.at_level("WARNING", logger="celery.events"):
        for _ in range(2):
            dispatcher = EventDispatcher(app=app, buffer_while_offline=True, buffer_limit=5)
            dispatcher.disable()  # nothing to publish: only the arguments are looked at
            dispatcher.send("task-sent", retry=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "EventDispatcher: buffer_while_offline=True is accepted but not implemented: events "
        "the broker does not take are dropped and counted, never kept for later",
        "EventDispatcher: buffer_limit/on_send_buffered is accepted but not implemented: on a "
        "loop, events are flushed 20 ms after the first, or at 500",
        "EventDispatcher: send(retry=..., retry_policy=...) is accepted but not implemented: "
        "an event is published once; a failure drops it (counted)",
    ]
