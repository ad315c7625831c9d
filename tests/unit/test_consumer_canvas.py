"""The consumer's chord reports (worker/canvas.py): those that cannot reach the backend come
back, to be made again by the flusher."""

from __future__ import annotations

from celery import Celery, states
from celery._state import Context
from celery.messaging.serialization import accept_set
from celery.worker.canvas import ConsumerCanvas, PendingReport


async def test_a_report_that_cannot_reach_the_backend_is_handed_back():
    # Nothing listens on port 1: every call fails to connect (no server needed).
    app = Celery("reports", broker="memory://reports", backend="redis://127.0.0.1:1/0",
                 set_as_current=False, result_backend_transport_options={
                     "socket_connect_timeout": 0.2})
    try:
        canvas = ConsumerCanvas(app, "host", accept_set(["json"]))
        request = Context(id="member", group="g", group_index=0, chord=app.signature("x.body"))
        report = PendingReport(request, states.SUCCESS, 1)
        assert await canvas.run_reports([report]) == [report]  # made again by the flusher
    finally:
        app.close()


async def test_the_flusher_makes_a_report_after_its_result_and_acks_after_the_report():
    from celery.transport.base import Delivery
    from celery.worker.flusher import Flusher
    from celery.worker.results import ResultGate

    app = Celery("flush", broker="memory://flush", backend="cache+memory://flush",
                 set_as_current=False)
    try:
        made: list[list] = []

        async def make_reports(reports):
            """Each call notes the stored state of the reports' tasks; the first call
            fails as a lost connection does (the reports come back)."""
            made.append([(await app.backend.aget_task_meta(r.request.id))["status"]
                         for r in reports])
            return list(reports) if len(made) == 1 else []

        backend = app.backend
        flusher = Flusher(backend, app.transport, ResultGate(backend), lambda n: None,
                          lambda: None, lambda: False, make_reports)
        delivery = Delivery(message=None, delivery_tag="t", queue="celery")  # type: ignore[arg-type]
        report = PendingReport(Context(id="m1", group="g", chord={}), states.SUCCESS, 1)
        payload = backend.encode(backend.prepare_meta("m1", states.SUCCESS, 1))
        flusher.store("m1", payload, states.SUCCESS, ("acks", delivery), report)
        await flusher._write_results(0.0)
        assert flusher.reports == [(report, ("acks", delivery))] and flusher.acks == []
        await flusher._write_reports(0.0)  # the backend was away: kept, the ack held back
        assert made == [["SUCCESS"]]  # the result was stored before the report was made
        assert flusher.reports == [(report, ("acks", delivery))] and flusher.acks == []
        assert flusher._retry_in(0.0) == 0.1  # the backend's backoff holds the retry
        await flusher._write_reports(100.0)  # retried after the backoff
        assert flusher.reports == [] and flusher.acks == [delivery]
        assert len(made) == 2
        # A report made clears the backoff: later writes are not held back by it.
        flusher.reports.append((report, None))
        assert flusher._retry_in(100.0) is None
    finally:
        app.close()
