"""Remote control against real worker processes on the real Redis: ``celery status`` /
``inspect`` / ``control``, ``app.control``, and revoke (queued, ETA-held, running async and
sync tasks, ``--statedb`` across restarts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from celery import states
from celery.exceptions import TaskRevokedError

from ..conftest import app_module, flushed_redis_url
from ..conftest import stop_process as stop

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 0


def env_for(url: str, data: Path) -> dict[str, str]:
    env = dict(os.environ, CONTROLAPP_URL=url, CONTROLAPP_DIR=str(data))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "tests" / "apps"), str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_worker(url: str, data: Path, name: str, *options: str) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-q", "-A", "controlapp", "worker", "-n", name,
         "-l", "INFO", "--loop-workers", "1", "--sync-workers", "2", *options],
        cwd=data, env=env_for(url, data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    return worker


def celery_cli(url: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "controlapp", *args],
                          cwd=data, env=env_for(url, data), capture_output=True, text=True,
                          timeout=60)


def marks(data: Path) -> list[str]:
    path = data / "marks.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def url() -> str:
    return flushed_redis_url(REDIS_DB)


@pytest.fixture
def app(url, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTROLAPP_URL", url)
    monkeypatch.setenv("CONTROLAPP_DIR", str(tmp_path))
    with app_module("controlapp") as controlapp:
        yield controlapp


@pytest.fixture
def worker(url, tmp_path, app) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    name = f"ctl-{uuid.uuid4().hex[:8]}@test"
    proc = start_worker(url, tmp_path, name)
    try:
        wait_for(lambda: app.control.ping([name], timeout=0.5), 20, "the worker to answer")
        yield name, proc
    finally:
        out = stop(proc)
        assert "Traceback" not in out.replace("Terminated", ""), out


def test_status_inspect_and_ping_list_the_live_worker(url, tmp_path, app, worker):
    name, _ = worker
    status = celery_cli(url, tmp_path, "status")
    assert status.returncode == 0, status.stderr
    assert f"->  {name}: OK" in status.stdout and "1 node online." in status.stdout
    assert app.control.ping(timeout=1.0) == [{name: {"ok": "pong"}}]
    inspect = app.control.inspect([name], timeout=1.0)
    registered = inspect.registered()[name]
    assert {"ctl.sleep", "ctl.spin", "ctl.tick"} <= {line.split(" ")[0] for line in registered}
    stats = inspect.stats()[name]
    assert stats["pid"] != os.getpid() and stats["pool"]["max-concurrency"] == 1 * 100 + 2
    assert [q["name"] for q in inspect.active_queues()[name]] == ["celery"]
    out = celery_cli(url, tmp_path, "inspect", "stats", "--json", "-d", name)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[name]["prefetch_count"] == (100 + 2) * 4
    # a destination that matches no worker: nobody replies
    assert app.control.ping(["nobody@nowhere"], timeout=0.3) == []
    nobody = celery_cli(url, tmp_path, "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.3")
    assert nobody.returncode == 1
    assert nobody.stderr.strip() == "Error: No nodes replied within time constraint"


def test_inspect_active_reserved_and_scheduled(app, worker):
    name, _ = worker
    running = app.tasks["ctl.sleep"].delay("active", 30)
    later = app.tasks["ctl.tick"].apply_async(("later",), countdown=30)
    inspect = app.control.inspect([name], timeout=1.0)
    wait_for(lambda: (inspect.active() or {}).get(name), 10, "the task to run")
    active = inspect.active()[name]
    assert [(t["id"], t["name"], t["args"], t["hostname"]) for t in active] == [
        (running.id, "ctl.sleep", ["active", 30], name)]
    wait_for(lambda: (inspect.scheduled() or {}).get(name), 10, "the ETA task to be held")
    scheduled = inspect.scheduled()[name]
    assert [s["request"]["id"] for s in scheduled] == [later.id] and scheduled[0]["eta"]
    assert inspect.query_task(running.id)[name][running.id][0] == "active"
    for result in (running, later):
        result.revoke(terminate=True, wait=True)


@pytest.mark.parametrize("task", ["ctl.sleep", "ctl.spin"])
def test_terminate_stops_a_running_task_and_frees_its_slot(app, worker, tmp_path, task):
    name, _ = worker
    result = app.tasks[task].delay("victim", 30)
    wait_for(lambda: "start victim" in marks(tmp_path), 10, "the task to start")
    replies = result.revoke(terminate=True, signal="SIGKILL", wait=True, timeout=2)
    assert replies == [{name: {"ok": f"terminate: {result.id}"}}]
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert result.state == states.REVOKED
    stopped = "cancelled victim" if task == "ctl.sleep" else "stopped victim Terminated"
    wait_for(lambda: stopped in marks(tmp_path), 5, "the task to see its termination")
    assert "end victim" not in marks(tmp_path)
    assert f"revoked {result.id} terminated=True signum={int(signal.SIGKILL)} expired=False" \
        in marks(tmp_path)
    # the worker goes on: the same kind of task runs to the end afterwards
    assert app.tasks[task].delay("after", 0.05).get(timeout=10) == "after"


def test_revoke_before_the_run_discards_queued_and_eta_held_tasks(app, worker, tmp_path):
    held = app.tasks["ctl.tick"].apply_async(("held",), countdown=1.5)
    inspect = app.control.inspect(timeout=1.0)
    wait_for(lambda: any((inspect.scheduled() or {}).values()), 10, "the ETA task to be held")
    not_sent_yet = str(uuid.uuid4())
    seen: list = []
    started = time.monotonic()
    # limit and callback as Celery's: the call returns at the one worker's reply, well
    # before its 30 s timeout (a generous liveness bound, not a timing check), and the
    # callback saw that reply
    replies = app.control.revoke([held.id, not_sent_yet], reply=True, timeout=30.0, limit=1,
                                 callback=seen.append)
    assert time.monotonic() - started < 20
    assert len(replies) == 1 and "flagged as revoked" in next(iter(replies[0].values()))["ok"]
    assert seen == replies
    # the revoke reached the held task at once; the other id is discarded when it arrives
    assert held.get(propagate=False, timeout=5) is not None and held.state == states.REVOKED
    late = app.tasks["ctl.tick"].apply_async(("late",), task_id=not_sent_yet)
    with pytest.raises(TaskRevokedError):
        late.get(timeout=10)
    assert app.tasks["ctl.tick"].delay("control").get(timeout=10)  # others still run
    time.sleep(1.0)  # past the held task's ETA: it must not have run
    ticks = [m.split()[1] for m in marks(tmp_path) if m.startswith("tick ")]
    assert ticks == ["control"]
    assert set(next(iter(app.control.inspect().revoked().values()))) == {held.id, not_sent_yet}


def test_tasks_waiting_for_a_busy_sync_thread_are_reserved_unacked_and_revocable(
        app, worker, tmp_path, url):
    """Both sync threads busy: the next sync tasks wait in the executor. They are not
    active, their messages are not acked, their time limits have not started, and a revoke
    takes one back before it runs."""
    name, _ = worker
    inspect = app.control.inspect([name], timeout=1.0)
    busy = [app.tasks["ctl.spin"].delay(f"busy{i}", 1.5) for i in range(2)]
    wait_for(lambda: {"start busy0", "start busy1"} <= set(marks(tmp_path)), 10, "both to run")
    # time_limit 1 s, 1.5 s of waiting for a thread: it holds only once the task started
    timed = app.tasks["ctl.spin"].apply_async(("timed", 0.1), time_limit=1)
    doomed = app.tasks["ctl.spin"].delay("doomed", 0.1)
    waiting = {timed.id, doomed.id}
    wait_for(lambda: {t["id"] for t in (inspect.reserved() or {}).get(name, [])} == waiting,
             10, "both to wait")
    assert {t["id"] for t in inspect.active()[name]} == {r.id for r in busy}
    unacked = valkey.Valkey.from_url(url).hgetall("unacked")
    assert {json.loads(v)[0]["headers"]["id"] for v in unacked.values()} == waiting
    assert app.control.revoke(doomed.id, reply=True, timeout=1.0)
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=5)
    assert timed.get(timeout=10) == "timed"
    assert [r.get(timeout=10) for r in busy] == ["busy0", "busy1"]
    assert "start doomed" not in marks(tmp_path)
    wait_for(lambda: not valkey.Valkey.from_url(url).hlen("unacked"), 5, "all acked")


def test_statedb_keeps_revokes_across_a_restart(url, tmp_path, app):
    state = tmp_path / "worker.state"
    first = start_worker(url, tmp_path, "state1@test", "--statedb", str(state))
    try:
        wait_for(lambda: app.control.ping(["state1@test"], timeout=0.5), 20, "the first worker")
        task_id = str(uuid.uuid4())
        assert app.control.revoke(task_id, reply=True, timeout=1.0)
    finally:
        stop(first)
    assert task_id in json.loads(state.read_text())["revoked"]
    result = app.tasks["ctl.tick"].apply_async(("revoked",), task_id=task_id)
    second = start_worker(url, tmp_path, "state2@test", "--statedb", str(state))
    try:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=15)
        assert app.tasks["ctl.tick"].delay("fine").get(timeout=10)
    finally:
        out = stop(second)
    assert "Loaded 1 revoked task id(s)" in out
    assert [m.split()[1] for m in marks(tmp_path) if m.startswith("tick ")] == ["fine"]


def test_rate_limit_and_time_limit_change_at_run_time(url, tmp_path, app, worker):
    name, _ = worker
    out = celery_cli(url, tmp_path, "control", "rate_limit", "ctl.tick", "2/s")
    assert out.returncode == 0, out.stderr
    assert f"->  {name}: OK" in out.stdout and "new rate limit set successfully" in out.stdout
    assert app.control.inspect().registered("rate_limit")[name].count("ctl.tick [rate_limit=2/s]") == 1
    results = [app.tasks["ctl.tick"].delay(f"r{i}") for i in range(3)]
    times = sorted(r.get(timeout=15) for r in results)
    assert times[2] - times[0] >= 0.9, times  # 2/s: spaced 0.5 s apart (a lower bound only)
    bad = app.control.rate_limit("ctl.tick", "fast", reply=True, timeout=1.0)
    assert "Invalid rate limit" in bad[0][name]["error"]
    unknown = app.control.rate_limit("no.such.task", "1/s", reply=True, timeout=1.0)
    assert unknown == [{name: {"error": "unknown task"}}]
    # broadcast's other keyword arguments join the command's arguments, as in Celery
    again = app.control.broadcast("rate_limit", {"task_name": "ctl.tick"},
                                  rate_limit="3/s", reply=True, timeout=1.0, limit=1)
    assert again == [{name: {"ok": "new rate limit set successfully"}}]
    assert app.control.inspect().registered("rate_limit")[name].count("ctl.tick [rate_limit=3/s]") == 1
    limited = app.control.time_limit("ctl.sleep", soft=0.2, hard=0.5, reply=True, timeout=1.0)
    assert limited == [{name: {"ok": "time limits set successfully"}}]
    result = app.tasks["ctl.sleep"].delay("limited", 5)
    with pytest.raises(Exception, match="SoftTimeLimitExceeded|soft time limit"):
        result.get(timeout=10)


def test_bad_control_messages_are_logged_and_the_worker_goes_on(url, tmp_path, app, worker):
    import valkey

    name, proc = worker
    raw = valkey.Valkey.from_url(url)
    try:
        raw.publish(f"/{REDIS_DB}.celery.pidbox", b"not json at all")
        raw.publish(f"/{REDIS_DB}.celery.pidbox", json.dumps({"body": "!!", "properties": {}}))
    finally:
        raw.close()
    unknown = app.control.broadcast("no_such_command", reply=True, timeout=1.0)
    assert unknown == [{name: {"error": "unknown command 'no_such_command'"}}]
    assert app.control.ping([name], timeout=1.0) == [{name: {"ok": "pong"}}]
    out = stop(proc)
    assert "discarding a malformed command message" in out
    assert "unknown command 'no_such_command'" in out


def test_shutdown_command_stops_the_worker(url, tmp_path, app):
    proc = start_worker(url, tmp_path, "down@test")
    wait_for(lambda: app.control.ping(["down@test"], timeout=0.5), 20, "the worker")
    out = celery_cli(url, tmp_path, "control", "shutdown", "-d", "down@test")
    assert out.returncode == 0 and "shutdown sent" in out.stdout
    proc.wait(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize("broker", ["sqlite", "filesystem", "memory"])
def test_remote_control_on_the_embedded_brokers(broker, tmp_path):
    from celery import Celery

    from .worker_harness import running_worker

    name = uuid.uuid4().hex
    url = {"sqlite": f"sqlite:///{tmp_path}/broker.db", "memory": f"memory://{name}",
           "filesystem": "filesystem://"}[broker]
    options = {}
    if broker == "filesystem":
        folder = str(tmp_path / "queue")
        options = {"broker_transport_options": {"data_folder_in": folder, "data_folder_out": folder}}
    app = Celery("embedded", broker=url, backend=f"db+sqlite:///{tmp_path}/results.db", **options)
    ran: list[str] = []

    @app.task(name="emb.note")
    def note(key):
        ran.append(key)

    try:
        with running_worker(app, hostname=f"emb-{broker}@test", loop_workers=0, sync_workers=1):
            assert app.control.ping(timeout=1.0) == [{f"emb-{broker}@test": {"ok": "pong"}}]
            later = note.apply_async(("later",), countdown=1.0)  # the broker may hold it
            replies = app.control.revoke(later.id, reply=True, timeout=1.0)
            assert "flagged as revoked" in replies[0][f"emb-{broker}@test"]["ok"]
            with pytest.raises(TaskRevokedError):
                later.get(timeout=10)
            note.delay("now").get(timeout=10)
            time.sleep(1.2)  # past the revoked task's ETA
        assert ran == ["now"]
    finally:
        app.close()


def test_concurrent_calls_from_one_client_each_get_their_replies(app, worker):
    import concurrent.futures

    name, _ = worker
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: app.control.ping(timeout=1.0), range(8)))
    assert replies == [[{name: {"ok": "pong"}}]] * 8
