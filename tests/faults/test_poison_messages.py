"""A poison message (an envelope nested deeper than the JSON parser can recurse) on each real
broker: the worker goes on, runs the good messages around it, and the poison one goes to
the dead-letter store once, whether it is fetched from the queue or restored from a dead
worker's reservations (issue 20, item 1)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from celery import Celery
from tests.integration.worker_harness import running_worker

from .brokers import NAMES, Broker, make_broker, nested_envelope, results_of, task_envelope

#: 990 levels: over Python's recursion limit once the worker's own frames are counted (it
#: raised RecursionError in the envelope decoder); 5,000: over it anywhere, and over Redis's
#: cjson limit too.
DEPTHS = (990, 5000)


def make_app(broker: Broker, **conf) -> Celery:
    app = Celery(f"poison{uuid.uuid4().hex[:8]}", broker=broker.url, backend=broker.backend,
                 set_as_current=False, **conf)

    @app.task(name="fault.echo")
    def echo(value):
        return value

    return app


@pytest.mark.parametrize("name", NAMES)
def test_worker_survives_poison_in_the_queue_and_runs_the_rest(name: str, tmp_path: Path):
    broker = make_broker(name, tmp_path)
    app = make_app(broker)
    poison = [nested_envelope(depth, task_id=f"poison-{depth}") for depth in DEPTHS]
    try:
        with running_worker(app, loop_workers=1, sync_workers=2):
            for raw in poison:  # to an idle worker: each alone, popped by a blocking fetch
                broker.plant(raw)
            results = [app.tasks["fault.echo"].delay(i) for i in range(5)]
            assert [r.get(timeout=20) for r in results] == list(range(5))
            # and a backlog with poison in the middle
            for raw in poison:
                broker.plant(raw)
            results = [app.tasks["fault.echo"].delay(i) for i in range(20)]
            assert [r.get(timeout=20) for r in results] == list(range(20))
    finally:
        app.close()
    dead = broker.dead_letters()
    assert sorted(dead) == sorted(poison * 2)  # each planted one set aside, once
    assert broker.stored() == 0


@pytest.mark.parametrize("name", NAMES)
def test_restore_sets_poison_aside_and_returns_the_rest(name: str, tmp_path: Path):
    """A dead worker's reservations: the poison among them goes to the dead letters, the
    good ones come back and run (before, the restore died on it, or the worker at start)."""
    broker = make_broker(name, tmp_path)
    ids = [str(uuid.uuid4()) for _ in range(10)]
    for i, task_id in enumerate(ids):
        if i in (3, 7):
            broker.plant_reserved(nested_envelope(DEPTHS[i == 7], task_id=f"poison-{i}"), 100)
        broker.plant_reserved(task_envelope("fault.echo", (i,), task_id), 100)
    app = make_app(broker, broker_transport_options={"visibility_timeout": 30})
    try:
        with running_worker(app, loop_workers=1, sync_workers=2):
            assert results_of(app, ids) == list(range(10))
    finally:
        app.close()
    assert len(broker.dead_letters()) == 2
    assert broker.stored() == 0
