"""events.state.State, Event, the dumper's lines and the receiver's decoding, with event dicts
shaped as upstream Celery 5.x workers and clients send them (no broker)."""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid

import pytest

from celery import Celery, states
from celery.events import Event, EventReceiver, group_from
from celery.events.dumper import Dumper, humanize_type
from celery.events.state import State, Task, Worker, heartbeat_expires
from celery.utils.lru import LRUCache


class FakeTime:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


WORKER = "w1@host"
CLIENT = "gen42@host"


def worker_event(type_: str, at: float, clock: int, **fields):
    """A worker event as upstream's Heart sends it, as a receiver hands it over."""
    ev = {"hostname": WORKER, "utcoffset": 0.0, "pid": 4321, "clock": clock, "freq": 2.0,
          "active": 0, "processed": 0, "loadavg": [0.1, 0.2, 0.3], "sw_ident": "py-celery",
          "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": at, "type": type_,
          "local_received": at + 0.001}
    ev.update(fields)
    return ev


def task_event(type_: str, task_id: str, at: float, clock: int, hostname: str = WORKER,
               **fields):
    ev = {"hostname": hostname, "utcoffset": 0.0, "pid": 4321, "clock": clock,
          "uuid": task_id, **fields, "timestamp": at, "type": type_, "local_received": at}
    return ev


def received(task_id: str, at: float, clock: int, **extra):
    fields = {"name": "tasks.add", "args": "(1, 2)", "kwargs": "{}", "root_id": task_id,
              "parent_id": None, "retries": 0, "eta": None, "expires": None, **extra}
    return task_event("task-received", task_id, at, clock, **fields)


# -- Event ---------------------------------------------------------------------------------


def test_event_adds_type_and_timestamp_unless_given():
    ev = Event("worker-online", {"hostname": "a"}, freq=2.0, __now__=lambda: 12.5)
    assert ev == {"hostname": "a", "freq": 2.0, "timestamp": 12.5, "type": "worker-online"}
    assert Event("task-sent", timestamp=3.0)["timestamp"] == 3.0
    assert group_from("task-succeeded") == "task" and group_from("worker") == "worker"


# -- workers -------------------------------------------------------------------------------


def test_worker_online_heartbeats_and_alive_expiry_with_a_fake_clock():
    clock = FakeTime()
    joined: list[Worker] = []
    state = State(now=clock, on_node_join=joined.append)
    t0 = clock.now
    (worker, created), subject = state.event(worker_event("worker-online", t0, 1))
    assert created and subject == "online" and joined == [worker]
    assert worker.hostname == WORKER and worker.pid == 4321 and worker.freq == 2.0
    assert worker.sw_ident == "py-celery" and worker.loadavg == [0.1, 0.2, 0.3]
    assert worker.alive and worker.status_string == "ONLINE"
    for n in range(1, 6):
        state.event(worker_event("worker-heartbeat", t0 + 2 * n, 1 + n, active=n % 2,
                                 processed=n))
    assert len(worker.heartbeats) == Worker.heartbeat_max
    assert worker.heartbeats == sorted(worker.heartbeats)
    assert worker.processed == 5 and worker.clock == 6
    last = worker.heartbeats[-1]
    assert worker.heartbeat_expires == heartbeat_expires(last, 2.0) == last + 4.0
    clock.now = last + 3.9
    assert worker.alive and state.alive_workers() == [worker]
    clock.now = last + 4.1
    assert not worker.alive and worker.status_string == "OFFLINE"
    assert state.alive_workers() == []
    # a heartbeat brings it back; offline forgets the heartbeats but keeps the worker
    state.event(worker_event("worker-heartbeat", clock.now, 9))
    assert worker.alive
    (same, created), _ = state.event(worker_event("worker-offline", clock.now + 0.5, 10))
    assert same is worker and not created and not worker.alive and worker.heartbeats == []
    assert state.workers[WORKER] is worker


