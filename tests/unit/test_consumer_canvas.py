"""The consumer's chord reports (worker/canvas.py): made after the results are stored, and
made again when the backend could not be reached."""

from __future__ import annotations

import pytest

from celery import Celery, states
from celery._state import Context
from celery.exceptions import ConnectionLost
from celery.messaging.serialization import accept_set
from celery.worker.canvas import ConsumerCanvas, PendingReport


async def test_a_report_that_cannot_reach_the_backend_is_queued_again():
    # Nothing listens on port 1: every call fails to connect (no server needed).
    app = Celery("reports", broker="memory://reports", backend="redis://127.0.0.1:1/0",
                 set_as_current=False, result_backend_transport_options={
                     "socket_connect_timeout": 0.2})
    try:
        canvas = ConsumerCanvas(app, "host", accept_set(["json"]))
        request = Context(id="member", group="g", group_index=0, chord=app.signature("x.body"))
        report = PendingReport(request, states.SUCCESS, 1)
        canvas.queue_report(report)
        assert canvas.pending
        taken = canvas.take_reports()
        assert taken == [report] and not canvas.pending
        with pytest.raises(ConnectionLost):
            await canvas.run_reports(taken)
        assert canvas.take_reports() == [report]  # made again at the next flush
    finally:
        app.close()
