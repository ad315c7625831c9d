"""OpenTelemetry's Celery instrumentation and sentry-sdk's CeleryIntegration, unchanged, on our
worker (tests/integration/observability_run.py runs each in a process of its own, with
in-memory exporters, against a real worker on Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import IN_CI, flushed_redis_url

REDIS_DB = 5
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.redis


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if IN_CI:  # CI installs the 'observability' extra (ci/setup.sh, ci/ft-test.sh)
            pytest.fail(f"{module} is not installed, and CI=true: install "
                        "celery-asyncio[observability]")
        pytest.skip(f"{module} is not installed (the 'observability' extra)")


def observe(mode: str) -> dict[str, Any]:
    url = flushed_redis_url(REDIS_DB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tests.integration.observability_run", mode,
                           url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"{done.stdout}\n{done.stderr}"
    return json.loads(lines[-1][len("RESULT "):])  # type: ignore[no-any-return]


def _span(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, (name, [span["name"] for span in spans])
    return found[0]


def test_opentelemetry_traces_a_send_and_its_execution_as_one_trace() -> None:
    _need("opentelemetry.instrumentation.celery")
    found = observe("otel")
    # Its dependency check wants a distribution named "celery" (docs/monitoring.md).
    assert found["refused_without_skip_dep_check"] is True
    spans, ids = found["spans"], found["ids"]
    for name, task_id in (("observed.add", ids["add"]), ("observed.aadd", ids["aadd"]),
                          ("observed.boom", ids["boom"])):
        producer = _span(spans, f"apply_async/{name}")
        consumer = _span(spans, f"run/{name}")
        assert producer["kind"] == "PRODUCER" and consumer["kind"] == "CONSUMER"
        for span in (producer, consumer):
            assert span["attributes"]["celery.task_name"] == name
            assert span["attributes"]["messaging.message.id"] == task_id
        # The worker's span continues the sender's trace (traceparent travelled in the
        # message's headers and came back as a request attribute).
        assert consumer["trace_id"] == producer["trace_id"]
        assert consumer["parent_id"] == producer["span_id"]
        assert consumer["attributes"]["celery.action"] == "run"
        assert consumer["attributes"]["celery.hostname"]
    assert _span(spans, "run/observed.add")["attributes"]["celery.state"] == "SUCCESS"
    failed = _span(spans, "run/observed.boom")
    assert failed["attributes"]["celery.state"] == "FAILURE"
    assert failed["status"] == "ERROR"
    [exception] = [event for event in failed["events"] if event["name"] == "exception"]
    assert exception["attributes"]["exception.type"] == "ValueError"
    assert exception["attributes"]["exception.message"] == "boom 7"


def test_sentry_captures_a_task_error_with_the_task_name_in_the_senders_trace() -> None:
    _need("sentry_sdk")
    found = observe("sentry")
    recorded, ids = found["recorded"], found["ids"]
    errors = [item for item in recorded if item["item"] == "event"]
    # One event per failure: the def task's from the integration, the async def task's from
    # docs/monitoring.md's task_failure receiver (the integration does not see those).
    assert sorted(e["exception"]["values"][0]["type"] for e in errors) == ["KeyError",
                                                                             "ValueError"]
    [error] = [e for e in errors if e["exception"]["values"][0]["type"] == "ValueError"]
    [async_error] = [e for e in errors if e["exception"]["values"][0]["type"] == "KeyError"]
    assert async_error["exception"]["values"][0]["value"] == "'aboom 9'"
    [value] = error["exception"]["values"]
    assert (value["type"], value["value"]) == ("ValueError", "boom 7")
    assert value["mechanism"] == {"type": "celery", "handled": False}
    assert error["tags"]["celery_task_id"] == ids["boom"]
    assert error["extra"]["celery-job"]["task_name"] == "observed.boom"
    assert error["transaction"] == "observed.boom"
    # The worker's transaction for the task continues the trace the sender was in.
    runs = {item["transaction"]: item for item in recorded
            if item["item"] == "transaction" and item["transaction"].startswith("observed.")}
    assert set(runs) == {"observed.boom", "observed.add"}  # not observed.aboom (async def)
    assert runs["observed.boom"]["contexts"]["trace"]["op"] == "queue.task.celery"
    [process] = [span for span in runs["observed.boom"]["spans"] if span["op"] == "queue.process"]
    assert process["data"]["messaging.message.id"] == ids["boom"]
    assert process["data"]["messaging.system"] == "redis"
    assert process["data"]["messaging.destination.name"] == "celery"
    assert runs["observed.boom"]["contexts"]["trace"]["trace_id"] == ids["sent_trace"]
    assert error["contexts"]["trace"]["trace_id"] == ids["sent_trace"]


def test_sentry_crons_follow_tasks_our_beat_scheduler_sends() -> None:
    _need("sentry_sdk")
    checkins = observe("sentry-beat")["checkins"]
    seen = {(c["monitor_slug"], c["status"]) for c in checkins}
    assert seen == {("add-every-minute", "in_progress"), ("add-every-minute", "ok"),
                    ("boom-hourly", "in_progress"), ("boom-hourly", "error")}
    configs = {c["monitor_slug"]: c["monitor_config"]["schedule"] for c in checkins}
    assert configs == {"add-every-minute": {"type": "interval", "value": 1, "unit": "minute"},
                       "boom-hourly": {"type": "crontab", "value": "5 * * * *"}}
    # The worker's check-in closes the one beat opened (its id travelled in the headers).
    for slug in configs:
        assert len({c["check_in_id"] for c in checkins if c["monitor_slug"] == slug}) == 1


def test_a_replaced_build_tracer_wraps_each_def_task_execution(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """As Sentry replaces it: built once per task, called as Celery calls a tracer; one that
    raises, or never runs the execution, costs the task nothing; async def tasks bypass it."""
    from celery import Celery, signals
    from celery.app import trace

    from .worker_harness import running_worker

    url = flushed_redis_url(REDIS_DB)
    app = Celery("hooked", broker=url, backend=url)
    built: list[str] = []
    calls: list[tuple[str, str, tuple[Any, ...], str | None]] = []
    original = trace.build_tracer

    def build_tracer(name: str, task: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(name)
        inner = original(name, task, *args, **kwargs)

        def traced(uuid: str, args: Any, kwargs: Any, request: Any = None) -> Any:
            mode = args[0]
            calls.append((name, uuid, tuple(args), request.get("id")))
            if mode == "raise":
                raise RuntimeError("tracer bug")
            if mode == "skip":
                return None
            return inner(uuid, args, kwargs, request)

        return traced

    @app.task(name="hooked.echo")
    def echo(mode: str) -> str:
        return mode

    @app.task(name="hooked.aecho")
    async def aecho(mode: str) -> str:
        return mode

    prerun: list[tuple[str, str | None]] = []

    def on_prerun(task_id: str, task: Any, **_: Any) -> None:
        prerun.append((task_id, task.request.id))

    monkeypatch.setattr(trace, "build_tracer", build_tracer)
    signals.task_prerun.connect(on_prerun)
    try:
        with running_worker(app):
            results = [echo.delay(mode) for mode in ("run", "raise", "skip", "run")]
            assert [r.get(timeout=10) for r in results] == ["run", "raise", "skip", "run"]
            assert aecho.delay("async").get(timeout=10) == "async"
    finally:
        signals.task_prerun.disconnect(on_prerun)
        app.close()
    assert built == ["hooked.echo"]
    assert sorted(calls) == sorted(("hooked.echo", r.id, (mode,), r.id) for r, mode in
                                   zip(results, ("run", "raise", "skip", "run"), strict=True))
    assert "the tracer" in caplog.text and "RuntimeError('tracer bug')" in caplog.text
    # task_prerun sees the execution's own request; each def task ran once.
    assert len(prerun) == 5 and all(task_id == seen for task_id, seen in prerun)
