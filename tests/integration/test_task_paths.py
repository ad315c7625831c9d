"""Task API paths end to end through a real worker on Redis (issue 27, item 7): custom
states stored with ``update_state`` and read back through ``AsyncResult.state``/``.info``,
``retry_backoff`` with ``retry_backoff_max`` and ``retry_jitter``, ``retry(throw=False)``,
and ``get()`` without a result backend."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import valkey

from celery import Celery, states
from celery.exceptions import Retry
from celery.result import AsyncResult

from ..conftest import REDIS_HOST, REDIS_PORT, need_server
from .worker_harness import running_worker

#: test_task_semantics.py's database (modules run one after the other); each test here
#: also has a queue of its own and removes it, and never empties the database.
REDIS_DB = 1


class Flaky(Exception):
    """Raised by the backoff tasks until they run out of retries."""


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def url() -> Iterator[str]:
    need_server("Redis", REDIS_HOST, REDIS_PORT)
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def make_app(url: str, backend: bool = True) -> Celery:
    queue = f"paths-{uuid.uuid4().hex[:8]}"
    return Celery(queue, broker=url, backend=url if backend else None, set_as_current=False,
                  task_default_queue=queue)


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = make_app(url)
    yield app
    with valkey.Valkey.from_url(url) as raw:  # this test's queue, should anything be left
        raw.delete(app.conf.task_default_queue)
    app.close()


# -- update_state ----------------------------------------------------------------------------


def test_custom_states_are_read_back_through_state_and_info(app: Celery):
    gates = [threading.Event(), threading.Event()]
    other = str(uuid.uuid4())

    @app.task(name="paths.progress", bind=True)
    def progress(self, total):
        for done, gate in enumerate(gates, 1):
            self.update_state(state="PROGRESS", meta={"done": done, "total": total})
            gate.wait(10)
        self.update_state(task_id=other, state="NOTED", meta=["by", self.request.id])
        return "finished"

    @app.task(name="paths.aprogress", bind=True)
    async def aprogress(self):
        await self.aupdate_state(state="ASYNC-PROGRESS", meta={"step": 1})
        await asyncio.to_thread(gates[0].wait, 10)
        return "afinished"

    def seen(result: AsyncResult) -> tuple:
        fresh = AsyncResult(result.id, app=app)  # (a result object caches a ready state)
        return fresh.state, fresh.info

    with running_worker(app, loop_workers=1, sync_workers=1):
        result, aresult = progress.delay(2), aprogress.delay()
        wait_until(lambda: seen(result) == ("PROGRESS", {"done": 1, "total": 2}), "step 1")
        wait_until(lambda: seen(aresult) == ("ASYNC-PROGRESS", {"step": 1}), "async step")
        assert not result.ready() and not aresult.ready()  # a custom state is not final
        gates[0].set()
        wait_until(lambda: seen(result) == ("PROGRESS", {"done": 2, "total": 2}), "step 2")
        assert aresult.get(timeout=10) == "afinished"
        gates[1].set()
        assert result.get(timeout=10) == "finished"
    assert seen(result) == (states.SUCCESS, "finished")
    assert seen(aresult) == (states.SUCCESS, "afinished")
    assert seen(AsyncResult(other, app=app)) == ("NOTED", ["by", result.id])


# -- retry_backoff ---------------------------------------------------------------------------


def test_retry_backoff_is_capped_by_retry_backoff_max_and_jittered_within_it(app: Celery):
    """Each retry's ETA is its countdown after the failure: 1 s, then 1 s again (2 s
    capped to ``retry_backoff_max=1``) without jitter; 0 or 1 s with it (the cap applies
    before the jitter, never more). The worker runs each retry no earlier than its ETA."""
    tried: dict[str, list[tuple[float, str | None]]] = {}  # key -> (start, ETA) of each run

    @app.task(name="paths.backoff", bind=True, autoretry_for=(Flaky,), retry_backoff=True,
              retry_backoff_max=1, retry_jitter=False, max_retries=2)
    def backoff(self, key):
        tried.setdefault(key, []).append((time.time(), self.request.eta))
        raise Flaky(key)

    @app.task(name="paths.jittered", bind=True, autoretry_for=(Flaky,), retry_backoff=True,
              retry_backoff_max=1, max_retries=2)
    def jittered(self, key):
        tried.setdefault(key, []).append((time.time(), self.request.eta))
        raise Flaky(key)

    with running_worker(app, loop_workers=1, sync_workers=2):
        plain, jitter = backoff.delay("plain"), jittered.delay("jitter")
        for result in (plain, jitter):
            with pytest.raises(Flaky):
                result.get(timeout=15)

    def countdowns(key: str) -> list[float]:
        runs = tried[key]
        out = []
        for (failed_at, _), (started_at, eta) in zip(runs, runs[1:], strict=False):
            assert eta is not None, f"a retry of {key} without an ETA"
            due = dt.datetime.fromisoformat(eta).timestamp()
            assert started_at >= due - 0.01, f"{key} ran {due - started_at:.3f}s before its ETA"
            out.append(due - failed_at)
        return out

    assert len(tried["plain"]) == 3 and len(tried["jitter"]) == 3
    # (each ETA is computed a moment after the task noted its failure: a little more)
    plain_by = countdowns("plain")
    assert len(plain_by) == 2 and all(abs(c - 1) < 0.25 for c in plain_by), plain_by
    jittered_by = countdowns("jitter")
    assert all(min(abs(c), abs(c - 1)) < 0.25 for c in jittered_by), jittered_by


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_retry_due_at_once_finds_its_retry_state_stored_and_ends_failed(app: Celery, kind):
    """The RETRY state is stored before the retry is sent: the retry (countdown 0) sees it
    when it starts, and its FAILURE is the last state, never overwritten by the RETRY of the
    run before (as when the RETRY went with the outcome, after the send: a get() then
    waited for ever, seen with ``retry_jitter`` picking 0 under load)."""
    seen: list[str] = []

    def note(task) -> None:
        seen.append(AsyncResult(task.request.id, app=app).state)

    if kind == "def":
        @app.task(name="paths.at_once", bind=True, max_retries=2)
        def at_once(self):
            note(self)
            raise self.retry(exc=Flaky("again"), countdown=0)
    else:
        @app.task(name="paths.at_once", bind=True, max_retries=2)
        async def at_once(self):
            await asyncio.to_thread(note, self)
            raise self.retry(exc=Flaky("again"), countdown=0)

    with running_worker(app, loop_workers=1, sync_workers=2):
        result = app.tasks["paths.at_once"].delay()
        with pytest.raises(Flaky):
            result.get(timeout=15)
    assert seen[1:] == [states.RETRY, states.RETRY], seen
    assert AsyncResult(result.id, app=app).state == states.FAILURE


# -- retry(throw=False) ----------------------------------------------------------------------


def test_retry_without_throw_sends_the_retry_and_keeps_the_return_value(app: Celery):
    """``retry(throw=False)`` sends the retry at once and returns the Retry; the task goes
    on, and what it returns is stored (SUCCESS). The retry runs (same id, ``retries`` 1),
    and, as upstream, its own return does not overwrite a stored SUCCESS."""
    runs: list[tuple[str, int]] = []
    returned: list[object] = []
    second_may_end = threading.Event()

    @app.task(name="paths.no_throw", bind=True)
    def no_throw(self):
        runs.append((self.request.id, self.request.retries))
        if self.request.retries == 0:
            returned.append(self.retry(countdown=0, throw=False))
            return "first"
        second_may_end.wait(10)
        return "second"

    def seen(task_id: str) -> tuple:
        fresh = AsyncResult(task_id, app=app)  # (a result object caches a ready state)
        return fresh.state, fresh.result

    with running_worker(app, loop_workers=1, sync_workers=2):
        result = no_throw.delay()
        wait_until(lambda: seen(result.id) == (states.SUCCESS, "first"), "the first return")
        wait_until(lambda: len(runs) == 2, "the retry to run")
        assert runs == [(result.id, 0), (result.id, 1)]
        [retry] = returned
        assert isinstance(retry, Retry)
        second_may_end.set()
    # the worker stopped after the retry's end and wrote what it had to write
    assert len(runs) == 2 and seen(result.id) == (states.SUCCESS, "first")
    with valkey.Valkey.from_url(app.conf.broker_url) as raw:
        assert raw.llen(app.conf.task_default_queue) == 0


# -- no result backend -----------------------------------------------------------------------


def test_get_without_a_result_backend_raises_celerys_error_and_the_task_still_runs(url: str):
    app = make_app(url, backend=False)
    ran = threading.Event()

    @app.task(name="paths.plain")
    def plain():
        ran.set()
        return 1

    message = "No result backend is configured"
    try:
        with running_worker(app, loop_workers=1, sync_workers=1):
            result = plain.delay()
            with pytest.raises(NotImplementedError, match=message):
                result.get(timeout=5)
            with pytest.raises(NotImplementedError, match=message):
                asyncio.run(result.aget(timeout=5))
            with pytest.raises(NotImplementedError, match=message):
                result.state  # noqa: B018
            assert ran.wait(10)
        with valkey.Valkey.from_url(url) as raw:
            assert raw.exists(f"celery-task-meta-{result.id}") == 0
    finally:
        app.close()
