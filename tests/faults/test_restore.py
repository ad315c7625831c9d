"""Restoring a dead worker's messages: the duty survives any error (issue 20, item 2) and
runs at start and every quarter of the visibility timeout (item 3), on every broker."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from tests.integration.worker_harness import running_worker

from .brokers import NAMES, make_broker, results_of, task_envelope
from .test_poison_messages import make_app


@pytest.mark.parametrize("name", NAMES)
def test_a_dead_workers_messages_come_back_after_the_visibility_timeout(name: str,
                                                                        tmp_path: Path):
    """Reserved just now by a worker that died: too young for the restore at start, back
    at a later round within a quarter of the 2 s timeout (not at the next minute)."""
    broker = make_broker(name, tmp_path)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, task_id in enumerate(ids):
        broker.plant_reserved(task_envelope("fault.echo", (i,), task_id), age=0)
    app = make_app(broker, broker_transport_options={"visibility_timeout": 2})
    try:
        with running_worker(app, loop_workers=1, sync_workers=1):
            assert results_of(app, ids, 15) == list(range(5))
    finally:
        app.close()


def test_the_restore_duty_goes_on_after_an_unexpected_error(tmp_path: Path, caplog):
    """The first restore raises what a poison message raised before item 1 was fixed; the
    error is logged, and the next round, a second later, restores the dead worker's messages."""
    broker = make_broker("redis", tmp_path)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, task_id in enumerate(ids):
        broker.plant_reserved(task_envelope("fault.echo", (i,), task_id), age=100)
    app = make_app(broker, broker_transport_options={"visibility_timeout": 4})
    transport = app.transport
    real_restore = transport.restore_visible
    calls = []

    async def restore_visible() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return await real_restore()

    transport.restore_visible = restore_visible  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.INFO, logger="celery.worker.duties"):
            with running_worker(app, loop_workers=1, sync_workers=1):
                assert results_of(app, ids, 15) == list(range(5))
    finally:
        app.close()
    assert len(calls) >= 2
    text = caplog.text
    assert "restore_visible failed" in text and "RecursionError" in text
    assert "restore_visible works again" in text
