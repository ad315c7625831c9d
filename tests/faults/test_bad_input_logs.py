"""Issue 20, item 9: what bad input tells the log and the result backend (in-process broker
and backend: no server needed)."""

from __future__ import annotations

import logging
import uuid

import pytest

from celery import Celery, states
from celery.exceptions import ContentDisallowed, DecodeError
from celery.messaging.protocol import build_task_message
from tests.integration.worker_harness import running_worker


def make_app(**conf) -> Celery:
    name = uuid.uuid4().hex[:8]
    app = Celery(f"bad{name}", broker=f"memory://{name}", backend=f"cache+memory://{name}",
                 set_as_current=False, **conf)

    @app.task(name="bad.echo")
    def echo(value):
        return value

    return app


def test_an_unreadable_expires_is_logged_once(caplog):
    app = make_app()
    try:
        with caplog.at_level(logging.WARNING), running_worker(app, loop_workers=1,
                                                              sync_workers=1):
            message = build_task_message("bad.echo", (1,), expires="not a date")
            app.transport.publish(message)
            result = app.AsyncResult(message.headers["id"])
            assert result.get(timeout=10) == 1
    finally:
        app.close()
    warnings = [r for r in caplog.records if "unreadable expires" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_a_body_that_does_not_decode_fails_the_task_in_one_log_line(caplog):
    app = make_app()
    try:
        with caplog.at_level(logging.INFO), running_worker(app, loop_workers=1,
                                                           sync_workers=1):
            good = build_task_message("bad.echo", (1,))
            message = type(good)(body=b"[[], {}, " + b"[" * 900 + b"]" * 900 + b"]",
                                 content_type=good.content_type,
                                 content_encoding=good.content_encoding, headers=good.headers,
                                 properties=good.properties, routing_key=good.routing_key)
            app.transport.publish(message)
            result = app.AsyncResult(message.headers["id"])
            with pytest.raises(DecodeError):
                result.get(timeout=10)
            assert result.state == states.FAILURE
    finally:
        app.close()
    about = [r for r in caplog.records if r.levelno >= logging.ERROR
             and message.headers["id"] in r.getMessage()]
    assert len(about) == 1, caplog.text
    assert "\n" not in about[0].getMessage() and about[0].exc_info is None
    assert "nested more than 800 levels" in about[0].getMessage()


def test_result_accept_content_is_applied_when_results_are_read():
    app = make_app(result_serializer="pickle", accept_content=["json"],
                   result_accept_content=["json"])
    try:
        app.backend.store_result("t1", 42, states.SUCCESS)
        with pytest.raises(ContentDisallowed):
            app.AsyncResult("t1").get(timeout=1)
    finally:
        app.close()
    allowed = make_app(result_serializer="pickle", result_accept_content=["pickle"])
    try:
        allowed.backend.store_result("t2", 42, states.SUCCESS)
        assert allowed.AsyncResult("t2").get(timeout=1) == 42
    finally:
        allowed.close()