def test_worker_offline_with_on_node_leave_forgets_the_worker():
    left: list[Worker] = []
    state = State(on_node_leave=left.append)
    state.event(worker_event("worker-online", 100.0, 1))
    state.event(worker_event("worker-offline", 101.0, 2))
    assert [w.hostname for w in left] == [WORKER] and WORKER not in state.workers


def test_heartbeat_arriving_late_is_inserted_in_order():
    state = State(now=FakeTime(0))
    for at in (10.0, 14.0, 12.0):
        state.event(worker_event("worker-heartbeat", at, int(at)))
    assert state.workers[WORKER].heartbeats == [10.001, 12.001, 14.001]


# -- tasks ---------------------------------------------------------------------------------


def test_task_lifecycle_sent_received_started_succeeded():
    state = State()
    tid = str(uuid.uuid4())
    (task, created), subject = state.event(task_event(
        "task-sent", tid, 100.0, 1, hostname=CLIENT, name="tasks.add", args="(1, 2)",
        kwargs="{}", retries=0, eta=None, expires=None, queue="celery", exchange="",
        routing_key="celery", root_id=tid, parent_id=None))
    assert created and subject == "sent" and task.state == states.PENDING
    assert task.client == CLIENT and task.worker is None and task.sent == 100.0
    state.event(received(tid, 100.1, 3))
    state.event(task_event("task-started", tid, 100.2, 4))
    (same, created), _ = state.event(task_event("task-succeeded", tid, 100.3, 5, result="3",
                                                runtime=0.0063))
    assert same is task and not created
    assert task.state == states.SUCCESS and task.ready and task.result == "3"
    assert (task.received, task.started, task.succeeded) == (100.1, 100.2, 100.3)
    assert task.runtime == 0.0063 and task.worker is state.workers[WORKER]
    assert task.name == "tasks.add" and task.args == "(1, 2)" and task.root_id == tid
    assert state.task_types() == ["tasks.add"] and state.task_count == 1
    assert state.event_count == 4
    info = task.as_dict()
    assert info["uuid"] == tid and info["state"] == "SUCCESS" and info["children"] == []
    assert set(Task._fields) == set(info)
    assert task.info()["result"] == "3"
    # a task event is a sign of life of its worker
    assert state.workers[WORKER].heartbeats


def test_out_of_order_events_do_not_move_the_state_back():
    state = State()
    tid = "t-1"
    state.event(task_event("task-succeeded", tid, 10.3, 7, result="9", runtime=0.1))
    state.event(task_event("task-started", tid, 10.2, 6))
    (task, _), _ = state.event(received(tid, 10.1, 5, name="tasks.mul", args="(3, 3)",
                                        hostname="other@host"))
    assert task.state == states.SUCCESS and task.timestamp == 10.3 and task.clock == 7
    # RECEIVED is the source of name/args/...: those still arrive
    assert task.name == "tasks.mul" and task.args == "(3, 3)"
    assert task.received == 10.1 and task.started == 10.2
    assert [u for u, _ in state.tasks_by_time()] == [tid]


def test_retry_always_applies_and_failure_after_started():
    state = State()
    state.event(received("t", 1.0, 1))
    state.event(task_event("task-started", "t", 2.0, 2))
    (task, _), _ = state.event(task_event("task-retried", "t", 3.0, 3,
                                          exception="ValueError('x')", traceback="tb"))
    assert task.state == states.RETRY and task.exception == "ValueError('x')"
    state.event(received("t", 4.0, 4, retries=1))
    assert task.state == states.RECEIVED and task.retries == 1
    state.event(task_event("task-failed", "t", 5.0, 5, exception="KeyError('k')"))
    state.event(task_event("task-started", "t", 4.5, 4))  # late: stays FAILURE
    assert task.state == states.FAILURE and task.failed == 5.0 and task.ready


