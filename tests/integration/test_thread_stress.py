"""Many threads at once, as a free-threaded build runs them in parallel: producers on several
threads send and wait on the same app while a worker spreads the tasks over several loop
workers and sync threads. Each task must run once, each result reach its caller, and the
shared pieces (the app's publisher and result backend, the worker's hand-offs and results)
stay whole. Run in both CI passes; on the free-threaded one nothing serialises the threads."""

from __future__ import annotations

import collections
import hashlib
import threading

import pytest

from celery import Celery
from celery.utils import gil
from tests.integration.worker_harness import running_worker

REDIS_DB = 12
PRODUCERS = 8
PER_PRODUCER = 150

pytestmark = pytest.mark.redis
#: Rounds: races show up now and then, so the free-threaded pass runs it five times.
ROUNDS = 5 if gil.FREE_THREADED else 1


def work(n: int) -> str:
    """Some CPU: enough that tasks overlap on several threads."""
    data = str(n).encode()
    for _ in range(200):
        data = hashlib.sha256(data).digest()
    return data.hex()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_producers_on_many_threads_and_a_worker_on_many_threads(redis_url: str,
                                                                 round_: int) -> None:
    app = Celery("stress", broker=redis_url, backend=redis_url, set_as_current=False)
    ran: collections.Counter[int] = collections.Counter()
    threads_used: dict[str, set[int]] = {"sync": set(), "loop": set()}
    lock = threading.Lock()  # guards ran and threads_used: tasks on many threads add to them

    def note(kind: str, n: int) -> None:
        with lock:
            ran[n] += 1
            threads_used[kind].add(threading.get_ident())

    @app.task(name="stress.cpu")
    def cpu(n: int) -> list:
        note("sync", n)
        return [n, work(n)]

    @app.task(name="stress.acpu")
    async def acpu(n: int) -> list:
        note("loop", n)
        return [n, work(n)]

    errors: list[BaseException] = []
    start = threading.Barrier(PRODUCERS)

    def produce(p: int) -> None:
        try:
            start.wait(10)
            numbers = range(p * PER_PRODUCER, (p + 1) * PER_PRODUCER)
            results = [(cpu if n % 2 else acpu).delay(n) for n in numbers]
            for n, result in zip(numbers, results, strict=True):
                assert result.get(timeout=60) == [n, work(n)]
        except BaseException as exc:
            errors.append(exc)

    try:
        with running_worker(app, loop_workers=4, loop_concurrency=20, sync_workers=6):
            producers = [threading.Thread(target=produce, args=(p,), name=f"producer-{p}")
                         for p in range(PRODUCERS)]
            for t in producers:
                t.start()
            for t in producers:
                t.join(120)
            assert not any(t.is_alive() for t in producers)
    finally:
        app.close()
    assert not errors, errors[:3]
    total = PRODUCERS * PER_PRODUCER
    assert sorted(ran) == list(range(total)) and set(ran.values()) == {1}
    # The work was spread: several sync threads and several loop workers ran tasks.
    assert len(threads_used["sync"]) > 1 and len(threads_used["loop"]) > 1, threads_used
