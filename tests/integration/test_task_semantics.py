"""How one task runs (issue #4 so far): retries, ETA/countdown, expiry, Ignore/Reject,
STARTED, and signals, for ``def`` and ``async def`` tasks, through a real worker."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import pytest

from celery import Celery, signals, states
from celery.exceptions import Ignore, MaxRetriesExceededError, Reject, TaskRevokedError

from ..conftest import flushed_redis_url
from .worker_harness import running_worker

REDIS_DB = 1


class Flaky(Exception):
    """Raised by the tasks below until they have been retried enough."""


def make_app(broker: str | None = None, backend: str | None = None, **conf) -> Celery:
    name = uuid.uuid4().hex
    app = Celery("sem", broker=broker or f"memory://{name}",
                 backend=backend or f"cache+memory://{name}", **conf)
    attempts: dict[str, list[float]] = {}
    app.attempts = attempts  # type: ignore[attr-defined]
    lock = threading.Lock()

    def note(key: str) -> int:
        with lock:
            attempts.setdefault(key, []).append(time.monotonic())
            return len(attempts[key])

    @app.task(name="sem.retry_twice", bind=True, max_retries=5)
    def retry_twice(self, key, countdown=0.05):
        if note(key) <= 2:
            raise self.retry(exc=Flaky(key), countdown=countdown)
        return [self.request.retries, key]

    @app.task(name="sem.aretry_twice", bind=True, max_retries=5)
    async def aretry_twice(self, key, countdown=0.05):
        await asyncio.sleep(0)
        if note(key) <= 2:
            raise self.retry(exc=Flaky(key), countdown=countdown)
        return [self.request.retries, key]

    @app.task(name="sem.always_retry", bind=True, max_retries=2, default_retry_delay=0.01)
    def always_retry(self, key, with_exc=True):
        note(key)
        raise self.retry(exc=Flaky(key) if with_exc else None)

    @app.task(name="sem.autoretry", autoretry_for=(Flaky,), dont_autoretry_for=(KeyError,),
              retry_kwargs={"max_retries": 2, "countdown": 0.01})
    async def autoretry(key, kind="flaky"):
        note(key)
        raise (Flaky if kind == "flaky" else KeyError)(key)

    @app.task(name="sem.ignore")
    def ignore(key):
        note(key)
        raise Ignore()

    @app.task(name="sem.reject", acks_late=True)
    async def reject(key, requeue=False):
        if note(key) == 1 and requeue:
            raise Reject("try again", requeue=True)
        if not requeue:
            raise Reject("no", requeue=False)
        return "second time"

    @app.task(name="sem.late_fail", acks_late=True, acks_on_failure_or_timeout=False)
    def late_fail(key):
        note(key)
        raise ValueError(key)

    @app.task(name="sem.late_fail_acked", acks_late=True)
    def late_fail_acked(key):
        note(key)
        raise ValueError(key)

    @app.task(name="sem.when")
    def when(key):
        note(key)
        return time.time()

    @app.task(name="sem.limited", rate_limit="10/s")
    async def limited(key):
        note(key)

    @app.task(name="sem.limited_sync", rate_limit="600/m")
    def limited_sync(key):
        note(key)

    @app.task(name="sem.soft_async", soft_time_limit=0.3)
    async def soft_async(key, clean_up=False):
        note(key)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if clean_up:
                return "cleaned up"
            raise
        return "never"

    @app.task(name="sem.stubborn_async", time_limit=0.5)
    async def stubborn_async(key):
        note(key)
        for _ in range(3):  # swallows the first cancellations
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
        return "never"

    @app.task(name="sem.soft_sync", bind=True, soft_time_limit=0.3)
    def soft_sync(self, key):
        note(key)
        while True:
            time.sleep(0.02)
            self.checkpoint()

    @app.task(name="sem.stuck_sync", time_limit=0.4)
    def stuck_sync(key, seconds=2.0):
        note(key)
        time.sleep(seconds)
        return "late"

    @app.task(name="sem.slow", track_started=True)
    async def slow(seconds):
        await asyncio.sleep(seconds)
        return "done"

    return app


def attempts(app: Celery, key: str) -> list[float]:
    return app.attempts.get(key, [])  # type: ignore[attr-defined]


@pytest.fixture
def app():
    app = make_app()
    with running_worker(app, loop_workers=1, loop_concurrency=20, sync_workers=2):
        yield app
    app.close()


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sem.retry_twice", "sem.aretry_twice"])
def test_retry_runs_again_with_the_same_id_and_more_retries(app, name):
    result = app.send_task(name, ("k-" + name,))
    assert result.get(timeout=10) == [2, "k-" + name]
    assert len(attempts(app, "k-" + name)) == 3
    assert result.state == states.SUCCESS


def test_retry_state_is_stored_while_waiting(app):
    result = app.send_task("sem.retry_twice", ("slow-retry", 1.0))
    deadline = time.monotonic() + 5
    while result.state != states.RETRY and time.monotonic() < deadline:
        time.sleep(0.02)
    assert result.state == states.RETRY
    assert isinstance(result.info, Flaky)
    assert result.get(timeout=10) == [2, "slow-retry"]


def test_countdown_of_a_retry_is_honoured(app):
    key = "countdown"
    app.send_task("sem.retry_twice", (key, 0.4)).get(timeout=10)
    first, second, third = attempts(app, key)
    assert second - first >= 0.35 and third - second >= 0.35


@pytest.mark.parametrize("name", ["sem.retry_twice", "sem.aretry_twice"])
def test_a_retry_that_cannot_be_sent_fails_the_task(name):
    from celery.exceptions import ConnectionLost

    app = make_app()
    transport = app.transport
    real_publish, real_apublish = transport.publish, transport.apublish

    def refuse_retries(message):
        if message.headers.get("retries"):
            raise ConnectionLost("broker went away (injected)")

    def publish(message):
        refuse_retries(message)
        real_publish(message)

    async def apublish(message):
        refuse_retries(message)
        await real_apublish(message)

    transport.publish, transport.apublish = publish, apublish  # inject the fault
    with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1):
        result = app.send_task(name, ("unsent-" + name,))
        with pytest.raises(ConnectionLost, match="injected"):
            result.get(timeout=10)
    assert len(attempts(app, "unsent-" + name)) == 1
    app.close()


def test_retries_running_out_reraise_the_original_exception(app):
    result = app.send_task("sem.always_retry", ("out",))
    with pytest.raises(Flaky):
        result.get(timeout=10)
    assert len(attempts(app, "out")) == 3  # the first run and max_retries=2 retries


def test_retries_running_out_without_exc_raise_max_retries_exceeded(app):
    result = app.send_task("sem.always_retry", ("out2", False))
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=10)


def test_autoretry_for_an_async_task(app):
    with pytest.raises(Flaky):
        app.send_task("sem.autoretry", ("auto",)).get(timeout=10)
    assert len(attempts(app, "auto")) == 3
    with pytest.raises(KeyError):  # dont_autoretry_for
        app.send_task("sem.autoretry", ("auto-no", "key")).get(timeout=10)
    assert len(attempts(app, "auto-no")) == 1


def test_retry_signal_and_eager_retry():
    seen: list[tuple] = []

    def on_retry(sender=None, request=None, reason=None, einfo=None, **kwargs):
        seen.append((sender.name, request.id, type(reason.exc).__name__, "Traceback" in einfo.traceback))

    signals.task_retry.connect(on_retry)
    try:
        app = make_app()
        with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1):
            result = app.send_task("sem.retry_twice", ("sig",))
            result.get(timeout=10)
        assert seen == [("sem.retry_twice", result.id, "Flaky", True)] * 2
        eager = make_app(task_always_eager=True)
        assert eager.tasks["sem.retry_twice"].delay("eager").get() == [2, "eager"]
        assert len(attempts(eager, "eager")) == 3
    finally:
        signals.task_retry.disconnect(on_retry)


# -- ETA, countdown and expiry ----------------------------------------------------------------


def test_countdown_delays_the_run(app):
    sent = time.time()
    ran_at = app.tasks["sem.when"].apply_async(("eta",), countdown=0.6).get(timeout=10)
    assert ran_at - sent >= 0.55


def test_a_future_task_does_not_hold_up_others(app):
    later = app.tasks["sem.when"].apply_async(("later",), countdown=1.5)
    now = app.tasks["sem.when"].apply_async(("now",))
    assert now.get(timeout=5) < later.get(timeout=10) - 1.0


def test_expired_task_never_runs_and_is_revoked(app):
    revoked: list[tuple] = []

    def on_revoked(sender=None, request=None, expired=None, **kwargs):
        revoked.append((sender.name, request.id, expired))

    signals.task_revoked.connect(on_revoked)
    try:
        result = app.tasks["sem.when"].apply_async(("expired",), expires=-1)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
        assert result.state == states.REVOKED
        assert attempts(app, "expired") == []
        assert revoked == [("sem.when", result.id, True)]
    finally:
        signals.task_revoked.disconnect(on_revoked)


def test_eta_task_held_by_a_stopped_worker_runs_on_the_next_one():
    url = flushed_redis_url(REDIS_DB)
    app = make_app(broker=url, backend=url)
    with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1) as worker:
        result = app.tasks["sem.when"].apply_async(("restart",), countdown=2.0)
        deadline = time.monotonic() + 5
        while worker._consumer is None or worker._consumer.eta_held == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert app.portal.call(app.transport.queue_length("celery")) == 1  # given back, unacked
    assert attempts(app, "restart") == []
    with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1):
        ran_at = result.get(timeout=15)
    assert attempts(app, "restart") and ran_at >= time.time() - 15
    app.close()


@pytest.mark.parametrize("broker", ["memory", "redis", "filesystem"])
def test_a_far_eta_is_deferred_out_of_the_worker_and_runs_on_time(broker, tmp_path):
    url = flushed_redis_url(REDIS_DB) if broker == "redis" else None
    # visibility timeout 2 s: the worker holds ETAs up to 1 s ahead, defers the others
    options: dict = {"visibility_timeout": 2}
    if broker == "filesystem":
        url = "filesystem://"
        options.update(data_folder_in=str(tmp_path / "q"), data_folder_out=str(tmp_path / "q"))
    app = make_app(broker=url, backend=None if broker == "filesystem" else url,
                   broker_transport_options=options)
    with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1) as worker:
        sent = time.time()
        result = app.tasks["sem.when"].apply_async(("far",), countdown=3.0)
        time.sleep(1.0)
        consumer = worker._consumer
        assert consumer is not None and consumer.eta_held == 0 and not attempts(app, "far")
        if broker == "redis":
            import valkey

            raw = valkey.Valkey.from_url(url)
            assert raw.zcard("celery-asyncio.delayed") == 1 and raw.hlen("unacked") == 0
            raw.close()
        if broker == "filesystem":
            assert len(os.listdir(tmp_path / "q" / ".delayed")) == 1
            assert os.listdir(tmp_path / "q" / ".reserved") == []
        assert result.get(timeout=10) >= sent + 2.9
        assert len(attempts(app, "far")) == 1
    app.close()


def test_acks_late_failures_are_acked_unless_acks_on_failure_is_off(app):
    with pytest.raises(ValueError):
        app.send_task("sem.late_fail_acked", ("acked",)).get(timeout=10)
    with pytest.raises(ValueError):
        app.send_task("sem.late_fail", ("rejected",)).get(timeout=10)
    deadline = time.monotonic() + 5
    while not app.transport.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.01)
    # only the second one was rejected (dead-lettered); the first was acked
    assert [reason for _, _, reason in app.transport.dead_letters()] == ["rejected"]
    assert len(attempts(app, "acked")) == len(attempts(app, "rejected")) == 1


# -- time limits ------------------------------------------------------------------------------


def test_async_soft_time_limit_cancels_at_the_await(app):
    from celery.exceptions import SoftTimeLimitExceeded

    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        app.send_task("sem.soft_async", ("soft-a",)).get(timeout=10)
    assert time.monotonic() - started < 5
    # a task that cleans up and returns is a success, as when catching SoftTimeLimitExceeded
    assert app.send_task("sem.soft_async", ("soft-b", True)).get(timeout=10) == "cleaned up"


def test_sync_soft_time_limit_at_a_checkpoint(app):
    from celery.exceptions import SoftTimeLimitExceeded

    with pytest.raises(SoftTimeLimitExceeded):
        app.send_task("sem.soft_sync", ("soft-s",)).get(timeout=10)


def test_async_hard_time_limit_fails_the_task_and_frees_the_slot(app):
    from celery.exceptions import TimeLimitExceeded

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        app.send_task("sem.stubborn_async", ("hard-a",)).get(timeout=10)
    assert time.monotonic() - started < 5
    assert isinstance(app.tasks["sem.when"].delay("after-hard-a").get(timeout=5), float)


def test_stuck_sync_thread_is_replaced_so_capacity_is_kept():
    from celery.exceptions import TimeLimitExceeded

    app = make_app()
    with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1) as worker:
        started = time.monotonic()
        stuck = app.send_task("sem.stuck_sync", ("stuck", 3.0))
        with pytest.raises(TimeLimitExceeded):
            stuck.get(timeout=10)
        assert time.monotonic() - started < 2.5  # failed at its limit, not when it returned
        # the only sync thread is still busy in the stuck task, yet sync tasks run
        assert isinstance(app.tasks["sem.when"].delay("after-stuck").get(timeout=5), float)
        executor = worker._consumer.lanes[False].executor
        assert len([t for t in executor._threads if t.is_alive()]) == 2
        deadline = time.monotonic() + 10
        while len([t for t in executor._threads if t.is_alive()]) > 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stuck.state == states.FAILURE  # its late return changed nothing
    app.close()


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sem.limited", "sem.limited_sync"])
def test_rate_limit_spaces_runs_without_holding_up_other_tasks(app, name):
    key = "rl-" + name
    limited = [app.send_task(name, (key,)) for _ in range(10)]
    others = [app.tasks["sem.when"].delay(f"free-{i}") for i in range(20)]
    for r in others:
        r.get(timeout=10)
    # the other tasks all ran while the limited ones were still being spaced out
    assert len(attempts(app, key)) < 10
    for r in limited:
        r.get(timeout=10)
    runs = sorted(attempts(app, key))
    assert len(runs) == 10
    # 10 per second: the limiter releases them 0.1 s apart. The runs are timed where they
    # start, on a thread that may start one late by a scheduling delay (up to 0.05 s here,
    # which a loaded free-threaded build sees) but never early, so any k runs span at least
    # (k - 1) * 0.1 s less that delay.
    for i in range(10):
        for j in range(i + 1, 10):
            assert runs[j] - runs[i] >= (j - i) * 0.1 - 0.05, (i, j, runs)


def test_parse_rate():
    from celery.exceptions import ImproperlyConfigured
    from celery.worker.ratelimit import parse_rate

    assert parse_rate("10/s") == 10 and parse_rate("120/m") == 2 and parse_rate("3600/h") == 1
    assert parse_rate(5) == 5 and parse_rate(None) is None and parse_rate("0/s") is None
    with pytest.raises(ImproperlyConfigured):
        parse_rate("fast")


# -- Ignore, Reject, STARTED ---------------------------------------------------------------------


def test_ignore_stores_nothing_and_acks(app):
    result = app.send_task("sem.ignore", ("ign",))
    deadline = time.monotonic() + 5
    while not attempts(app, "ign") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert result.state == states.PENDING
    assert len(attempts(app, "ign")) == 1
    assert app.portal.call(app.transport.queue_length("celery")) == 0


def test_reject_with_requeue_runs_again_and_without_drops(app):
    assert app.send_task("sem.reject", ("rq", True)).get(timeout=10) == "second time"
    assert len(attempts(app, "rq")) == 2
    dropped = app.send_task("sem.reject", ("drop",))
    deadline = time.monotonic() + 5
    while not app.transport.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [reason for _, _, reason in app.transport.dead_letters()] == ["rejected"]
    assert dropped.state == states.PENDING


def test_track_started_shows_started_while_running(app):
    result = app.send_task("sem.slow", (0.5,))
    deadline = time.monotonic() + 5
    while result.state != states.STARTED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result.state == states.STARTED
    assert result.info["hostname"] and result.info["pid"]
    assert result.get(timeout=10) == "done"


# -- signals --------------------------------------------------------------------------------------


def test_task_signals_carry_celerys_arguments():
    seen: list[tuple] = []
    lock = threading.Lock()

    def record(name):
        def receiver(sender=None, **kwargs):
            with lock:
                seen.append((name, sender, kwargs))
        return receiver

    receivers = {sig: record(sig.name) for sig in (
        signals.before_task_publish, signals.after_task_publish, signals.task_received,
        signals.task_prerun, signals.task_postrun, signals.task_success, signals.task_failure,
        signals.task_unknown)}
    for sig, receiver in receivers.items():
        sig.connect(receiver)
    try:
        app = make_app()
        with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1):
            ok = app.send_task("sem.when", ("sig-ok",))
            ok.get(timeout=10)
            bad = app.send_task("sem.autoretry", ("sig-bad", "key"))
            with pytest.raises(KeyError):
                bad.get(timeout=10)
            app.send_task("sem.nope", ())
            deadline = time.monotonic() + 5
            while not any(n == "task_unknown" for n, _, _ in seen) and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        for sig, receiver in receivers.items():
            sig.disconnect(receiver)
    by_name: dict[str, list[tuple]] = {}
    for name, sender, kwargs in seen:
        by_name.setdefault(name, []).append((sender, kwargs))
    before = [k for s, k in by_name["before_task_publish"] if s == "sem.when"][0]
    assert before["headers"]["id"] == ok.id and before["routing_key"] == "celery"
    assert before["body"][0] == ["sig-ok"]
    assert any(s == "sem.when" for s, _ in by_name["after_task_publish"])
    assert any(k["request"].id == ok.id for _, k in by_name["task_received"])
    prerun = [k for s, k in by_name["task_prerun"] if k["task_id"] == ok.id][0]
    assert prerun["task"].name == "sem.when" and prerun["args"] == ["sig-ok"]
    postrun = [k for s, k in by_name["task_postrun"] if k["task_id"] == ok.id][0]
    assert postrun["state"] == states.SUCCESS and isinstance(postrun["retval"], float)
    assert [k["result"] for s, k in by_name["task_success"] if s.name == "sem.when"]
    failure = [k for s, k in by_name["task_failure"] if k["task_id"] == bad.id][0]
    assert isinstance(failure["exception"], KeyError) and "KeyError" in failure["einfo"].traceback
    unknown = by_name["task_unknown"][0][1]
    assert unknown["name"] == "sem.nope"


def test_signal_sender_filter_and_a_failing_receiver_does_not_break_the_task():
    calls: list[str] = []

    @signals.task_success.connect(sender="sem.when")
    def only_when(sender=None, **kwargs):
        calls.append(sender.name)
        raise RuntimeError("a broken receiver")

    try:
        app = make_app()
        with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1):
            assert app.send_task("sem.retry_twice", ("filter",)).get(timeout=10)
            assert isinstance(app.send_task("sem.when", ("filter",)).get(timeout=10), float)
        assert calls == ["sem.when"]
    finally:
        signals.task_success.disconnect(only_when, sender="sem.when")


# -- priority and routing ------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["memory", "sqlite", "redis"])
def test_a_high_priority_task_overtakes_a_backlog(broker, tmp_path):
    url = {"memory": None, "sqlite": f"sqlite:///{tmp_path}/b.db",
           "redis": flushed_redis_url(REDIS_DB)}[broker]
    app = make_app(broker=url, worker_prefetch_multiplier=1)
    when = app.tasks["sem.when"]
    backlog = [when.apply_async((f"low-{i}",), priority=9) for i in range(30)]
    urgent = when.apply_async(("urgent",), priority=0)
    top = when.apply_async(("top",), priority=255)  # accepted: kombu's steps clamp it
    with running_worker(app, loop_workers=0, sync_workers=1):
        ran_urgent = urgent.get(timeout=20)
        ran_backlog = [r.get(timeout=20) for r in backlog]
        top.get(timeout=20)
    assert sum(t < ran_urgent for t in ran_backlog) <= 1  # at most the one prefetched first
    app.close()


def test_routes_send_tasks_to_queues_that_only_their_workers_read():
    app = make_app(task_routes={"sem.w*": {"queue": "timing"}, "sem.ignore": "ignored"})
    when = app.tasks["sem.when"]
    with running_worker(app, queues=["celery"], loop_workers=1, loop_concurrency=5,
                        sync_workers=1):
        routed = when.delay("routed")
        explicit = app.tasks["sem.retry_twice"].apply_async(("explicit",), queue="timing")
        deadline = time.monotonic() + 10  # (delay() may return before Redis has it)
        while app.portal.call(app.transport.queue_length("timing")) != 2:
            assert time.monotonic() < deadline, "the routed tasks never reached their queue"
            time.sleep(0.01)
        assert not attempts(app, "routed") and not attempts(app, "explicit")
    with running_worker(app, queues=["timing"], loop_workers=1, loop_concurrency=5,
                        sync_workers=1):
        assert isinstance(routed.get(timeout=10), float)
        assert explicit.get(timeout=10) == [2, "explicit"]  # retries go back to its queue
    app.close()


@pytest.mark.parametrize("strategy", ["priority", "round_robin"])
def test_queue_order_strategy_of_a_worker_reading_two_queues(strategy):
    # A backlog in each of two queues, one task at a time (prefetch 1, one sync thread):
    # "priority" drains the first queue named before touching the second; "round_robin"
    # alternates between them.
    url = flushed_redis_url(REDIS_DB)
    app = make_app(broker=url, worker_prefetch_multiplier=1,
                   broker_transport_options={"queue_order_strategy": strategy})
    when = app.tasks["sem.when"]
    first = [when.apply_async((f"a{i}",), queue="qa") for i in range(8)]
    second = [when.apply_async((f"b{i}",), queue="qb") for i in range(8)]
    with running_worker(app, queues=["qa", "qb"], loop_workers=0, sync_workers=1):
        ran = sorted((r.get(timeout=20), q) for q, rs in (("a", first), ("b", second)) for r in rs)
    order = "".join(q for _, q in ran)
    if strategy == "priority":
        assert order == "a" * 8 + "b" * 8
    else:
        assert order.count("ab") + order.count("ba") >= 10, order  # interleaved, not in runs
    app.close()