def test_custom_task_event_gives_an_uppercase_state():
    state = State()
    state.event(received("c", 1.0, 1))
    (task, _), subject = state.event(task_event("task-progress", "c", 2.0, 2, done=3))
    assert subject == "progress" and task.state == "PROGRESS" and task.done == 3


def test_task_multi_expanded_into_events_in_order():
    """A worker's ``task.multi`` message: one JSON list of task events."""
    tid = "m-1"
    batch = [received(tid, 1.0, 2), task_event("task-started", tid, 1.1, 3),
             task_event("task-succeeded", tid, 1.2, 4, result="5", runtime=0.01)]
    payload = envelope_of(batch, "task.multi")
    app = Celery("multi", broker="memory://events-unit", set_as_current=False)
    state = State()
    seen: list[str] = []
    receiver = EventReceiver(None, handlers={"*": lambda ev: (seen.append(ev["type"]),
                                                              state.event(ev))}, app=app)
    assert len(receiver.receive(payload)) == 3
    assert seen == ["task-received", "task-started", "task-succeeded"]
    assert state.tasks[tid].state == states.SUCCESS and state.tasks[tid].result == "5"
    app.close()


def test_tasks_by_time_type_and_worker_and_itertasks():
    state = State()
    for n in range(5):
        name = "tasks.add" if n % 2 else "tasks.mul"
        state.event(received(f"t{n}", 10.0 + n, n + 1, name=name,
                             hostname=f"w{n % 2}@host"))
    assert [u for u, _ in state.tasks_by_time()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [u for u, _ in state.tasks_by_time(limit=2, reverse=False)] == ["t0", "t1"]
    assert [u for u, _ in state.tasks_by_timestamp(limit=1)] == ["t4"]
    assert [u for u, _ in state.tasks_by_type("tasks.add")] == ["t3", "t1"]
    assert {t.uuid for t in state.tasks_by_type["tasks.mul"]} == {"t0", "t2", "t4"}
    assert [u for u, _ in state.tasks_by_worker("w1@host", limit=1)] == ["t3"]
    assert len(list(state.itertasks(limit=3))) == 3
    assert state.task_types() == ["tasks.add", "tasks.mul"]


def test_children_are_linked_in_either_order():
    state = State()
    state.event(received("child", 2.0, 2, parent_id="parent", root_id="parent"))
    (parent, _), _ = state.event(received("parent", 1.0, 1))
    child = state.tasks["child"]
    assert set(parent.children) == {child} and child.parent is parent and child.root is parent
    state.event(received("child2", 3.0, 3, parent_id="parent"))
    assert {t.uuid for t in parent.children} == {"child", "child2"}
    assert sorted(parent.as_dict()["children"]) == ["child", "child2"]


def test_bounds_clear_and_freeze_while():
    state = State(max_tasks_in_memory=3, max_workers_in_memory=2)
    for n in range(5):
        state.event(received(f"t{n}", float(n), n + 1, hostname=f"w{n}@h"))
    assert list(state.tasks) == ["t2", "t3", "t4"] and len(state.workers) == 2
    state.event(task_event("task-succeeded", "t4", 9.0, 9))
    assert state.freeze_while(lambda: len(state.tasks), clear_after=True) == 3
    assert list(state.tasks) == ["t2", "t3"] and len(state.workers) == 0
    assert state.event_count == 0
    state.clear(ready=False)
    assert len(state.tasks) == 0 and list(state.tasks_by_time()) == []


def test_get_or_create_and_callback():
    calls = []
    state = State(callback=lambda st, ev: calls.append(ev["type"]))
    worker, created = state.get_or_create_worker("x@h", pid=7)
    assert created and worker.pid == 7
    again, created = state.get_or_create_worker("x@h", freq=5.0)
    assert again is worker and not created and worker.freq == 5.0
    task, created = state.get_or_create_task("u")
    assert created and state.get_or_create_task("u") == (task, False)
    assert state.event({"type": "foo-bar", "hostname": "x"}) == ((None, False), "bar")
    assert state.event({"type": "task-received"}) == ((None, False), "received")
    assert calls == ["foo-bar", "task-received"]


def test_lru_cache_drops_the_least_recently_used():
    cache: LRUCache[str, int] = LRUCache(limit=2)
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1
    cache["c"] = 3
    assert list(cache) == ["a", "c"] and "b" not in cache and cache.limit == 2
    assert list(cache.data) == ["a", "c"] and cache.items() == [("a", 1), ("c", 3)]


# -- receiver stamping and decoding --------------------------------------------------------


def envelope_of(body, routing_key: str, content_type: str = "application/json") -> str:
    """A kombu envelope as upstream's Redis transport publishes an event."""
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return json.dumps({
        "body": base64.b64encode(raw).decode(), "content-encoding": "utf-8",
        "content-type": content_type, "headers": {"hostname": WORKER},
        "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev",
                                                             "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}})


@pytest.fixture
def app():
    app = Celery("events-unit", broker="memory://events-unit", set_as_current=False)
    yield app
    app.close()


def test_event_from_message_moves_the_clock_and_stamps(app):
    receiver = EventReceiver(None, app=app)
    _, ev = receiver.event_from_message({"type": "worker-heartbeat", "clock": 41,
                                         "timestamp": 5.0}, now=lambda: 7.0)
    assert app.clock.value == 42 and ev["local_received"] == 7.0 and ev["clock"] == 41
    # a client's clock is never in step: task-sent gets one just below ours
    _, sent = receiver.event_from_message({"type": "task-sent", "clock": 1000})
    assert sent["clock"] == 41 and app.clock.value == 43
    _, bare = receiver.event_from_message({"type": "worker-online", "clock": None})
    assert bare["clock"] == 44 == app.clock.value


def test_event_from_message_localizes_the_timestamp(app, monkeypatch):
    import celery.events.event as event_module

    monkeypatch.setattr(event_module.time, "timezone", 0)
    monkeypatch.setattr(event_module.time, "daylight", 0)
    receiver = EventReceiver(None, app=app)
    # sent from UTC+2 (utcoffset -2: hours west): moved to our UTC
    _, ev = receiver.event_from_message({"type": "worker-online", "clock": 1,
                                         "utcoffset": -2, "timestamp": 1000.0})
    assert ev["timestamp"] == 1000.0 + 2 * 3600
    _, raw = receiver.event_from_message({"type": "worker-online", "clock": 1,
                                          "utcoffset": -2, "timestamp": 1000.0},
                                         localize=False)
    assert raw["timestamp"] == 1000.0


def test_handlers_by_type_then_star(app):
    got: dict[str, list[str]] = {"hb": [], "any": []}
    receiver = EventReceiver(None, app=app, handlers={
        "worker-heartbeat": lambda ev: got["hb"].append(ev["type"]),
        "*": lambda ev: got["any"].append(ev["type"])})
    receiver.receive(envelope_of(worker_event("worker-heartbeat", 1.0, 1), "worker.heartbeat"))
    receiver.receive(envelope_of(worker_event("worker-online", 1.0, 2), "worker.online"))
    assert got == {"hb": ["worker-heartbeat"], "any": ["worker-online"]}


def test_routing_key_filter(app):
    receiver = EventReceiver(None, app=app, routing_key="worker.#")
    assert receiver.receive(envelope_of(worker_event("worker-online", 1.0, 1),
                                        "worker.online"))
    assert receiver.receive(envelope_of([received("x", 1.0, 1)], "task.multi")) == []


def test_malformed_payloads_are_dropped_and_logged_once_per_kind(app, caplog):
    receiver = EventReceiver(None, app=app, handlers={"*": pytest.fail})
    bad = ["not json", json.dumps({"body": 5}), envelope_of(b"{nope", "worker.x"),
           envelope_of(b"\x80\x04", "worker.x", content_type="application/x-python-serialize"),
           envelope_of([1, {"no": "type"}, {"type": 7}], "task.multi"), "not json either"]
    with caplog.at_level(logging.DEBUG, logger="celery.events.receiver"):
        for payload in bad:
            assert receiver.receive(payload) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(r.getMessage().split(" (")[1].split(")")[0] for r in warnings) == \
        ["body", "envelope", "event"]
    assert len(caplog.records) > len(warnings)


def test_app_events_receiver_and_state(app):
    receiver = app.events.Receiver(object(), handlers={"*": print})
    assert receiver.app is app and receiver.exchange == "celeryev"
    assert receiver.queue_name.startswith("celeryev.")
    assert isinstance(app.events.State(max_tasks_in_memory=3), State)


# -- dumper --------------------------------------------------------------------------------


def test_dumper_lines_match_upstreams():
    out = io.StringIO()
    dumper = Dumper(out=out)
    hb = worker_event("worker-heartbeat", 1796510575.420194, 9)
    hb["local_received"] = 1796510575.4215355
    dumper.on_event(hb)
    tid = "81ce8c0c-814c-4193-b582-8b5f9d9eb7ba"
    dumper.on_event({"hostname": WORKER, "utcoffset": 0.0, "pid": 8104, "clock": 15,
                     "uuid": tid, "name": "tasks.add", "args": "(1, 2)", "kwargs": "{}",
                     "root_id": tid, "parent_id": None, "retries": 0, "eta": None,
                     "expires": None, "timestamp": 1796510578.145329,
                     "type": "task-received", "local_received": 1796510578.1463606})
    dumper.on_event({"hostname": WORKER, "utcoffset": 0.0, "pid": 8104, "clock": 17,
                     "uuid": tid, "result": "3", "runtime": 0.0063,
                     "timestamp": 1796510578.153241, "type": "task-succeeded",
                     "local_received": 1796510578.1542397})
    dumper.on_event({"hostname": WORKER, "timestamp": 1796510579.0, "type": "worker-online"})
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "w1@host [2026-12-05 22:42:55.420194+00:00] heartbeat: active=0, clock=9, freq=2.0, "
        "loadavg=[0.1, 0.2, 0.3], local_received=1796510575.4215355, pid=4321, processed=0, "
        "sw_ident=py-celery, sw_sys=Linux, sw_ver=5.7.0, utcoffset=0.0")
    assert lines[1] == (
        f"w1@host [2026-12-05 22:42:58.145329+00:00] task received: tasks.add({tid}) "
        "args=(1, 2) kwargs={} clock=15, eta=None, expires=None, "
        "local_received=1796510578.1463606, parent_id=None, pid=8104, retries=0, "
        f"root_id={tid}, utcoffset=0.0")
    assert lines[2] == (
        f"w1@host [2026-12-05 22:42:58.153241+00:00] task succeeded: tasks.add({tid}) "
        "args=(1, 2) kwargs={} clock=17, local_received=1796510578.1542397, pid=8104, "
        "result=3, runtime=0.0063, utcoffset=0.0")
    assert lines[3] == "w1@host [2026-12-05 22:42:59+00:00] started "
    assert humanize_type("worker-offline") == "shutdown"
    assert humanize_type("task-rejected") == "task rejected"


def test_app_connection_stands_in_for_flower(app):
    """Flower: ``with app.connection() as conn: EventReceiver(conn, handlers=..., app=app)``."""
    secret = Celery("c", broker="redis://:hunter2@localhost:6379/3", set_as_current=False)
    with secret.connection() as conn:
        assert conn.as_uri() == "redis://:**@localhost:6379/3"
        assert conn.as_uri(include_password=True).endswith(":hunter2@localhost:6379/3")
        receiver = EventReceiver(conn, handlers={"*": print}, app=secret)
    assert receiver.channel is conn and receiver._transport() is secret.transport
    assert app.connection_for_read().as_uri() == "memory://events-unit"
    secret.close()
