"""Protocol v2 golden messages: what upstream Celery 5.7 wrote to Redis, byte for byte.

The fixtures in data/messages.json were captured by gen_fixtures.py from upstream Celery in a
throwaway venv (see that script). We check both directions: we read upstream's messages, and
the messages we build are identical to upstream's apart from per-message ids.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from celery import Celery
from celery.messaging import serialization
from celery.messaging.protocol import decode_body
from celery.transport.redis import RedisTransport, _delivery

DATA = json.loads((Path(__file__).parent / "data" / "messages.json").read_text())
BY_NAME = {entry["name"]: entry for entry in DATA}
ACCEPT_ALL = serialization.accept_set(["json", "msgpack", "pickle"])
AWARE = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
NAIVE = dt.datetime(2024, 1, 2, 3, 4, 5)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def raw(name: str) -> bytes:
    return base64.b64decode(BY_NAME[name]["raw_b64"])


@pytest.fixture(scope="module")
def app():
    app = Celery("proj", broker="redis://127.0.0.1:6379/15", set_as_current=False)

    @app.task(name="proj.tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="proj.tasks.echo")
    def echo(*args, **kwargs):
        return args

    yield app
    app.close()


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_we_read_every_upstream_message(name):
    entry = BY_NAME[name]
    delivery = _delivery("tag", raw(name), "celery")
    msg = delivery.message
    assert msg.headers["task"] == entry["decoded"]["headers"]["task"]
    assert msg.headers["id"] == msg.properties["correlation_id"]
    body = decode_body(msg.body, msg.content_type, msg.content_encoding, ACCEPT_ALL)
    expected_args = entry["decoded"]["_body_decoded"]
    if msg.content_type == "application/json":
        assert serialization.json_dumps([body.args, body.kwargs, body.embed]) == json.dumps(expected_args)


def test_json_rich_types_decode_to_python_types():
    msg = _delivery("tag", raw("json_types"), "celery").message
    body = decode_body(msg.body, msg.content_type, msg.content_encoding, ACCEPT_ALL)
    aware, naive, date, time, uid, dec, text, binary, nested = body.args
    assert aware == AWARE and aware.tzinfo is not None
    assert naive == NAIVE and naive.tzinfo is None
    assert date == dt.date(2024, 1, 2) and time == dt.time(13, 14, 15, 16)
    assert uid == UID and dec == Decimal("3.14")
    assert text == b"hello" and binary == b"\x00\xffbin"
    assert nested == {"nested": [1, {"a": [2.5, None, True]}]}
    assert body.kwargs == {"when": AWARE, "d": dt.date(2024, 1, 2)}


def test_msgpack_and_pickle_messages_decode():
    msg = _delivery("tag", raw("msgpack"), "celery").message
    body = decode_body(msg.body, msg.content_type, msg.content_encoding, ACCEPT_ALL)
    assert body.args == [1, "x", b"\x00\x01bin"] and body.kwargs == {"k": b"v"}
    msg = _delivery("tag", raw("pickle"), "celery").message
    body = decode_body(msg.body, msg.content_type, msg.content_encoding, ACCEPT_ALL)
    assert body.args == [1, {2, 3}, UID]


def _ours(app, name: str, task: str, args, kwargs=None, **options) -> tuple[str, dict]:
    """Our envelope for the upstream message ``name``, with upstream's ids put in."""
    up = BY_NAME[name]["decoded"]
    h = up["headers"]
    options.setdefault("task_id", h["id"])
    if task in app.tasks:
        message, _ = app._prepare(task, args, kwargs, app.tasks[task], options)
    else:
        message, _ = app._prepare(task, args, kwargs, None, options)
    message.headers["origin"] = h["origin"]
    message.properties["reply_to"] = up["properties"]["reply_to"]
    transport = RedisTransport("redis://127.0.0.1:6379/15")
    key, payload = transport.envelope_of(message)
    env = json.loads(payload)
    env["properties"]["delivery_tag"] = up["properties"]["delivery_tag"]
    return key, env


CASES = [
    ("basic", "proj.tasks.add", (2, 2), None, {}),
    ("delay_kwargs", "proj.tasks.add", (), {"x": 1, "y": 2}, {}),
    ("json_types", "proj.tasks.echo",
     (AWARE, NAIVE, dt.date(2024, 1, 2), dt.time(13, 14, 15, 16), UID, Decimal("3.14"), b"hello",
      b"\x00\xffbin", {"nested": [1, {"a": [2.5, None, True]}]}),
     {"when": AWARE, "d": dt.date(2024, 1, 2)}, {}),
    ("msgpack", "proj.tasks.echo", (1, "x", b"\x00\x01bin"), {"k": b"v"}, {"serializer": "msgpack"}),
    ("priority_5", "proj.tasks.add", (1, 1), None, {"priority": 5}),
    ("priority_9", "proj.tasks.add", (1, 1), None, {"priority": 9}),
    ("queue_other", "proj.tasks.add", (1, 1), None, {"queue": "other"}),
    ("send_task", "remote.name", [1], None, {}),
    ("time_limits", "proj.tasks.add", (1, 1), None, {"time_limit": 30, "soft_time_limit": 20}),
    ("ignore_result_option", "proj.tasks.add", (1, 1), None, {"ignore_result": True}),
]


@pytest.mark.parametrize(("name", "task", "args", "kwargs", "options"), CASES, ids=[c[0] for c in CASES])
def test_our_messages_match_upstream_byte_for_byte(app, name, task, args, kwargs, options):
    up = BY_NAME[name]
    key, env = _ours(app, name, task, args, kwargs, **options)
    upstream = json.loads(raw(name))
    if name == "msgpack":
        # argsrepr is display text: upstream renders control bytes of b"\x00\x01bin" as
        # b' bin'; ours is repr(). Everything else must match exactly.
        assert env["headers"].pop("argsrepr") == "(1, 'x', b'\\x00\\x01bin')"
        upstream["headers"].pop("argsrepr")
    assert key == up["queue"]
    assert list(env) == list(upstream)
    assert list(env["headers"]) == list(upstream["headers"])
    assert list(env["properties"]) == list(upstream["properties"])
    assert env["body"] == upstream["body"], base64.b64decode(env["body"])
    assert env == upstream
    if name != "msgpack":
        assert json.dumps(env).encode() == raw(name)


def test_countdown_and_expires_headers_are_iso_utc(app):
    up = BY_NAME["countdown_expires"]["decoded"]["headers"]
    _, env = _ours(app, "countdown_expires", "proj.tasks.add", (1, 2), None, countdown=10, expires=60)
    for field in ("eta", "expires"):
        ours = dt.datetime.fromisoformat(env["headers"][field])
        theirs = dt.datetime.fromisoformat(up[field])
        assert ours.utcoffset() == theirs.utcoffset() == dt.timedelta(0)
    assert env["headers"]["eta"].endswith("+00:00") and up["eta"].endswith("+00:00")
