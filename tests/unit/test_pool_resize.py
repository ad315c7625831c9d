"""Resizing while running (worker/pool.py): the sync threads grow at once and shrink only
as tasks end, every request runs once, the lane's view follows, bad arguments are refused
with a reason, and the autoscaler grows under a backlog and shrinks after the keepalive."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

from celery.worker.executor.threads import ThreadExecutor
from celery.worker.lanes import Lane
from celery.worker.pool import Pool, prefetch_window

from .executor_doubles import request


def live(ex: ThreadExecutor) -> int:
    with ex._lock:
        return len(ex._threads)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Gauge:
    """Counts bodies running at once; each blocks until ``release``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.gate = threading.Event()

    def body(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        self.gate.wait(10)
        with self.lock:
            self.now -= 1


def test_growing_runs_the_waiting_requests_on_new_threads_at_once(run):
    ex, rec = run(1, 3)
    barrier = threading.Barrier(3, timeout=5)  # broken unless three run together
    ex.submit(0, [request(n, barrier.wait) for n in range(3)])
    ex.resize(3)
    assert rec.all_done.wait(10)
    assert ex.starts == [3] and ex.groups == [12]
    assert len({thread for _, thread in rec.done}) == 3


def test_a_pool_grown_from_no_thread_runs_what_waited(run):
    ex, rec = run(0, 5)
    ex.submit(0, [request(n) for n in range(5)])
    time.sleep(0.05)
    assert not rec.done
    ex.resize(2)
    assert rec.all_done.wait(5)


def test_shrinking_stops_idle_threads_now(run):
    ex, rec = run(4, 300)
    ex.resize(1)
    wait_until(lambda: live(ex) == 1)
    for start in range(0, 300, 50):
        ex.submit(0, [request(n) for n in range(start, start + 50)])
    assert rec.all_done.wait(10)
    assert sorted(i for i, _ in rec.done) == sorted(f"r{n}" for n in range(300))
    assert len({thread for _, thread in rec.done}) == 1


def test_shrinking_lets_busy_threads_finish_their_task_and_runs_the_rest_once(run):
    gauge = Gauge()
    ex, rec = run(4, 24)
    ex.submit(0, [request(n, gauge.body) for n in range(24)])
    wait_until(lambda: gauge.now == 4)
    ex.resize(2)
    assert gauge.now == 4  # nothing interrupted
    gauge.peak = 0
    gauge.gate.set()
    assert rec.all_done.wait(10)
    assert sorted(i for i, _ in rec.done) == sorted(f"r{n}" for n in range(24))
    wait_until(lambda: live(ex) == 2)
    assert ex.size == 2 and ex.starts == [2]


def test_growing_while_a_shrink_is_pending_keeps_the_threads(run):
    gauge = Gauge()
    ex, rec = run(3, 3)
    ex.submit(0, [request(n, gauge.body) for n in range(3)])
    wait_until(lambda: gauge.now == 3)
    ex.resize(1)
    ex.resize(3)  # the two due to exit stay instead: no thread started
    assert live(ex) == 3 and ex._excess == 0
    gauge.gate.set()
    assert rec.all_done.wait(5)
    time.sleep(0.05)
    assert live(ex) == 3


def test_a_thread_abandoned_while_a_shrink_is_pending_counts_as_one_leaving(run):
    gauge = Gauge()
    ex, rec = run(2, 2)
    reqs = [request(n, gauge.body) for n in range(2)]
    ex.submit(0, reqs)
    wait_until(lambda: gauge.now == 2)
    ex.resize(1)
    ex.abandon(reqs[0], "terminated")  # no replacement: the pool is shrinking anyway
    assert ex._excess == 0 and live(ex) == 2
    gauge.gate.set()
    assert rec.all_done.wait(5)
    wait_until(lambda: live(ex) == 1)
    ex.submit(0, [request(9)])
    wait_until(lambda: len(rec.done) == 3)


def test_a_shrink_and_growth_cycle_under_a_burst_runs_every_request_once(run):
    ex, rec = run(4, 3000)
    for start in range(0, 3000, 100):
        ex.submit(0, [request(n) for n in range(start, start + 100)])
        ex.resize(1 + start // 100 % 6)
    assert rec.all_done.wait(20)
    assert sorted(i for i, _ in rec.done) == sorted(f"r{n}" for n in range(3000))


def test_a_negative_size_is_refused(run):
    ex, _ = run(1, 0)
    with pytest.raises(ValueError):
        ex.resize(-1)


# -- the lane's view ----------------------------------------------------------------------


class FakeExecutor:
    def __init__(self, threads: int) -> None:
        self.groups = [threads * 4]
        self.starts = [threads]
        self.size = threads
        self.submitted: list = []

    def submit(self, group, batch) -> None:
        self.submitted.extend(batch)

    def resize(self, size: int) -> None:
        self.size, self.groups[0], self.starts[0] = size, size * 4, size


class Req:
    """A request as the lane sees it (hashed by identity, as Request is)."""

    def __init__(self, n: int) -> None:
        self.id, self.slot = f"r{n}", 0


def req(n: int) -> Req:
    return Req(n)


def test_the_lane_starts_waiting_requests_after_growth_and_none_while_above_the_new_size():
    ex = FakeExecutor(2)
    lane = Lane(ex)  # type: ignore[arg-type]
    started: list = []
    reqs = [req(n) for n in range(8)]
    lane.hand_over(0, reqs, started.append)
    assert started == reqs[:2] and lane.waiting == [6]
    ex.resize(4)
    lane.rebalance(started.append)
    assert started == reqs[:4] and lane.waiting == [4]
    ex.resize(1)  # 4 run; the next three to end free no thread

    def settle(r) -> bool:
        del lane.running[r]  # as the consumer does first
        return lane.settle(r, started.append)

    for r in reqs[:3]:
        assert settle(r)
    assert started == reqs[:4]
    assert settle(reqs[3])  # none would run below the new size: the next starts
    assert started == reqs[:5]
    assert lane.active() == [reqs[4]]


# -- the pool's commands and the autoscaler ---------------------------------------------------


class FakeConsumer:
    def __init__(self, sync: FakeExecutor) -> None:
        self.lanes = {False: Lane(sync)}  # type: ignore[arg-type]
        self.windows: list[int] = []
        self.stopping = False

    def resized(self, window: int) -> None:
        self.windows.append(window)


def pool(threads: int = 2, loop_workers: int = 1, autoscale=None) -> tuple[Pool, FakeConsumer]:
    sync, loop = FakeExecutor(threads), SimpleNamespace(size=10, groups=[10], starts=None)
    loop.resize = lambda size: setattr(loop, "size", size)
    consumer = FakeConsumer(sync)
    sizes = Pool(consumer, loop, sync, loop_workers=loop_workers, multiplier=4,  # type: ignore[arg-type]
                 autoscale=autoscale, keepalive=5.0)
    return sizes, consumer


def test_grow_and_shrink_change_the_threads_and_the_window():
    sizes, consumer = pool(2)
    assert sizes.grow(3) == "threads" and sizes.threads == 5
    assert consumer.windows == [prefetch_window(4, 10 + 5)]
    assert sizes.shrink("2") == "threads" and sizes.threads == 3
    assert sizes.concurrency == 13


def test_the_loop_concurrency_is_resized_when_asked():
    sizes, consumer = pool(2)
    assert sizes.grow(5, "loop") == "loop" and sizes.loop_concurrency == 15
    assert sizes.shrink(14, "loop") == "loop" and sizes.loop_concurrency == 1
    assert consumer.windows[-1] == prefetch_window(4, 1 + 2)


@pytest.mark.parametrize("call, message", [
    (lambda p: p.grow(-1), "n must be at least 1, not -1"),
    (lambda p: p.grow(0), "n must be at least 1, not 0"),
    (lambda p: p.grow("two"), "n must be a whole number, not 'two'"),
    (lambda p: p.grow(1.5), "n must be a whole number, not 1.5"),
    (lambda p: p.grow(True), "n must be a whole number, not True"),
    (lambda p: p.shrink(3), "the sync threads would be -1"),
    (lambda p: p.shrink(10, "loop"), "the loop concurrency would be 0"),
    (lambda p: p.grow(1, "processes"), "pool must be 'threads' or 'loop'"),
    (lambda p: p.update_autoscale(4, 2), "autoscale is not enabled on this worker"),
])
def test_bad_arguments_are_refused_with_a_reason(call, message):
    sizes, consumer = pool(2)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call(sizes)
    assert sizes.threads == 2 and sizes.loop_concurrency == 10 and not consumer.windows


def test_a_worker_without_loop_workers_keeps_one_thread():
    sizes, _ = pool(2, loop_workers=0)
    with pytest.raises(ValueError, match="between 1 and"):
        sizes.shrink(2)
    with pytest.raises(ValueError, match="no loop workers"):
        sizes.grow(1, "loop")


def test_pool_commands_are_refused_under_autoscale_and_the_range_is_checked():
    sizes, _ = pool(1, autoscale=(4, 1))
    with pytest.raises(ValueError, match="pool_grow is not supported with autoscale"):
        sizes.grow(1)
    for args, message in [((2, 3), r"min \(3\) must not be greater than max \(2\)"),
                          ((-1, 0), "max must be at least 1"), ((3, -1), "min must be at least 0"),
                          (("x", 1), "max must be a whole number")]:
        with pytest.raises(ValueError, match=message):
            sizes.update_autoscale(*args)
    assert sizes.autoscale == (4, 1)
    assert sizes.update_autoscale(8, 3) == (8, 3)
    assert sizes.threads == 3  # raised to the new min at once
    with pytest.raises(ValueError, match="must not be greater"):
        sizes.update_autoscale(2, None)  # min stays 3


def test_autoscale_lowering_max_shrinks_at_once_and_the_window_follows_max():
    sizes, consumer = pool(5, autoscale=(8, 2))
    sizes.update_autoscale(3, 1)
    assert sizes.threads == 3
    assert consumer.windows[-1] == prefetch_window(4, 10 + 3)


def test_the_autoscaler_grows_to_the_demand_and_shrinks_after_the_keepalive():
    sizes, consumer = pool(1, autoscale=(6, 1))
    lane = consumer.lanes[False]
    lane.held = deque(req(n) for n in range(10))
    sizes.scale(100.0)
    assert sizes.threads == 6  # capped at max
    lane.held = deque(req(n) for n in range(2))
    sizes.scale(101.0)
    assert sizes.threads == 6  # not before the keepalive
    sizes.scale(100.0 + 5.0 + 0.1)
    assert sizes.threads == 2
    lane.held = deque()
    sizes.scale(106.0)  # demand fell below 2 at 105.1: another keepalive from there
    assert sizes.threads == 2
    sizes.scale(111.0)
    assert sizes.threads == 1  # min
    assert sizes.info() == {"max": 6, "min": 1, "current": 1, "qty": 0}


# -- --autoscale on the command line, and the worker's checks ----------------------------------


@pytest.mark.parametrize("text, expected", [("10,3", (10, 3)), ("3,10", (10, 3)), ("4", (4, 0)),
                                            ("1,0", (1, 0))])
def test_the_autoscale_option_reads_max_and_min(text, expected):
    from celery.bin.worker import _autoscale

    assert _autoscale(None, None, text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["a,b", "1,2,3", "0", "-1,2", "5,-1", ""])
def test_a_bad_autoscale_option_is_one_usage_error(text):
    import click

    from celery.bin.worker import _autoscale

    with pytest.raises(click.BadParameter):
        _autoscale(None, None, text)  # type: ignore[arg-type]


def test_a_worker_with_autoscale_starts_with_min_threads_and_a_window_for_max():
    from celery import Celery
    from celery.exceptions import ImproperlyConfigured
    from celery.worker import Worker

    app = Celery("t", broker="memory://", set_as_current=False)
    worker = Worker(app, loop_workers=1, loop_concurrency=10, sync_workers=8, autoscale=(6, 2))
    assert worker.sync_workers == 2 and worker.window == 4 * (10 + 6)
    assert "autoscaled 2..6" in worker.concurrency_text
    for bad in [(2, 3), (0, 0), (5, -1), ("x", 1), (5000, 1)]:
        with pytest.raises(ImproperlyConfigured):
            Worker(app, autoscale=bad)
