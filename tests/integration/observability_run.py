"""Run OpenTelemetry's Celery instrumentation or sentry-sdk's CeleryIntegration against a real
worker (in a thread) on Redis, in a process of its own, and print what they recorded as JSON.

``python -m tests.integration.observability_run otel|sentry|sentry-beat REDIS_URL``

Both libraries patch process-wide state (signal receivers; Task, Celery and
``celery.app.trace`` functions): run here, they never reach the other tests' processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from celery import Celery

from .worker_harness import running_worker


def make_app(url: str) -> Celery:
    app = Celery("observed", broker=url, backend=url)

    @app.task(name="observed.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="observed.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.task(name="observed.boom")
    def boom(x: int) -> None:
        raise ValueError(f"boom {x}")

    @app.task(name="observed.aboom")
    async def aboom(x: int) -> None:
        await asyncio.sleep(0)
        raise KeyError(f"aboom {x}")

    return app


def run_otel(url: str) -> dict[str, Any]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    # Its dependency check looks for a distribution named "celery"; ours is celery-asyncio.
    instrumentor.instrument(tracer_provider=provider)
    refused = not instrumentor.is_instrumented_by_opentelemetry
    instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    app = make_app(url)
    ids: dict[str, str] = {}
    with running_worker(app):
        result = app.tasks["observed.add"].delay(2, 3)
        ids["add"] = result.id
        assert result.get(timeout=10) == 5

        async def send_async() -> None:
            sent = await app.tasks["observed.aadd"].adelay(4, 5)
            ids["aadd"] = sent.id
            assert await sent.aget(timeout=10) == 9

        asyncio.run(send_async())
        failed = app.tasks["observed.boom"].delay(7)
        ids["boom"] = failed.id
        try:
            failed.get(timeout=10)
        except ValueError:
            pass
    instrumentor.uninstrument()
    spans = [{
        "name": span.name, "kind": span.kind.name,
        "trace_id": span.context.trace_id, "span_id": span.context.span_id,
        "parent_id": span.parent.span_id if span.parent else None,
        "attributes": {k: v if isinstance(v, str | int | float | bool) else list(v)
                       for k, v in (span.attributes or {}).items()},
        "status": span.status.status_code.name,
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
    } for span in exporter.get_finished_spans()]
    return {"refused_without_skip_dep_check": refused, "ids": ids, "spans": spans}


def run_sentry(url: str) -> dict[str, Any]:
    import sentry_sdk
    from sentry_sdk.envelope import Envelope
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.transport import Transport

    recorded: list[dict[str, Any]] = []

    class RecordingTransport(Transport):
        """Keeps what the SDK would send (the SDK calls it from its own thread)."""

        def capture_envelope(self, envelope: Envelope) -> None:
            for item in envelope.items:
                if item.payload.json is not None:
                    recorded.append({"item": item.type, **item.payload.json})

    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=RecordingTransport,
                    integrations=[CeleryIntegration()], traces_sample_rate=1.0,
                    default_integrations=False)
    from celery.signals import task_failure

    # docs/monitoring.md's recipe for async def tasks, which the integration does not see.
    def report_async_failure(sender: Any, exception: BaseException, **_: Any) -> None:
        if sender.is_async:
            sentry_sdk.capture_exception(exception)

    task_failure.connect(report_async_failure, weak=False)
    app = make_app(url)
    ids: dict[str, str] = {}
    with running_worker(app):
        async_failed = app.tasks["observed.aboom"].delay(9)
        ids["aboom"] = async_failed.id
        try:
            async_failed.get(timeout=10)
        except KeyError:
            pass
        with sentry_sdk.start_transaction(name="web-request", op="http.server") as outer:
            failed = app.tasks["observed.boom"].delay(7)
            ids["sent_trace"] = outer.trace_id
        ids["boom"] = failed.id
        try:
            failed.get(timeout=10)
        except ValueError:
            pass
        assert app.tasks["observed.add"].delay(1, 1).get(timeout=10) == 2
    sentry_sdk.flush(5)
    return {"ids": ids, "recorded": recorded}


def run_sentry_beat(url: str) -> dict[str, Any]:
    """Sentry Crons through our beat Scheduler: check-ins for an interval and a crontab entry,
    in progress when sent, then OK or ERROR as the worker reports them."""
    import time
    from datetime import timedelta

    import sentry_sdk
    from sentry_sdk.envelope import Envelope
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.transport import Transport

    from celery.beat import Scheduler
    from celery.schedules import crontab, schedule

    checkins: list[dict[str, Any]] = []

    class RecordingTransport(Transport):
        def capture_envelope(self, envelope: Envelope) -> None:
            for item in envelope.items:
                if item.type == "check_in" and item.payload.json is not None:
                    checkins.append(item.payload.json)

    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=RecordingTransport,
                    integrations=[CeleryIntegration(monitor_beat_tasks=True)],
                    default_integrations=False)
    app = make_app(url)
    app.conf.beat_schedule = {
        "add-every-minute": {"task": "observed.add", "schedule": schedule(timedelta(minutes=1)),
                             "args": (1, 2)},
        "boom-hourly": {"task": "observed.boom", "schedule": crontab(minute="5"), "args": (3,)},
    }
    with running_worker(app):
        scheduler = Scheduler(app)
        for name in ("add-every-minute", "boom-hourly"):
            scheduler.apply_entry(scheduler.schedule[name])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sentry_sdk.flush(1)
            if sum(c["status"] != "in_progress" for c in checkins) >= 2:
                break
            time.sleep(0.1)
    return {"checkins": checkins}


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    runs = {"otel": run_otel, "sentry": run_sentry, "sentry-beat": run_sentry_beat}
    found = runs[mode](url)
    print("RESULT " + json.dumps(found, default=str))


if __name__ == "__main__":
    main()
