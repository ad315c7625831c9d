"""kill -9 of Redis itself, restarted on the same append-only file (``appendfsync always``:
every write Redis answered is on disk), while a worker runs acks_late tasks and a producer
keeps sending: nothing is lost. A message the producer sent again after Redis died before
answering (its first copy may have been written) may run twice: those are counted apart
(the producer's own retries are off, so that every resend is seen)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

from celery import Celery
from celery.exceptions import OperationalError

from .conftest import scaled
from .procs import Executions, Worker, faultapp_env, wait_until
from .redis_server import RedisServer

VISIBILITY = 3


def test_redis_killed_and_restarted_with_appendfsync_always_loses_nothing(tmp_path: Path,
                                                                         report):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    url = server.url(0)
    log = tmp_path / "executions.log"
    env = faultapp_env(url, url, log, acks_late=True, visibility_timeout=VISIBILITY)
    # No retries inside the producer's publish: a send Redis may have run before it died
    # (its reply lost) would then be sent again unseen; here the test sends it again itself,
    # and counts it.
    app = Celery("producer", broker=url, backend=url, set_as_current=False,
                 broker_transport_options={"max_retries": 0})
    rng = random.Random()
    sent, restarts, seconds = scaled(1000, 5000), scaled(3, 8), scaled(6, 24)
    ids = [str(uuid.uuid4()) for _ in range(sent)]
    resent: set[str] = set()
    done_sending = threading.Event()

    def produce() -> None:  # a steady stream, each message sent until Redis accepts it
        for n, task_id in enumerate(ids):
            while True:
                try:
                    app.send_task(rng.choice(("fault.sync", "fault.async")), (0.001,),
                                  task_id=task_id)
                    break
                except OperationalError:  # (ConnectionLost too) Redis is down: again
                    resent.add(task_id)
                    time.sleep(0.2)
            if n % 20 == 19:  # spread over ``seconds``, so that Redis dies in the middle
                time.sleep(seconds * 20 / sent)
        done_sending.set()

    worker = Worker(env, "--loop-workers=1", "--loop-concurrency=10", "--sync-workers=2")
    producer = threading.Thread(target=produce, daemon=True)
    try:
        worker.wait_ready()
        producer.start()
        for _ in range(restarts):
            time.sleep(rng.uniform(0.3, 1.6 * seconds / restarts))
            server.kill()
            time.sleep(rng.uniform(0.2, 1.5))
            server.start()
        assert done_sending.wait(300), "the producer did not finish"
        wait_until(lambda: not Executions.read(log).lost(ids), 240, "every task to end")
        results = [app.AsyncResult(i) for i in ids]
        assert all(r.get(timeout=60) == 0.001 for r in results)
    finally:
        worker.stop(60)
        app.close()
        server.kill()
    # what the worker saw of the outages (its fetches, waits, writes and duties)
    outages = sum("unreachable" in line or "connection lost" in line.lower()
                  for line in worker.lines)
    executions = Executions.read(log)
    lost, twice = executions.lost(ids), executions.duplicated(ids)
    unaccounted = [i for i in executions.unaccounted(ids) if i not in resent]
    report(runs=restarts, sent=sent, lost=len(lost), duplicated=len(twice),
           resent_by_producer=len(resent), unaccounted=len(unaccounted),
           worker_outage_lines=outages)
    assert outages > 0, "the worker never noticed Redis going away"
    assert not lost and not unaccounted
