"""The beat scheduler without processes: entries from the settings (bad ones skipped with
one line each), the heap's sleep until the next due entry, claims through the leader lease
(a lost lease sends nothing; a run another beat sent is not sent again), catch-up rules,
the SQLite state file, custom scheduler classes, and ``add_periodic_task``."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pytest

from celery import Celery
from celery.beat import PersistentScheduler, ScheduleEntry, Scheduler, Service
from celery.beat.leader import Elector
from celery.beat.scheduler import LostLease
from celery.schedules import crontab, schedule


@pytest.fixture
def app():
    app = Celery("beattest", broker=f"memory://{uuid.uuid4().hex}", set_as_current=False)

    @app.task(name="beattest.add")
    def add(x, y):
        return x + y

    yield app
    app.close()


def queued(app: Celery) -> int:
    return app.portal.call(app.transport.queue_length("celery"))


def test_bad_entries_are_skipped_with_one_line_each(app, caplog):
    app.conf.beat_schedule = {
        "good": {"task": "beattest.add", "schedule": 10.0, "args": (1, 2)},
        "unknown": {"task": "beattest.nope", "schedule": 10.0},
        "not-a-dict": ["beattest.add", 10],
        "bad-schedule": {"task": "beattest.add", "schedule": "every minute"},
        "bool-schedule": {"task": "beattest.add", "schedule": True},
        "extra-key": {"task": "beattest.add", "schedule": 1, "kwarg": {}},
    }
    with caplog.at_level(logging.ERROR, "celery.beat"):
        scheduler = Scheduler(app=app)
    assert set(scheduler.schedule) == {"good"}
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 5
    assert any("'unknown' skipped: task 'beattest.nope' is not registered" in m for m in skipped)
    assert any("'bad-schedule' skipped: bad cron expression" in m for m in skipped)
    assert any("'extra-key' skipped: unknown key(s) 'kwarg'" in m for m in skipped)
    app.conf.beat_unregistered_tasks = "send"
    scheduler = Scheduler(app=app)
    assert "unknown" in scheduler.schedule


def test_tick_sends_what_is_due_and_sleeps_until_the_next_entry(app):
    app.conf.beat_schedule = {
        "soon": {"task": "beattest.add", "schedule": 0.5, "args": (1, 1)},
        "later": {"task": "beattest.add", "schedule": 50.0, "args": (2, 2)},
    }
    scheduler = Scheduler(app=app, max_interval=30)
    first = scheduler.tick()
    assert 0.2 < first <= 0.5  # "soon" is not due yet: sleep until it is
    assert queued(app) == 0
    import time

    time.sleep(first)
    assert scheduler.tick() == pytest.approx(0.5, abs=0.1)
    assert queued(app) == 1
    assert scheduler.schedule["soon"].total_run_count == 1
    assert scheduler.schedule["later"].total_run_count == 0
    # Nothing due within max_interval: sleep max_interval, not until "later".
    scheduler.max_interval = 0.05
    assert scheduler.tick() == pytest.approx(0.05)


def test_a_cron_entry_is_sent_at_its_minute(app):
    now = [dt.datetime(2026, 3, 1, 9, 59, 30, tzinfo=dt.UTC)]
    cron = crontab(minute=0, hour=10, nowfun=lambda: now[0], app=app)
    app.conf.beat_schedule = {"ten": {"task": "beattest.add", "schedule": cron, "args": (1, 2)}}
    scheduler = Scheduler(app=app)
    assert scheduler.schedule["ten"].last_run_at == now[0]
    assert scheduler.tick() == pytest.approx(30, abs=0.5)
    now[0] = dt.datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=dt.UTC)
    scheduler._heap = None  # the fake clock moved, not time.time()
    scheduler.tick()
    assert queued(app) == 1
    assert scheduler.schedule["ten"].last_run_at == now[0]


class _Lease:
    """A lease whose answers a test sets."""

    token = 1

    def __init__(self, claim):
        self.answer = claim
        self.claims = []

    async def claim(self, entry, run_at):
        self.claims.append((entry, run_at))
        return self.answer

    async def renew(self, ttl):
        return True

    async def acquire(self, holder, ttl):
        return True

    async def release(self):
        pass

    async def runs(self):
        return {}

    async def holder(self):
        return "me"


def _leading(app, lease) -> Elector:
    elector = Elector(app, lease, ttl=5)
    assert elector.step()
    return elector


def test_a_lost_lease_sends_nothing_and_leaves_the_entry_as_it_was(app):
    from celery.transport.lease import Claim

    app.conf.beat_schedule = {"e": {"task": "beattest.add", "schedule": 0.01, "args": (1, 1)}}
    scheduler = Scheduler(app=app)
    before = scheduler.schedule["e"]
    scheduler.elector = _leading(app, _Lease((Claim.LOST, None)))
    import time

    time.sleep(0.02)
    with pytest.raises(LostLease):
        scheduler.tick()
    assert queued(app) == 0
    assert scheduler.schedule["e"] is before
    assert not scheduler.elector.leading


class _Unreachable(_Lease):
    async def claim(self, entry, run_at):
        from celery.exceptions import ConnectionLost

        raise ConnectionLost("the broker is down")


def test_a_claim_that_fails_keeps_the_entry_scheduled(app):
    from celery.exceptions import ConnectionLost

    app.conf.beat_schedule = {"e": {"task": "beattest.add", "schedule": 0.01, "args": (1, 1)}}
    scheduler = Scheduler(app=app)
    scheduler.elector = _leading(app, _Unreachable(None))
    import time

    time.sleep(0.02)
    with pytest.raises(ConnectionLost):
        scheduler.tick()
    assert queued(app) == 0 and scheduler.schedule["e"].total_run_count == 0
    scheduler.elector = None  # the broker is back (no lease here): the entry runs
    time.sleep(0.02)
    scheduler.tick()
    assert queued(app) == 1


def test_a_run_another_beat_sent_is_not_sent_again(app):
    from celery.transport.lease import Claim

    app.conf.beat_schedule = {"e": {"task": "beattest.add", "schedule": 0.01, "args": (1, 1)}}
    scheduler = Scheduler(app=app)
    later = dt.datetime.now(dt.UTC).timestamp() + 0.5
    scheduler.elector = _leading(app, _Lease((Claim.ALREADY, later)))
    import time

    time.sleep(0.02)
    scheduler.tick()
    assert queued(app) == 0
    assert scheduler.schedule["e"].last_run_at.timestamp() == pytest.approx(later)


def test_on_elected_takes_later_runs_and_skips_missed_runs_without_catch_up(app):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    app.conf.beat_schedule = {
        "caught": {"task": "beattest.add", "schedule": 60.0},
        "skipped": {"task": "beattest.add", "schedule": 60.0, "catch_up": False},
        "shared": {"task": "beattest.add", "schedule": 60.0},
    }
    scheduler = Scheduler(app=app)
    for name in scheduler.schedule:
        scheduler.schedule[name] = scheduler.schedule[name]._copy(last_run_at=past)
    recent = dt.datetime.now(dt.UTC).timestamp() - 10
    scheduler.on_elected({"shared": recent, "caught": past.timestamp() - 100})
    assert scheduler.is_due(scheduler.schedule["caught"])[0]
    assert not scheduler.is_due(scheduler.schedule["skipped"])[0]
    assert scheduler.schedule["shared"].last_run_at.timestamp() == pytest.approx(recent)


def test_state_file_keeps_runs_and_forgets_removed_entries(app, tmp_path):
    path = str(tmp_path / "state")
    app.conf.beat_schedule = {
        "a": {"task": "beattest.add", "schedule": 0.01},
        "b": {"task": "beattest.add", "schedule": 100.0},
    }
    first = PersistentScheduler(app=app, schedule_filename=path)
    import time

    time.sleep(0.02)
    first.tick()
    ran = first.schedule["a"]
    assert ran.total_run_count == 1
    first.close()
    app.conf.beat_schedule = {"a": {"task": "beattest.add", "schedule": 5.0}}
    second = PersistentScheduler(app=app, schedule_filename=path)
    assert set(second.schedule) == {"a"}
    assert second.schedule["a"].total_run_count == 1
    assert second.schedule["a"].last_run_at.timestamp() == pytest.approx(ran.last_run_at.timestamp())
    assert second.schedule["a"].schedule == schedule(5.0)  # the settings' schedule wins
    second.close()
    app.conf.timezone = "Europe/Paris"  # another zone: runs start afresh, as in Celery
    third = PersistentScheduler(app=app, schedule_filename=path)
    assert third.schedule["a"].total_run_count == 0
    third.close()


def test_an_unwritable_state_file_is_one_clear_error(app, tmp_path):
    from celery.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="cannot"):
        PersistentScheduler(app=app, schedule_filename=str(tmp_path / "missing" / "state"))


class RecordingScheduler(Scheduler):
    """A scheduler in the style of a database one: its own schedule, its own sync."""

    synced = 0

    def setup_schedule(self):
        self.data = {"own": self.Entry(name="own", task="beattest.add", schedule=0.01,
                                       args=(5, 5), app=self.app)}

    def sync(self):
        type(self).synced += 1


def test_a_custom_scheduler_class_by_name(app, tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("custom_beat_sched")
    module.RecordingScheduler = RecordingScheduler
    monkeypatch.setitem(sys.modules, "custom_beat_sched", module)
    from celery import signals

    started = []
    signals.beat_init.connect(lambda sender, **kw: started.append(sender), weak=False,
                              dispatch_uid="test-beat-init")
    service = Service(app, scheduler_cls="custom_beat_sched:RecordingScheduler",
                      schedule_filename=str(tmp_path / "x"))
    scheduler = service.scheduler
    assert isinstance(scheduler, RecordingScheduler)
    import threading
    import time

    thread = threading.Thread(target=service.start)
    thread.start()
    deadline = time.time() + 10
    while queued(app) < 2 and time.time() < deadline:
        time.sleep(0.01)
    service.stop(wait=True)
    thread.join(5)
    signals.beat_init.disconnect(dispatch_uid="test-beat-init")
    assert queued(app) >= 2
    assert RecordingScheduler.synced >= 1
    assert started == [service]


def test_add_periodic_task_from_on_after_configure(app):
    @app.on_after_configure.connect
    def setup(sender, **kwargs):
        sender.add_periodic_task(10.0, app.tasks["beattest.add"].s(1, 2), name="named")
        sender.add_periodic_task(crontab(minute=5), app.tasks["beattest.add"].s(3, 4),
                                 queue="q")

    scheduler = Scheduler(app=app)
    named = scheduler.schedule["named"]
    assert (named.task, named.args, named.schedule) == ("beattest.add", (1, 2), schedule(10.0))
    (other,) = [e for n, e in scheduler.schedule.items() if n != "named"]
    assert other.options == {"queue": "q"} and other.args == (3, 4)


def test_entry_next_and_update_keep_celerys_shape(app):
    entry = ScheduleEntry(name="e", task="beattest.add", schedule=5, args=(1,), app=app)
    after = entry.next()
    assert after.total_run_count == 1 and after.last_run_at >= entry.last_run_at
    assert after.schedule == schedule(5) and after.args == (1,)
    entry.update(ScheduleEntry(name="e", task="beattest.add", schedule=7, kwargs={"a": 1}, app=app))
    assert entry.schedule == schedule(7) and entry.kwargs == {"a": 1}
    assert dict(entry)["name"] == "e"


def test_stop_from_a_signal_handler_wakes_the_sleep_at_once(app, tmp_path):
    """``celery beat`` stops from its SIGTERM handler: stop() there takes no lock (an
    Event.set could deadlock against the main thread's Event.wait) and wakes the sleep,
    which here would otherwise last the whole 60 s max interval."""
    import signal
    import time

    app.conf.beat_schedule = {"rare": {"task": "beattest.add", "schedule": 3600.0,
                                       "args": (1, 1)}}
    service = Service(app, max_interval=60, schedule_filename=str(tmp_path / "s"))
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: service.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        started = time.monotonic()
        service.start()
        took = time.monotonic() - started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert took < 10, took
    assert service._is_stopped.is_set()
