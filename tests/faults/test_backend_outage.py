"""The result backend goes away while the broker stays (issue 20, item 6): tasks go on
running, acks are not held back by results, results wait in the worker (bounded: past the
bound it stops fetching) and are stored once the backend is back; the log names the
backend, and a shutdown names the results it could not store."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import valkey

from celery import Celery
from celery.worker import flusher
from tests.integration.worker_harness import running_worker

from .brokers import make_broker
from .procs import wait_until
from .redis_server import RedisServer


def make_app(broker_url: str, backend_url: str, acks_late: bool) -> Celery:
    app = Celery(f"outage{uuid.uuid4().hex[:8]}", broker=broker_url, backend=backend_url,
                 set_as_current=False, task_acks_late=acks_late,
                 redis_socket_connect_timeout=1, redis_socket_timeout=2)

    @app.task(name="fault.echo")
    def echo(value):
        return value

    @app.task(name="fault.echo_late", acks_late=True)
    def echo_late(value):
        return value

    return app


def settled(client: valkey.Valkey) -> bool:
    return client.llen("celery") == 0 and client.hlen("unacked") == 0


@pytest.mark.parametrize("acks_late", [False, True], ids=["early_ack", "acks_late"])
def test_results_wait_for_the_backend_and_acks_do_not(acks_late: bool, tmp_path: Path,
                                                       caplog):
    broker = make_broker("redis", tmp_path)
    client = valkey.Valkey.from_url(broker.url)
    with RedisServer(tmp_path / "backend") as backend:
        app = make_app(broker.url, backend.url(), acks_late)
        echo = app.tasks["fault.echo"]
        try:
            with caplog.at_level(logging.INFO), \
                    running_worker(app, loop_workers=1, sync_workers=2,
                                   prefetch_multiplier=4) as worker:
                assert echo.delay(-1).get(timeout=10) == -1
                # Killed only once that write is confirmed (see the test below).
                consumer = worker._consumer
                assert consumer is not None
                wait_until(lambda: consumer.processed == 1 and consumer.results.queued == 0,
                           10, "the first result to be confirmed stored")
                backend.kill()
                results = [echo.delay(i) for i in range(30)]
                if acks_late:  # acked only once stored: all still reserved
                    wait_until(lambda: client.llen("celery") == 0, 15, "all to be fetched")
                    assert client.hlen("unacked") > 0
                else:  # acked as they start, whatever became of their results
                    wait_until(lambda: settled(client), 15, "every message acked")
                backend.start()  # the same port, empty: the waiting results are written
                assert [r.get(timeout=20) for r in results] == list(range(30))
                wait_until(lambda: settled(client), 15, "every message acked")
        finally:
            app.close()
    text = caplog.text
    assert "Result backend unreachable" in text and "Result backend reachable again" in text
    assert "Broker unreachable" not in text


def test_a_backlog_of_results_stops_fetching_until_the_backend_takes_it(
        tmp_path: Path, caplog, monkeypatch):
    monkeypatch.setattr(flusher, "MAX_PENDING_RESULTS", 5)
    broker = make_broker("redis", tmp_path)
    client = valkey.Valkey.from_url(broker.url)
    with RedisServer(tmp_path / "backend") as backend:
        backend.kill()
        app = make_app(broker.url, backend.url(), acks_late=False)
        echo = app.tasks["fault.echo"]
        try:
            with caplog.at_level(logging.INFO), \
                    running_worker(app, loop_workers=1, loop_concurrency=2, sync_workers=1,
                                   prefetch_multiplier=1):
                results = [echo.delay(i) for i in range(50)]
                wait_until(lambda: "fetching no more tasks" in caplog.text, 15, "the backlog")
                left = client.llen("celery")
                # the window (3) and the bound (5) with what was in flight: most stay queued
                assert left >= 50 - 5 - 3 * 3, left
                backend.start()
                assert [r.get(timeout=30) for r in results] == list(range(50))
        finally:
            app.close()
    assert "cannot be reached" in caplog.text  # said at start, with the backend down


def test_a_shutdown_names_the_results_it_could_not_store(tmp_path: Path, caplog, monkeypatch):
    """One acked early (its result is lost, and said so), one ``acks_late`` (its message
    stays reserved, to run again after the visibility timeout)."""
    monkeypatch.setattr(flusher, "DRAIN_TIMEOUT", 1.0)
    broker = make_broker("redis", tmp_path)
    client = valkey.Valkey.from_url(broker.url)
    with RedisServer(tmp_path / "backend") as backend:
        app = make_app(broker.url, backend.url(), acks_late=False)
        echo, echo_late = app.tasks["fault.echo"], app.tasks["fault.echo_late"]
        try:
            with caplog.at_level(logging.INFO), \
                    running_worker(app, loop_workers=1, sync_workers=1) as worker:
                assert echo.delay(0).get(timeout=10) == 0
                # The client can read the result (the server published it) before the
                # server's reply to the worker's write went out: killed in between, that
                # write fails, and the shutdown would name it too. So the backend goes
                # away only once the write is confirmed: the outcome reached the consumer
                # (after the thread's write returned) and none waits for the flusher.
                consumer = worker._consumer
                assert consumer is not None
                wait_until(lambda: consumer.processed == 1 and consumer.results.queued == 0,
                           10, "the first result to be confirmed stored")
                backend.kill()
                result, late = echo.delay(1), echo_late.delay(2)
                wait_until(lambda: caplog.text.count("succeeded in") == 3, 15, "both to run")
                wait_until(lambda: "Result backend unreachable" in caplog.text, 15,
                           "the failed write")
        finally:
            app.close()
    lost = [r.getMessage() for r in caplog.records if "results not stored" in r.getMessage()]
    assert len(lost) == 1 and "Shutdown with 2 results not stored" in lost[0]
    assert f"acked are lost ({result.id})" in lost[0]
    assert f"after the visibility timeout ({late.id})" in lost[0]
    assert "result backend" in lost[0] and "broker" not in lost[0].lower()
    # the acks_late task's message is still reserved (the restore gives it back), nothing else
    [entry] = client.hvals("unacked")
    assert late.id.encode() in entry
    client.close()
