"""The canvas against a real worker process (``celery -A tests.apps.canvasapp worker``), on
Redis, on the SQLite broker and backend, and on the file-system broker and backend."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, chain, chord, chunks, group, xmap, xstarmap
from celery.exceptions import ChordError
from celery.result import GroupResult
from tests.conftest import flushed_redis_url, stop_process

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 14
TIMEOUT = 20


class Worker:
    """A worker process of tests/apps/canvasapp.py, and its output so far."""

    def __init__(self, broker: str, backend: str) -> None:
        self.broker, self.backend = broker, backend
        env = dict(os.environ, CANVASAPP_BROKER=broker, CANVASAPP_BACKEND=backend,
                   PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.canvasapp", "worker", "-l", "info",
             "--loop-workers=1", "--loop-concurrency=50", "--sync-workers=4"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if " ready" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(30), "".join(self.lines)

    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module", params=["redis", "sqlite", "filesystem"])
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    if request.param == "redis":
        url = flushed_redis_url(REDIS_DB)
        broker = backend = url
    elif request.param == "sqlite":
        folder = tmp_path_factory.mktemp("canvas-sqlite")
        broker, backend = f"sqlite:///{folder}/broker.db", f"db+sqlite:///{folder}/results.db"
    else:
        folder = tmp_path_factory.mktemp("canvas-files")
        broker, backend = f"filesystem://{folder}/broker", f"file://{folder}/results"
    proc = Worker(broker, backend)
    yield proc
    assert proc.alive(), proc.log()  # every test's input, bad input included, left it running
    stop_process(proc.proc)


@pytest.fixture
def app(worker: Worker) -> Iterator[Celery]:
    app = Celery("canvas-client", broker=worker.broker, backend=worker.backend,
                 set_as_current=False)
    yield app
    app.close()


def sig(app: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
    return app.signature(f"cv.{name}", args, kwargs)


def mark(app: Celery, key: str) -> Any:
    """What the worker stored as ``mark-<key>`` (waits for it)."""
    return app.AsyncResult(f"mark-{key}").get(timeout=TIMEOUT)


# -- chain --------------------------------------------------------------------------------------


def test_chain_of_def_and_async_steps(app):
    result = chain(sig(app, "add", 1, 2), sig(app, "aadd", 3), sig(app, "mul", 10)).delay()
    assert result.get(timeout=TIMEOUT) == 60
    assert result.parent.get(timeout=TIMEOUT) == 6 and result.parent.parent.get(timeout=TIMEOUT) == 3
    # The steps are parent and child: each later one was sent by the one before.
    assert result.parent.parent.children[0].id == result.parent.id


def test_chain_step_failure_fails_the_rest_and_get_raises(app):
    result = (sig(app, "add", 1, 1) | sig(app, "fail") | sig(app, "add", 5)).delay()
    with pytest.raises(ValueError, match=r"fail\(2,\)"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"  # the step that never ran is marked failed too
    assert result.parent.parent.get(timeout=TIMEOUT) == 2


async def test_chain_awaited_and_sent_from_a_loop(app):
    result = await (sig(app, "aadd", 1, 1) | sig(app, "add", 1)).adelay()
    assert await result == 3


# -- group ------------------------------------------------------------------------------------


def test_group_results_in_order_and_its_result_methods(app):
    members = [sig(app, "sleepy_echo", i, 0.05 * (5 - i)) for i in range(5)]  # finish reversed
    result = group(members).delay()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 5
    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert [r.id for r in restored] == [r.id for r in result]
    assert restored.join(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    result.delete()
    assert GroupResult.restore(result.id, app=app) is None


def test_group_with_a_failure(app):
    result = group(sig(app, "add", 1, 1), sig(app, "fail", 7), sig(app, "aadd", 2, 2)).delay()
    with pytest.raises(ValueError):
        result.join(timeout=TIMEOUT)
    assert result.join(timeout=TIMEOUT, propagate=False)[0] == 2
    assert result.failed() and not result.successful() and result.completed_count() == 2


def test_group_revoke_stops_every_member(app):
    result = group(sig(app, "sleepy_echo", i, 30) for i in range(4)).delay()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # all four running (async: one loop runs them all)
        active = app.control.inspect(timeout=0.5).active() or {}
        if sum(len(tasks) for tasks in active.values()) == 4:
            break
    result.revoke(terminate=True)
    values = result.join(timeout=TIMEOUT, propagate=False)
    assert [type(v).__name__ for v in values] == ["TaskRevokedError"] * 4
    assert [r.state for r in result] == ["REVOKED"] * 4


async def test_group_awaited(app):
    result = await group(sig(app, "aadd", i, i) for i in range(20)).aapply_async()
    assert await result == [2 * i for i in range(20)]


def test_group_of_chains_and_chain_of_groups(app):
    of_chains = group(sig(app, "add", i, i) | sig(app, "mul", 10) for i in range(3)).delay()
    assert of_chains.get(timeout=TIMEOUT) == [0, 20, 40]
    # A group in the middle of a chain becomes a chord: the next step gets the list.
    of_groups = (sig(app, "add", 1, 1) | group(sig(app, "add", 1), sig(app, "mul", 3))
                 | sig(app, "tsum")).delay()
    assert of_groups.get(timeout=TIMEOUT) == 3 + 6


# -- chord ------------------------------------------------------------------------------------


def test_chord_body_gets_header_results_in_header_order(app):
    header = [sig(app, "sleepy_echo", i, 0.02 * (10 - i)) for i in range(10)]
    result = chord(header, sig(app, "identity")).delay()
    assert result.get(timeout=TIMEOUT) == list(range(10))
    assert result.parent.get(timeout=TIMEOUT) == list(range(10))


@pytest.mark.parametrize("member", ["add", "aadd"])
def test_every_member_result_is_stored_before_the_body_runs(app, member):
    # The member that completes the chord is the body's parent: its own result, written
    # last, must be there already when the body runs (as in Celery).
    header = [sig(app, member, i, i) for i in range(20)]
    for _ in range(5):
        assert chord(header, sig(app, "parent_state")).delay().get(timeout=TIMEOUT) == "SUCCESS"


def test_chord_of_two_hundred_async_and_def_members(app):
    header = [sig(app, "aadd" if i % 2 else "add", i, 1) for i in range(200)]
    assert chord(header, sig(app, "atsum")).delay().get(timeout=TIMEOUT) == sum(range(1, 201))


def test_failing_member_fails_the_chord_and_calls_the_body_errback(app):
    key = uuid.uuid4().hex
    body = sig(app, "tsum").on_error(sig(app, "errback_new", key=key))
    result = chord([sig(app, "add", 1, 1), sig(app, "fail", 3)], body).delay()
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError"):
        result.get(timeout=TIMEOUT, follow_parents=False)  # the body's own outcome
    seen = mark(app, key)
    assert seen["task_id"] == result.id and "ChordError" in seen["exc"]
    # By default get() raises the header's own failure first (Celery's follow_parents).
    with pytest.raises(ValueError, match=r"fail\(3,\)"):
        result.get(timeout=TIMEOUT)


def test_chord_inside_a_chain_and_nested_chords(app):
    in_chain = (sig(app, "add", 1, 1) | chord([sig(app, "add", 1), sig(app, "mul", 2)],
                                              sig(app, "tsum")) | sig(app, "mul", 10)).delay()
    assert in_chain.get(timeout=TIMEOUT) == (3 + 4) * 10
    inner = chord([sig(app, "add", 1, 1), sig(app, "add", 2, 2)], sig(app, "tsum"))
    outer = chord([inner, sig(app, "add", 10, 10)], sig(app, "identity")).delay()
    assert outer.get(timeout=TIMEOUT) == [6, 20]


def test_header_nesting_a_group_keeps_its_shape(app):
    header = [sig(app, "add", 1, 1) | group(sig(app, "add", 1), sig(app, "add", 2)),
              sig(app, "add", 5, 5)]
    assert chord(header, sig(app, "identity")).delay().get(timeout=TIMEOUT) == [[3, 4], 10]


def test_empty_chord_header_runs_the_body_with_an_empty_list(app):
    assert chord([], sig(app, "tsum")).delay().get(timeout=TIMEOUT) == 0


def test_add_to_chord_makes_the_body_wait_for_the_added_task(app):
    result = chord([sig(app, "add_to_chord", 1), sig(app, "add", 2, 2)], sig(app, "identity")).delay()
    assert sorted(result.get(timeout=TIMEOUT)) == [1, 4, 101]


# -- chunks, map, starmap ------------------------------------------------------------------------


def test_chunks_map_and_starmap(app):
    parts = chunks(sig(app, "add"), zip(range(7), range(7), strict=True), 3, app=app).delay()
    assert parts.get(timeout=TIMEOUT) == [[0, 2, 4], [6, 8, 10], [12]]
    assert xmap(sig(app, "identity"), [1, 2, 3], app=app).delay().get(timeout=TIMEOUT) == [1, 2, 3]
    assert xstarmap(sig(app, "aadd"), [(1, 2), (3, 4)], app=app).delay().get(timeout=TIMEOUT) == [3, 7]


# -- callbacks and errbacks ----------------------------------------------------------------------


def test_link_callbacks_get_the_return_value(app):
    one, two = uuid.uuid4().hex, uuid.uuid4().hex
    result = app.send_task("cv.add", (2, 3), link=[sig(app, "record", key=one),
                                                   sig(app, "record", key=two)])
    assert result.get(timeout=TIMEOUT) == 5
    assert mark(app, one) == 5 and mark(app, two) == 5
    # Both callbacks went as one group, sent by the task: its child.
    assert len(result.children) == 1 and isinstance(result.children[0], GroupResult)


def test_link_error_old_new_and_async_styles(app):
    old, new, anew = (uuid.uuid4().hex for _ in range(3))
    result = app.send_task("cv.fail", (1,), link_error=[
        sig(app, "errback_old", key=old), sig(app, "errback_new", key=new),
        sig(app, "aerrback_new", key=anew)])
    with pytest.raises(ValueError):
        result.get(timeout=TIMEOUT)
    assert mark(app, old) == {"task_id": result.id}
    called = mark(app, new)
    assert called["task_id"] == result.id and "ValueError" in called["exc"]
    assert called["has_traceback"]
    assert mark(app, anew)["async"] is True
    afailed = app.send_task("cv.afail", link_error=sig(app, "errback_new", key=old + "a"))
    with pytest.raises(KeyError):
        afailed.get(timeout=TIMEOUT)
    assert mark(app, old + "a")["task_id"] == afailed.id


# -- task handlers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["handled", "ahandled"])
def test_handlers_of_a_custom_base_class(app, name):
    ok = app.send_task(f"cv.{name}", (4,))
    assert ok.get(timeout=TIMEOUT) in (8, 12)
    assert mark(app, f"before-{ok.id}") == [4]
    assert mark(app, f"success-{ok.id}") == ok.result
    assert mark(app, f"after-{ok.id}") == "SUCCESS"
    bad = app.send_task(f"cv.{name}", (-1,))
    with pytest.raises(ValueError):
        bad.get(timeout=TIMEOUT)
    assert mark(app, f"failure-{bad.id}") == {"exc": "ValueError('negative')", "traceback": True}
    assert mark(app, f"after-{bad.id}") == "FAILURE"


def test_on_retry_handler(app):
    result = app.send_task("cv.handled_retry")
    assert result.get(timeout=TIMEOUT) == "retried"
    assert mark(app, f"retry-{result.id}") == "OSError('again')"


# -- replace, children, joining inside a task ---------------------------------------------------


def test_replace_in_def_and_async_tasks(app):
    result = (sig(app, "replacer", 4) | sig(app, "add", 1)).delay()
    assert result.get(timeout=TIMEOUT) == 4 * 2 * 10 + 1  # the chain goes on after the replacement
    assert app.send_task("cv.areplacer", (1,)).get(timeout=TIMEOUT) == 2
    assert app.send_task("cv.group_replacer", (3,)).get(timeout=TIMEOUT) == [0, 2, 4]


def test_children_and_parent(app):
    result = app.send_task("cv.spawn")
    assert result.get(timeout=TIMEOUT) == "spawned"
    first, second = result.children
    assert first.get(timeout=TIMEOUT) == 2
    assert isinstance(second, GroupResult) and second.get(timeout=TIMEOUT) == [4, 6]


def test_get_inside_a_task_is_refused_unless_allowed(app):
    refused = app.send_task("cv.get_inside").get(timeout=TIMEOUT)
    assert refused.startswith("refused: Never call result.get() within a task")
    assert app.send_task("cv.get_allowed").get(timeout=TIMEOUT) == 42


def test_current_task_and_app_proxies_and_the_task_logger(app, worker):
    result = app.send_task("cv.who")
    assert result.get(timeout=TIMEOUT) == {"task": "cv.who", "app": "canvasapp", "id": result.id}
    deadline = time.monotonic() + 5
    while "who is running" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in worker.lines if "who is running" in ln)
    assert f"cv.who[{result.id}]" in line  # worker_task_log_format names the task


# -- bad input ---------------------------------------------------------------------------------


def _publish_raw(app: Celery, name: str, args: tuple = (), embed_json: str | None = None,
                 **embed: Any) -> str:
    """Publish a task message whose canvas fields are exactly ``embed`` (or the JSON text
    ``embed_json``), bypassing the client's checks; returns its id."""
    import dataclasses
    import json

    from celery.messaging.protocol import build_task_message

    message = build_task_message(name, args, {}, **embed)
    if embed_json is not None:
        body = f"[{json.dumps(list(args))}, {{}}, {embed_json}]".encode()
        message = dataclasses.replace(message, body=body)
    app.transport.publish(message)
    return message.headers["id"]


