"""Our worker sends Celery's events (worker/events.py, events/dispatcher.py), on Redis:
task events with ``-E`` grouped as ``task.multi``, worker-online/heartbeat/offline, the
``enable_events``/``disable_events``/``heartbeat`` commands, ``task-sent`` from clients;
read by our receiver and State, and by upstream Celery's (``celery events --dump`` and
``State`` in an upstream venv)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, states
from tests.conftest import flushed_redis_url, stop_process
from tests.integration.test_events_receive import Capture, until

from .outcome_tasks import register_outcome_tasks
from .worker_harness import CommandProcess, running_worker

REDIS_DB = 5
HOST = "ours-ev@test"
SOFTWARE = {"sw_ident", "sw_ver", "sw_sys"}
WORKER_FIELDS = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type", "freq",
                 "active", "processed", "loadavg", *SOFTWARE}

pytestmark = pytest.mark.redis


@pytest.fixture
def url() -> str:
    return flushed_redis_url(REDIS_DB)


def make_app(url: str, **conf: Any) -> Celery:
    app = Celery("evsend", broker=url, backend=url, set_as_current=False, **conf)

    register_outcome_tasks(app, "evsend")

    @app.task(name="evsend.quiet", send_events=False)
    def quiet() -> int:
        return 1

    return app


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = make_app(url)
    yield app
    app.close()


def of_type(capture: Capture, type_: str) -> list[dict[str, Any]]:
    with capture.lock:
        return [e for e in capture.events if e["type"] == type_]


def test_task_and_worker_events_with_task_events_on(app):
    capture = Capture(app, wakeup=False)  # subscribed when made
    try:
        with running_worker(app, hostname=HOST, loop_workers=1, sync_workers=2,
                            task_events=True):
            ok = app.send_task("evsend.add", (2, 3))
            aok = app.send_task("evsend.aadd", (4, 5))
            bad = app.send_task("evsend.boom")
            again = app.send_task("evsend.again")
            quiet = app.send_task("evsend.quiet")
            assert ok.get(timeout=10) == 5 and aok.get(timeout=10) == 9
            with pytest.raises(ValueError):
                bad.get(timeout=10)
            assert again.get(timeout=10) == "done" and quiet.get(timeout=10) == 1
            assert until(lambda: len(of_type(capture, "task-succeeded")) >= 3, seconds=10)
            assert until(lambda: of_type(capture, "worker-heartbeat"), seconds=10)
        assert until(lambda: of_type(capture, "worker-offline"), seconds=10)
    finally:
        capture.stop()
    state = capture.state
    node = state.workers[HOST]
    assert not node.alive  # it said worker-offline
    online = of_type(capture, "worker-online")[0]
    assert set(online) >= WORKER_FIELDS
    assert online["freq"] == 2.0 and online["sw_ident"] == "py-celery"
    assert len(online["loadavg"]) == 3 and online["processed"] == 0
    heartbeat = of_type(capture, "worker-heartbeat")[-1]
    assert set(heartbeat) >= WORKER_FIELDS and heartbeat["hostname"] == HOST
    assert of_type(capture, "worker-offline")[0]["processed"] == 6  # again ran twice

    task = state.tasks[ok.id]
    assert task.state == states.SUCCESS and task.name == "evsend.add" and task.args == "(2, 3)"
    assert task.result == "5" and task.runtime is not None and task.worker is node
    assert task.received and task.started and task.succeeded
    assert state.tasks[aok.id].result == "9"
    failed = state.tasks[bad.id]
    assert failed.state == states.FAILURE and failed.exception == "ValueError('boom')"
    assert "raise ValueError" in failed.traceback
    retried = [e for e in of_type(capture, "task-retried") if e["uuid"] == again.id]
    assert len(retried) == 1 and retried[0]["exception"] == "KeyError('once more')"
    assert state.tasks[again.id].state == states.SUCCESS, [(e["type"], e["clock"]) for e in capture.events if e.get("uuid") == again.id]
    assert quiet.id not in state.tasks  # send_events=False: the worker sends none of it
    # the order of one task's events: received, started, succeeded, by clock
    clocks = [e["clock"] for e in capture.events if e.get("uuid") == ok.id]
    assert [e["type"] for e in capture.events if e.get("uuid") == ok.id] == \
        ["task-received", "task-started", "task-succeeded"] and clocks == sorted(clocks)
    assert {e["hostname"] for e in capture.events} == {HOST}


def test_task_events_go_as_task_multi_lists_on_kombus_channel(app, url):
    """On the wire, as upstream's worker: ``PUBLISH /<db>.celeryev/task.multi`` with a JSON
    list body; worker events alone on ``/<db>.celeryev/worker.<kind>``."""
    import valkey

    client = valkey.Valkey.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"/{REDIS_DB}.celeryev/*")
    try:
        with running_worker(app, hostname=HOST, loop_workers=1, sync_workers=1,
                            task_events=True):
            results = [app.send_task("evsend.aadd", (i, i)) for i in range(50)]
            assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
        messages = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                if any(m[0].endswith("worker.offline") for m in messages):
                    break
                continue
            messages.append((message["channel"].decode(), json.loads(message["data"])))
    finally:
        pubsub.close()
        client.close()
    channels = {channel for channel, _ in messages}
    assert channels <= {f"/{REDIS_DB}.celeryev/{key}" for key in
                        ("task.multi", "worker.online", "worker.heartbeat", "worker.offline")}
    multi = [envelope for channel, envelope in messages if channel.endswith("task.multi")]
    assert multi
    bodies = [json.loads(base64.b64decode(e["body"])) for e in multi]
    assert all(isinstance(body, list) for body in bodies)
    events = [event for body in bodies for event in body]
    assert len(events) == 150  # received, started, succeeded for each of the 50
    assert len(multi) < 150  # batched per loop turn, not one message per event
    envelope = multi[0]
    assert envelope["headers"] == {"hostname": HOST}
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["delivery_mode"] == 1
    assert envelope["properties"]["delivery_info"] == {"exchange": "celeryev",
                                                       "routing_key": "task.multi"}


def test_event_commands_switch_task_events(app):
    capture = Capture(app, wakeup=False)  # subscribed when made
    try:
        with running_worker(app, hostname=HOST, loop_workers=0, sync_workers=1) as worker:
            assert app.send_task("evsend.add", (1, 1)).get(timeout=10) == 2
            # Its outcome reaches the consumer after its result is readable: events are
            # switched on only once it has (test_metrics says more).
            consumer = worker._consumer
            assert consumer is not None
            assert until(lambda: consumer.processed == 1, seconds=10)
            assert until(lambda: of_type(capture, "worker-heartbeat"), seconds=10)
            assert not of_type(capture, "task-received")  # no -E: worker events only
            reply = app.control.broadcast("enable_events", reply=True, timeout=10.0, limit=1)
            assert reply == [{HOST: {"ok": "task events enabled"}}]
            reply = app.control.broadcast("enable_events", reply=True, timeout=10.0, limit=1)
            assert reply == [{HOST: {"ok": "task events already enabled"}}]
            on = app.send_task("evsend.add", (2, 2))
            assert on.get(timeout=10) == 4
            assert until(lambda: of_type(capture, "task-succeeded"), seconds=10)
            reply = app.control.broadcast("disable_events", reply=True, timeout=10.0, limit=1)
            assert reply == [{HOST: {"ok": "task events disabled"}}]
            assert app.control.broadcast("disable_events", reply=True, timeout=10.0, limit=1) == \
                [{HOST: {"ok": "task events already disabled"}}]
            off = app.send_task("evsend.add", (3, 3))
            assert off.get(timeout=10) == 6
            beats = len(of_type(capture, "worker-heartbeat"))
            assert app.control.broadcast("heartbeat", reply=True, timeout=10.0, limit=1) == \
                [{HOST: None}]
            assert until(lambda: len(of_type(capture, "worker-heartbeat")) > beats, seconds=10)
            time.sleep(0.5)
    finally:
        capture.stop()
    uuids = {e.get("uuid") for e in capture.events}
    assert on.id in uuids and off.id not in uuids


def test_without_heartbeat_sends_no_worker_events(app):
    capture = Capture(app, wakeup=False)  # subscribed when made
    try:
        with running_worker(app, hostname=HOST, loop_workers=0, sync_workers=1,
                            task_events=True, heartbeat=False, heartbeat_interval=0.2):
            assert app.send_task("evsend.add", (1, 1)).get(timeout=10) == 2
            assert until(lambda: of_type(capture, "task-succeeded"), seconds=10)
            time.sleep(0.6)  # three heartbeats' time
    finally:
        capture.stop()
    assert not [t for t in capture.types() if t.startswith("worker-")]


def test_task_sent_events_from_a_client(url):
    app = make_app(url, task_send_sent_event=True)
    capture = Capture(app, wakeup=False)  # subscribed when made
    try:
        sent = app.tasks["evsend.add"].delay(7, 8)
        named = app.send_task("evsend.add", (1, 2), queue="other")
        app.tasks["evsend.quiet"].delay()
        assert until(lambda: len(of_type(capture, "task-sent")) >= 2, seconds=10)
        time.sleep(0.3)
    finally:
        capture.stop()
        app.close()
    events = {e["uuid"]: e for e in of_type(capture, "task-sent")}
    assert set(events) == {sent.id, named.id}  # evsend.quiet has send_events=False
    assert events[sent.id]["name"] == "evsend.add" and events[sent.id]["args"] == "(7, 8)"
    assert events[sent.id]["queue"] == "celery" and events[named.id]["queue"] == "other"
    assert events[sent.id]["hostname"].startswith("gen")
    assert capture.state.tasks[sent.id].state == states.PENDING


def test_worker_cli_flags_and_banner(url, tmp_path):
    """``celery worker -E --heartbeat-interval`` from the command line; the banner says
    task events are on; ``--without-gossip``/``--without-mingle`` are accepted."""
    app_file = tmp_path / "evcli.py"
    app_file.write_text(textwrap.dedent(f"""
        from celery import Celery
        app = Celery("evcli", broker="{url}", backend="{url}")

        @app.task(name="evcli.add")
        def add(x, y):
            return x + y
    """))
    client = make_app(url)
    capture = Capture(client, wakeup=False)  # subscribed when made
    proc = CommandProcess(
        [sys.executable, "-m", "celery", "-A", "evcli", "worker", "-E", "-n", "cli-ev@test",
         "--heartbeat-interval", "0.5", "--without-gossip", "--without-mingle",
         "--loop-workers", "0", "--sync-workers", "1", "-l", "info"], cwd=tmp_path)
    try:
        proc.wait_for_line("ready: consuming", timeout=30)
        assert client.send_task("evcli.add", (1, 2)).get(timeout=10) == 3
        assert until(lambda: len(of_type(capture, "worker-heartbeat")) >= 3, seconds=5)
        assert until(lambda: of_type(capture, "task-succeeded"), seconds=5)
        assert proc.stop() == 0, proc.output
    finally:
        capture.stop()
        client.close()
    assert "task events: ON" in proc.output
    beats = of_type(capture, "worker-heartbeat")
    assert beats[0]["freq"] == 0.5 and beats[0]["hostname"] == "cli-ev@test"


def test_a_killed_worker_stops_being_alive_in_state_after_two_missed_heartbeats(url, tmp_path):
    """kill -9 sends no worker-offline: ``State`` tells the worker is gone once its last
    heartbeat is older than twice its ``freq`` (Celery's expiry rule)."""
    app_file = tmp_path / "evkill.py"
    app_file.write_text(f"from celery import Celery\napp = Celery('evkill', broker='{url}')\n")
    client = make_app(url)
    capture = Capture(client, wakeup=False)  # subscribed when made
    proc = CommandProcess(
        [sys.executable, "-m", "celery", "-A", "evkill", "worker", "-n", "kill-ev@test",
         "--heartbeat-interval", "0.5", "--loop-workers", "0", "--sync-workers", "1"],
        cwd=tmp_path)
    try:
        assert until(lambda: len(of_type(capture, "worker-heartbeat")) >= 2, seconds=30), \
            proc.output
        node = capture.state.workers["kill-ev@test"]
        assert node.alive
        proc.proc.kill()
        proc.proc.wait(10)
        killed_at = time.monotonic()
        assert until(lambda: not node.alive, seconds=5)
        gone_after = time.monotonic() - killed_at
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
        capture.stop()
        client.close()
    assert not of_type(capture, "worker-offline")
    assert gone_after <= 1.5  # 2 x 0.5 s after the last heartbeat, which came before the kill
    assert capture.state.alive_workers() == []


def test_events_are_dropped_not_waited_for_when_the_broker_is_away():
    """A dispatcher whose broker cannot be reached drops events, counts them and says so
    once; ``send`` never waits. Real connection refusals (nothing listens on port 1)."""
    import asyncio
    import logging

    from celery.events.dispatcher import EventDispatcher

    app = Celery("evaway", broker="redis://127.0.0.1:1/0", set_as_current=False,
                 broker_transport_options={"max_retries": 0})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("celery.events").addHandler(handler)

    async def main() -> EventDispatcher:
        dispatcher = EventDispatcher(app=app, hostname="away@test", groups={"task"},
                                     buffer_group={"task"}, loop=asyncio.get_running_loop(),
                                     max_pending=100)
        started = time.monotonic()
        for i in range(1000):
            dispatcher.send("task-succeeded", uuid=str(i))
            if i % 10 == 9:
                await asyncio.sleep(0)  # a loop turn: one task.multi message of 10
        assert time.monotonic() - started < 1.0
        await dispatcher.aclose(timeout=5)
        return dispatcher

    try:
        dispatcher = asyncio.run(main())
    finally:
        logging.getLogger("celery.events").removeHandler(handler)
        app.close()
    assert dispatcher.dropped == 1000 and dispatcher.sent == 0
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("Events: dropped"), warnings


# -- upstream Celery reads our events --------------------------------------------------------


UPSTREAM_STATE = """
import json, sys, threading
from celery import Celery
app = Celery(broker=sys.argv[1])
state = app.events.State()
seen = []
def on_event(event):
    seen.append(event["type"])
    state.event(event)
    if "worker-offline" in seen:
        raise SystemExit
with app.connection() as conn:
    recv = app.events.Receiver(conn, handlers={"*": on_event})
    print("ready", flush=True)
    try:
        recv.capture(limit=None, timeout=40, wakeup=False)
    except SystemExit:
        pass
out = {"types": seen,
       "workers": {h: {"alive": w.alive, "sw_ident": w.sw_ident, "freq": w.freq,
                       "processed": w.processed}
                   for h, w in state.workers.items()},
       "tasks": {t.uuid: {"state": t.state, "name": t.name, "result": t.result,
                          "args": t.args, "exception": t.exception,
                          "worker": t.worker.hostname if t.worker else None}
                 for t in state.tasks.values()}}
print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    from tests.compat.test_upstream_interop import _upstream_python

    return _upstream_python()


def test_upstream_state_follows_our_worker(upstream_python, app, url, tmp_path):
    script = tmp_path / "upstream_state.py"
    script.write_text(UPSTREAM_STATE)
    proc = subprocess.Popen([str(upstream_python), str(script), url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        with running_worker(app, hostname=HOST, loop_workers=1, sync_workers=1,
                            task_events=True):
            ok = app.send_task("evsend.add", (20, 22))
            bad = app.send_task("evsend.boom")
            assert ok.get(timeout=10) == 42
            with pytest.raises(ValueError):
                bad.get(timeout=10)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            stop_process(proc)
    summary = json.loads(output.strip().splitlines()[-1])
    worker = summary["workers"][HOST]
    assert worker == {"alive": False, "sw_ident": "py-celery", "freq": 2.0, "processed": 2}
    assert summary["tasks"][ok.id] == {"state": "SUCCESS", "name": "evsend.add",
                                       "result": "42", "args": "(20, 22)", "exception": None,
                                       "worker": HOST}
    assert summary["tasks"][bad.id]["state"] == "FAILURE"
    assert summary["tasks"][bad.id]["exception"] == "ValueError('boom')"
    assert summary["types"][0] == "worker-online"


def test_upstream_events_dump_shows_our_worker(upstream_python, app, url):
    from tests.compat.test_upstream_interop import _env as interop_env

    lines: list[str] = []
    dump = subprocess.Popen([str(upstream_python), "-m", "celery", "-b", url, "events",
                             "--dump"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=interop_env(url))
    assert dump.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(dump.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        assert until(lambda: any("starting capture" in line for line in lines), seconds=30)
        with running_worker(app, hostname=HOST, loop_workers=0, sync_workers=1,
                            task_events=True):
            # subscribed once it shows a heartbeat (its banner comes before it subscribes)
            assert until(lambda: any(" heartbeat: " in line for line in lines),
                         seconds=20), "".join(lines)
            result = app.send_task("evsend.add", (4, 5))
            assert result.get(timeout=10) == 9
            assert until(lambda: any("task succeeded" in line for line in lines),
                         seconds=10), "".join(lines)
    finally:
        stop_process(dump)
    text = "".join(lines)
    assert f"task received: evsend.add({result.id}) args=(4, 5) kwargs={{}}" in text, text
    assert any(f"task succeeded: evsend.add({result.id})" in line and "result=9" in line
               for line in lines), text
