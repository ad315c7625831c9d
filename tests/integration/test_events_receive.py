"""Receiving Celery events on Redis: envelopes published exactly as upstream's kombu publishes
them (``PUBLISH /<db>.celeryev/<routing key> <JSON envelope>``), ``celery events --dump``,
and a real upstream Celery worker started with ``-E``."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, states
from celery.events import EventReceiver
from celery.events.state import State
from celery.exceptions import CeleryError, EventCaptureTimeout
from tests.conftest import flushed_redis_url, stop_process

REDIS_DB = 11
ROOT = Path(__file__).resolve().parents[2]
HOST = "w1@testhost"


def envelope(body: Any, routing_key: str, hostname: str = HOST) -> str:
    """The JSON envelope kombu's Redis transport publishes for an event (key order as seen)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.dumps({
        "body": base64.b64encode(raw).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": {"hostname": hostname},
        "properties": {"delivery_mode": 1,
                       "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}})


def worker_event(type_: str, clock: int, **fields: Any) -> dict[str, Any]:
    return {"hostname": HOST, "utcoffset": 0.0, "pid": 8104, "clock": clock, "freq": 2.0,
            "active": 0, "processed": 0, "loadavg": [0.15, 0.25, 0.3], "sw_ident": "py-celery",
            "sw_ver": "5.7.0", "sw_sys": "Linux", **fields, "timestamp": time.time(),
            "type": type_}


def task_batch(task_id: str, clock: int) -> list[dict[str, Any]]:
    """A worker's ``task.multi`` body: received, started and succeeded in one JSON list."""
    common = {"hostname": HOST, "utcoffset": 0.0, "pid": 8104}
    return [
        {**common, "clock": clock, "uuid": task_id, "name": "tasks.add", "args": "(1, 2)",
         "kwargs": "{}", "root_id": task_id, "parent_id": None, "retries": 0, "eta": None,
         "expires": None, "timestamp": time.time(), "type": "task-received"},
        {**common, "clock": clock + 1, "uuid": task_id, "timestamp": time.time(),
         "type": "task-started"},
        {**common, "clock": clock + 2, "uuid": task_id, "result": "3", "runtime": 0.0063,
         "timestamp": time.time(), "type": "task-succeeded"},
    ]


@pytest.fixture
def url() -> str:
    return flushed_redis_url(REDIS_DB)


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = Celery("events-receive", broker=url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def redis(url: str) -> Iterator[Any]:
    import valkey

    client = valkey.Valkey.from_url(url)
    yield client
    client.close()


def publish(redis: Any, routing_key: str | None, payload: str | bytes) -> None:
    channel = f"/{REDIS_DB}.celeryev" + (f"/{routing_key}" if routing_key else "")
    redis.publish(channel, payload)


def until(check: Callable[[], bool], seconds: float = 20.0, every: float = 0.1,
          action: Callable[[], Any] | None = None) -> bool:
    """Poll ``check`` (doing ``action`` between polls) for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        if action is not None:
            action()
        time.sleep(every)
    return check()


class Capture:
    """``receiver.capture`` in a thread, feeding a State; stops when asked. Made once the
    receiver is subscribed, so no event sent after it is missed."""

    def __init__(self, app: Celery, wakeup: bool = True) -> None:
        self.wakeup = wakeup
        self.state = State()
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # guards events
        self.receiver = EventReceiver(None, handlers={"*": self.on_event}, app=app)
        self.error: BaseException | None = None
        #: Set by the capture thread once subscribed (or failed); waited on by the test's.
        self.subscribed = threading.Event()
        subscribe = self.receiver._subscribe

        async def subscribed(wakeup: bool) -> Any:
            subscription = await subscribe(wakeup)
            self.subscribed.set()
            return subscription

        self.receiver._subscribe = subscribed  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.subscribed.wait(30), "the event receiver did not subscribe within 30 s"
        if self.error is not None:
            raise self.error

    def on_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)
        self.state.event(event)

    def run(self) -> None:
        try:
            self.receiver.capture(timeout=60, wakeup=self.wakeup)
        except BaseException as exc:  # reported by stop() (or __init__)
            self.error = exc
            self.subscribed.set()

    def types(self) -> list[str]:
        with self.lock:
            return [e["type"] for e in self.events]

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.mark.redis
async def test_fanout_subscribe_with_routing_key_gets_upstreams_channels(app, redis):
    subscription = await app.transport.fanout_subscribe("celeryev", "#")
    only_exact = await app.transport.fanout_subscribe("celeryev")
    try:
        publish(redis, "worker.heartbeat", "one")
        publish(redis, "task.multi", "two")
        publish(redis, None, "three")  # fanout_patterns off: the exchange's own channel
        redis.publish(f"/{REDIS_DB}.celery.pidbox", "not-an-event")
        got: list[str] = []
        for _ in range(20):
            got += await subscription.get(0.5)
            if len(got) >= 3:
                break
        assert got == ["one", "two", "three"]
        assert await only_exact.get(0.5) == ["three"]
    finally:
        await subscription.close()
        await only_exact.close()


@pytest.mark.redis
def test_receiver_reads_upstream_wire_format_and_drops_malformed(app, redis, caplog):
    capture = Capture(app, wakeup=False)
    try:
        assert until(lambda: "worker-online" in capture.types(),
                     action=lambda: publish(redis, "worker.online",
                                            envelope(worker_event("worker-online", 1), "worker.online")))
        publish(redis, "worker.heartbeat", b"\xff not UTF-8")  # (the transport drops it)
        publish(redis, "worker.heartbeat", "not an envelope")
        publish(redis, "worker.heartbeat", envelope(b"{broken json", "worker.heartbeat"))
        publish(redis, "task.multi", envelope([{"no": "type"}, 3], "task.multi"))
        publish(redis, "worker.heartbeat", envelope(worker_event("worker-heartbeat", 5),
                                                    "worker.heartbeat"))
        task_id = str(uuid.uuid4())
        publish(redis, "task.multi", envelope(task_batch(task_id, 10), "task.multi"))
        assert until(lambda: "task-succeeded" in capture.types())
    finally:
        capture.stop()
    types = capture.types()
    assert types[-4:] == ["worker-heartbeat", "task-received", "task-started", "task-succeeded"]
    worker = capture.state.workers[HOST]
    assert worker.alive and worker.freq == 2.0 and worker.sw_ver == "5.7.0"
    task = capture.state.tasks[task_id]
    assert task.state == states.SUCCESS and task.result == "3" and task.name == "tasks.add"
    assert task.worker is worker
    assert all("local_received" in e for e in capture.events)
    assert app.clock.value >= 12  # moved past the events' clocks
    dropped = [r.getMessage() for r in caplog.records if "Dropping an event" in r.getMessage()]
    assert len(dropped) == 3 and {m.split(" (")[1].split(")")[0] for m in dropped} == \
        {"envelope", "body", "event"}


@pytest.mark.redis
def test_capture_timeout_and_wakeup_broadcast(app):
    async def listen() -> Any:
        return await app.transport.fanout_subscribe("celery.pidbox")

    pidbox = app.portal.call(listen())
    receiver = EventReceiver(None, app=app)
    started = time.monotonic()
    with pytest.raises(EventCaptureTimeout) as caught:
        receiver.capture(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert isinstance(caught.value, CeleryError) and isinstance(caught.value, TimeoutError)
    from celery.messaging import pidbox as codec

    payloads = app.portal.call(pidbox.get(2.0))
    app.portal.call(pidbox.close())
    assert [codec.decode(p)[0]["method"] for p in payloads] == ["heartbeat"]


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    env.pop("CELERY_BROKER_URL", None)
    return env


def test_events_without_dump_fails_with_one_line(url):
    proc = subprocess.run(_celery("-b", url, "events"), capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "Error: only 'celery events --dump' is supported here (the curses monitor and "
        "cameras are not implemented)"]


@pytest.mark.redis
def test_events_dump_prints_lines_until_sigterm(url, redis):
    proc = subprocess.Popen(_celery("-b", url, "events", "--dump"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        assert until(lambda: any("heartbeat:" in line for line in lines), action=lambda:
                     publish(redis, "worker.heartbeat",
                             envelope(worker_event("worker-heartbeat", 3), "worker.heartbeat")))
        task_id = str(uuid.uuid4())
        publish(redis, "task.multi", envelope(task_batch(task_id, 10), "task.multi"))
        assert until(lambda: any("task succeeded" in line for line in lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        reader.join(5)
    assert code == 0, "".join(lines)
    assert lines[0] == "-> evdump: starting capture...\n"
    heartbeat = next(line for line in lines if "heartbeat:" in line)
    assert heartbeat.startswith(f"{HOST} [") and "+00:00] heartbeat: active=0, clock=3, " \
        "freq=2.0, loadavg=[0.15, 0.25, 0.3], local_received=" in heartbeat
    succeeded = next(line for line in lines if "task succeeded" in line)
    assert f"task succeeded: tasks.add({task_id}) args=(1, 2) kwargs={{}} clock=12, " \
        in succeeded and "result=3, runtime=0.0063, utcoffset=0.0" in succeeded


# -- a real upstream Celery worker ---------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    from tests.compat.test_upstream_interop import _upstream_python

    return _upstream_python()


def _upstream_worker(python: Path, url: str) -> subprocess.Popen:
    from tests.compat.test_upstream_interop import INTEROP_DIR
    from tests.compat.test_upstream_interop import _env as interop_env

    return subprocess.Popen(
        [str(python), "-m", "celery", "-A", "upapp", "worker", "-P", "threads", "-c", "2",
         "-l", "warning", "-n", "upstream-ev@%h", "-E", "--without-gossip", "--without-mingle"],
        cwd=INTEROP_DIR, env=interop_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.redis
def test_state_follows_an_upstream_worker_with_events(upstream_python, app, url):
    capture = Capture(app, wakeup=False)  # subscribed before the worker says it is online
    worker = _upstream_worker(upstream_python, url)
    try:
        assert until(lambda: "worker-online" in capture.types(), seconds=60)
        assert until(lambda: "worker-heartbeat" in capture.types(), seconds=20)
        result = app.send_task("interop.add", (2, 3))
        assert until(lambda: "task-succeeded" in capture.types(), seconds=30)
    finally:
        capture.stop()
        output = stop_process(worker).decode()
    state = capture.state
    (node,) = [w for w in state.workers.values() if w.hostname.startswith("upstream-ev@")]
    assert node.alive and node.freq == 2.0 and node.sw_ident == "py-celery"
    assert node.sw_ver.startswith("5.") and len(node.heartbeats) >= 1
    task = state.tasks[result.id]
    assert task.state == states.SUCCESS and task.name == "interop.add", output[-2000:]
    assert task.args == "(2, 3)" and task.result == "5" and task.worker is node
    assert task.received and task.started and task.succeeded and task.runtime is not None
    assert state.task_types() == ["interop.add"]


@pytest.mark.redis
def test_events_dump_shows_an_upstream_worker(upstream_python, app, url):
    worker = _upstream_worker(upstream_python, url)
    dump = None
    lines: list[str] = []
    try:
        # the worker answers ping once it is up; then the dump's wakeup gets a heartbeat
        assert until(lambda: bool(app.control.ping(timeout=0.5)), seconds=60)
        dump = subprocess.Popen(_celery("-b", url, "events", "--dump"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=_env())
        reader = threading.Thread(target=lambda: lines.extend(iter(dump.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        assert until(lambda: any("heartbeat:" in line for line in lines), seconds=30)
        result = app.send_task("interop.add", (4, 5))
        assert until(lambda: any("task succeeded" in line for line in lines), seconds=30)
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGTERM)
            code = dump.wait(30)
        output = stop_process(worker).decode()
    assert code == 0, "".join(lines)
    assert any(line.startswith("upstream-ev@") and " heartbeat: " in line for line in lines)
    assert any(f"task received: interop.add({result.id}) args=(4, 5) kwargs={{}}" in line
               for line in lines), "".join(lines) + output[-2000:]
    assert any(f"task succeeded: interop.add({result.id}) args=(4, 5) kwargs={{}}" in line
               and "result=9" in line for line in lines)