def _nested_chain_json(depth: int) -> str:
    """A chain of chains ``depth`` deep, as JSON text (too deep for json.dumps to write; the
    worker's decoder reads it, and parsing it as signatures is what must not go wrong)."""
    head = '{"task": "celery.chain", "args": [], "kwargs": {"tasks": ['
    tail = ']}, "options": {}, "subtask_type": "chain", "immutable": false}'
    inner = '{"task": "cv.add", "args": [1], "kwargs": {}, "options": {}}'
    return '{"chain": [' + head * depth + inner + tail * depth + "]}"


@pytest.mark.parametrize("embed", [
    {"callbacks": ["not a signature"]},
    {"callbacks": {"task": "cv.add"}},
    {"chain": "abc"},
    {"chain": [{"task": "cv.add", "subtask_type": "nope"}]},
    {"chain": [42]},
    {"embed_json": _nested_chain_json(250)},
    {"callbacks": [{"task": "cv.never_registered", "args": [], "kwargs": {}, "options": {}}]},
], ids=["string-callback", "dict-callbacks", "string-chain", "unknown-type", "number-step",
        "deep-nesting", "unregistered-callback"])
def test_malformed_canvas_fields_fail_only_the_callbacks(app, worker, embed):
    task_id = _publish_raw(app, "cv.add", (2, 2), **embed)
    assert app.AsyncResult(task_id).get(timeout=TIMEOUT) == 4  # the task itself succeeded
    if "cv.never_registered" in str(embed):  # sent by name: the worker rejects it, one line

        def logged(line: str) -> bool:
            return "cv.never_registered" in line and "unregistered" in line
    else:

        def logged(line: str) -> bool:
            return task_id in line and "malformed" in line
    deadline = time.monotonic() + 5
    while not any(logged(ln) for ln in worker.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(logged(ln) for ln in worker.lines), worker.log()
    assert app.send_task("cv.add", (1, 1)).get(timeout=TIMEOUT) == 2  # still running
    _assert_settled(app)


def test_malformed_errbacks_and_chord_field_are_logged(app, worker):
    failed = _publish_raw(app, "cv.fail", (), errbacks=[{"task": 5}])
    with pytest.raises(ValueError):
        app.AsyncResult(failed).get(timeout=TIMEOUT)
    member = _publish_raw(app, "cv.add", (1, 1), chord={"no": "task"}, group_id="g-" + failed,
                          group_index=0)
    assert app.AsyncResult(member).get(timeout=TIMEOUT) == 2
    assert app.send_task("cv.add", (1, 1)).get(timeout=TIMEOUT) == 2
    _assert_settled(app)


def test_a_bad_chord_counter_is_logged_and_the_worker_goes_on(app, worker):
    body = sig(app, "identity")
    body.freeze()
    group_id = str(uuid.uuid4())
    _corrupt_chord_size(app, group_id)
    member = _publish_raw(app, "cv.add", (1, 1), chord=body, group_id=group_id, group_index=0)
    assert app.AsyncResult(member).get(timeout=TIMEOUT) == 2
    deadline = time.monotonic() + 5
    while not any(member in ln and "chord" in ln for ln in worker.lines) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(member in ln and "could not report to its chord" in ln for ln in worker.lines)
    assert app.send_task("cv.add", (1, 1)).get(timeout=TIMEOUT) == 2
    _assert_settled(app)


def _corrupt_chord_size(app: Celery, group_id: str) -> None:
    """Store a header size that is not a number, where each backend keeps it."""
    backend = app.backend
    if app.conf.result_backend.startswith("redis"):
        import valkey

        client = valkey.Valkey.from_url(app.conf.result_backend)
        client.set(backend.get_key_for_group(group_id, ".s"), "not a number")
        client.close()
    elif app.conf.result_backend.startswith("db+sqlite"):
        backend.db.write("corrupt", lambda c: c.execute(
            "INSERT INTO celery_chord (group_id, size) VALUES (?, 'not a number')", (group_id,)))
    else:
        Path(backend.path, backend.get_key_for_group(group_id, ".s")).write_text("not a number")


def _assert_settled(app: Celery) -> None:
    """Every message was acknowledged once: nothing waits, nothing is held unacked."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if app.portal.call(app.transport.queue_length("celery")) == 0:
            break
        time.sleep(0.05)
    assert app.portal.call(app.transport.queue_length("celery")) == 0
    if app.conf.broker_url.startswith("redis"):
        import valkey

        client = valkey.Valkey.from_url(app.conf.broker_url)
        try:
            for _ in range(100):
                if client.hlen("unacked") == 0:
                    break
                time.sleep(0.05)
            assert client.hlen("unacked") == 0
        finally:
            client.close()
