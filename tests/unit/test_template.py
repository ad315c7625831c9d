"""The plain-send template (app/template.py): byte for byte the general path's envelope, and
used only where nothing else could change the message."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from celery import Celery, signals
from celery._state import current_task_var
from celery.app import template as tpl
from celery.messaging.serialization import loads

TAG = "0f0e0d0c-0b0a-4908-8706-050403020100"

#: Not connected to: building and filling templates does no I/O.
URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def app():
    app = Celery("tpl", broker=URL, set_as_current=False)

    @app.task(name="tpl.plain")
    def plain(*args, **kwargs):
        return None

    @app.task(name="tpl.custom", queue="special", priority=4, time_limit=30,
              soft_time_limit=20, ignore_result=True)
    def custom(*args, **kwargs):
        return None

    yield app
    app.close()


def general_envelope(app, task, args, kwargs, task_id) -> tuple[str, str]:
    """What send_task's general path publishes, with the template's delivery tag."""
    message, _ = app._prepare(task.name, args, kwargs, task, {"task_id": task_id})
    return app.transport.envelope_of(message, TAG)


def filled(app, task, args, kwargs, task_id, monkeypatch) -> tuple[str, str]:
    monkeypatch.setattr(tpl, "uuid4_str", lambda: TAG)
    template = tpl.Template.make(app, task)
    assert template is not None
    return template.key, template.fill(task_id, args or (), dict(kwargs or {}))


ARGUMENTS = [
    ((), {}),
    (None, None),
    ((1, 2.5, "three", None, True), {}),
    ([1, 2], {"k": "v"}),
    (("quote \" backslash \\ newline \n tab \t", "ünïcödé ✓", "\x00\x1f"), {"é": "\u2028"}),
    (({"a": [1, {"b": {"c": {"d": [1, 2]}}}]},), {"nested": {"x": (1, 2)}}),
    (("x" * 3000,), {"long": "y" * 3000}),  # argsrepr and kwargsrepr are cut at 1,024
    ((dt.datetime(2026, 11, 22, 1, 2, 3, tzinfo=dt.UTC), dt.date(2026, 1, 1)), {}),
]


@pytest.mark.parametrize("name", ["tpl.plain", "tpl.custom"])
@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
def test_the_filled_template_is_the_general_envelope_byte_for_byte(app, name, args, kwargs,
                                                                   monkeypatch):
    task = app.tasks[name]
    task_id = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
    assert filled(app, task, args, kwargs, task_id, monkeypatch) == \
        general_envelope(app, task, args, kwargs, task_id)


def test_the_settings_are_in_it(app, monkeypatch):
    app.conf.task_default_queue = "elsewhere"
    app.conf.task_default_priority = 6
    app.conf.task_time_limit = 9
    task = app.tasks["tpl.plain"]
    key, payload = filled(app, task, (1,), {}, "id-1", monkeypatch)
    assert (key, payload) == general_envelope(app, task, (1,), {}, "id-1")
    assert key.startswith("elsewhere") and '"timelimit": [9, null]' in payload


class Sent:
    """Stands in for the Redis transport's publish_encoded: what plain_send hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, key: str, payload: str, task_id: str) -> None:
        self.calls.append((key, payload, task_id))


@pytest.fixture
def sent(app, monkeypatch):
    recorder = Sent()
    monkeypatch.setattr(app.transport, "publish_encoded", recorder)
    return recorder


def test_delay_goes_through_the_template_and_makes_it_once(app, sent, monkeypatch):
    made = []
    make = tpl.Template.make.__func__
    monkeypatch.setattr(tpl.Template, "make", classmethod(
        lambda cls, *a: made.append(a) or make(cls, *a)))
    task = app.tasks["tpl.plain"]
    results = [task.delay(n, k=n) for n in range(3)]
    assert len(made) == 1 and [c[2] for c in sent.calls] == [r.id for r in results]
    key, payload, task_id = sent.calls[1]
    message, _ = app._prepare(task.name, (1,), {"k": 1}, task, {"task_id": task_id})
    envelope = json.loads(payload)
    assert key == "celery" and envelope["headers"] == message.headers
    body = loads(base64.b64decode(envelope["body"]), "application/json", "utf-8", None)
    assert body == [[1], {"k": 1},
                    {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert envelope["properties"]["delivery_tag"] != json.loads(sent.calls[0][1])[
        "properties"]["delivery_tag"]  # a new tag per message
    app.conf.task_default_queue = "moved"  # a setting it was made from: made again
    task.delay()
    assert len(made) == 2 and sent.calls[-1][0] == "moved"


def test_each_exclusion_falls_back_to_the_general_path(app, sent, monkeypatch):
    plain = app.tasks["tpl.plain"]
    general = []
    monkeypatch.setattr(type(app.transport), "publish", lambda self, m: general.append(m))

    plain.apply_async((1,), queue="other")  # a send option
    app.conf.task_routes = {"tpl.plain": {"queue": "routed"}}  # routes may read the args
    plain.delay(1)
    app.conf.task_routes = None
    plain.expires = 60  # an expiry is a time of its own per send
    plain.delay(1)
    plain.expires = None
    token = current_task_var.set(plain)  # inside a task: parent and root ids
    try:
        plain.delay(1)
    finally:
        current_task_var.reset(token)

    def receiver(**_kwargs):
        return None

    signals.before_task_publish.connect(receiver)
    try:
        plain.delay(1)  # receivers may change the message
    finally:
        signals.before_task_publish.disconnect(receiver)
    app.conf.task_serializer = "msgpack"  # not JSON: no template
    plain.delay(1)
    app.conf.task_serializer = "json"
    assert len(general) == 6 and not sent.calls
    plain.delay(1)
    assert len(general) == 6 and len(sent.calls) == 1


def test_transports_without_publish_encoded_take_the_general_path():
    app = Celery("tpl-mem", broker="memory://", set_as_current=False)

    @app.task(name="tpl.mem")
    def mem():
        return None

    assert getattr(app.transport, "publish_encoded", None) is None
    assert tpl.plain_send(app, mem, (), {}) is None
    app.close()
