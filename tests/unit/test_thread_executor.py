"""ThreadExecutor's hand-off: every request runs once, threads run in parallel, a blocked
task holds back no other."""

from __future__ import annotations

import threading
import time

from .executor_doubles import request


def test_a_burst_runs_every_request_exactly_once(run):
    ex, rec = run(4, 2000)
    for start in range(0, 2000, 100):
        ex.submit(-1, [request(n) for n in range(start, start + 100)])
    assert rec.all_done.wait(10)
    assert sorted(i for i, _ in rec.done) == sorted(f"r{n}" for n in range(2000))


def test_all_threads_run_at_once_when_tasks_block(run):
    barrier = threading.Barrier(4, timeout=5)  # broken (and raising) unless 4 run together
    ex, rec = run(4, 4)
    ex.submit(-1, [request(n, barrier.wait) for n in range(4)])
    assert rec.all_done.wait(10)
    assert len({thread for _, thread in rec.done}) == 4


def test_a_blocked_task_holds_back_no_other(run):
    release = threading.Event()
    ex, rec = run(2, 6)
    ex.submit(-1, [request(0, lambda: release.wait(10))])
    time.sleep(0.05)  # the first thread is inside the blocked task
    ex.submit(-1, [request(n) for n in range(1, 6)])
    deadline = time.monotonic() + 5
    while len(rec.done) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(i for i, _ in rec.done) == [f"r{n}" for n in range(1, 6)]
    release.set()
    assert rec.all_done.wait(5)


def test_requests_submitted_one_by_one_to_idle_threads_all_run(run):
    ex, rec = run(3, 300)
    for n in range(300):
        ex.submit(-1, [request(n)])
        if n % 50 == 0:
            time.sleep(0.01)  # let every thread go idle now and then
    assert rec.all_done.wait(10)
    assert len(rec.done) == 300


def test_requests_coming_one_at_a_time_run_on_the_thread_that_went_idle_last(run):
    # Each waits for the one before: one shared wake-up queue would hand them to each
    # thread in turn; the idle stack keeps them on one thread, its caches warm.
    ex, rec = run(4, 40)
    for n in range(40):
        ex.submit(-1, [request(n)])
        deadline = time.monotonic() + 5
        # done, and its thread idle again (back on the stack) before the next comes
        while (len(rec.done) <= n or len(ex._idle) < 4) and time.monotonic() < deadline:
            time.sleep(0.001)
    assert rec.all_done.wait(5)
    assert len({thread for _, thread in rec.done}) == 1
    # a burst still spreads over the threads
    barrier = threading.Barrier(4, timeout=5)
    rec.all_done.clear()
    rec.expected = 44
    ex.submit(-1, [request(n, barrier.wait) for n in range(40, 44)])
    assert rec.all_done.wait(10)
    assert len({thread for _, thread in rec.done[40:]}) == 4


def test_a_request_finishing_with_none_waiting_is_reported_alone(run):
    ex, rec = run(1, 1)
    ex.submit(-1, [request(0)])
    assert rec.all_done.wait(5)
    assert rec.alone == {"r0": True}


def test_a_request_finishing_while_others_wait_is_not_alone(run):
    release = threading.Event()
    ex, rec = run(1, 2)
    ex.submit(-1, [request(0, lambda: release.wait(10)), request(1)])
    time.sleep(0.05)  # r0 runs on the only thread; r1 waits for it
    release.set()
    assert rec.all_done.wait(5)
    assert rec.alone == {"r0": False, "r1": True}


def test_a_request_finishing_while_another_runs_is_not_alone(run):
    release = threading.Event()
    ex, rec = run(2, 2)
    ex.submit(-1, [request(0, lambda: release.wait(10))])
    time.sleep(0.05)  # r0 runs on one thread
    ex.submit(-1, [request(1)])
    deadline = time.monotonic() + 5
    while not rec.done and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    assert rec.all_done.wait(5)
    assert rec.alone == {"r1": False, "r0": True}


def test_requests_waiting_for_a_thread_can_be_withdrawn_and_dropped(run):
    ex, rec = run(1, 2)
    assert ex.groups == [4] and ex.starts == [1]  # 3 may wait behind the one running
    release = threading.Event()
    blocker = request(0, release.wait)
    waiting = [request(n) for n in (1, 2, 3)]
    ex.submit(0, [blocker, *waiting])
    deadline = time.monotonic() + 5
    while not ex._running and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ex.withdraw(waiting[0]) and not ex.withdraw(waiting[0])
    ex.abandon(waiting[1], "terminated")  # not started: taken back, no thread replaced
    assert ex.cancel_all() == [waiting[2]]
    assert not ex.withdraw(blocker)  # running: too late
    release.set()
    assert not rec.all_done.wait(0.3)  # only the blocker ran
    assert [o[0] for o in rec.done] == ["r0"] and len(ex._threads) == 1
