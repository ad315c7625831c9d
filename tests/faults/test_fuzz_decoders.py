"""Fuzzing everything that decodes input from outside: kombu envelopes, protocol v2 headers,
task bodies, remote-control (pidbox) messages, stored result metas. Whatever the input,
only our own exceptions come out (issue 20: a decoder that raises anything else takes a
worker, a restore or remote control down with it).

Hypothesis draws JSON-shaped values, mutations of real messages and raw bytes; the deep
nesting and size cases the issue found are fixed examples. Deterministic by default
(the same examples every run, so CI does not flake); ``FAULT_SCALE=full`` draws ten times
as many, at random.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from celery import Celery, states
from celery.exceptions import CeleryError, DecodeError, InvalidMessage, MessageError
from celery.messaging import limits, pidbox
from celery.messaging.protocol import build_task_message, check_headers, decode_body
from celery.transport import envelope
from celery.worker.request import Request

from .conftest import FULL

FUZZ = settings(max_examples=2000 if FULL else 200, deadline=None, database=None,
                derandomize=not FULL, suppress_health_check=[HealthCheck.too_slow])

DEEP = "[" * 990 + "]" * 990
DEEPER = "[" * 100_000 + "]" * 100_000

#: Any JSON value, nested a few levels.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20,
)
#: Values for the fields a decoder looks at, right or wrong.
field_values = json_values | st.sampled_from(
    ["", "base64", "application/json", "application/x-msgpack", "utf-8", "celery", "Infinity",
     "2026-01-01T00:00:00", "not a date", -1, 10**400, [None, None], [1, 2, 3]])


def _real_envelope() -> dict[str, Any]:
    message = build_task_message("fuzz.task", (1, "two"), {"k": [3]}, task_id="t-fuzz")
    return json.loads(envelope.encode(message)[1])


def _mutate(doc: Any, path: list[str], value: Any) -> Any:
    """``doc`` with the value at ``path`` (keys of nested mappings) replaced."""
    if not path or not isinstance(doc, dict):
        return value
    out = dict(doc)
    out[path[0]] = _mutate(doc.get(path[0]), path[1:], value)
    return out


ENVELOPE_PATHS = [["body"], ["properties"], ["headers"], ["content-type"], ["content-encoding"],
                  ["properties", "body_encoding"], ["properties", "delivery_info"],
                  ["properties", "delivery_info", "exchange"],
                  ["properties", "delivery_info", "routing_key"],
                  ["properties", "priority"], ["properties", "delivery_tag"],
                  ["headers", "task"], ["headers", "id"], ["headers", "eta"],
                  ["headers", "expires"], ["headers", "timelimit"], ["headers", "redelivered"]]
mutated_envelopes = st.builds(
    lambda path, value: json.dumps(_mutate(_real_envelope(), path, value)),
    st.sampled_from(ENVELOPE_PATHS), field_values)
raw_inputs = st.binary(max_size=200) | st.text(max_size=200) | json_values.map(json.dumps)


def _nested_envelope(deep: str) -> str:
    env = _real_envelope()
    env["headers"]["deep"] = "@@"
    return json.dumps(env).replace('"@@"', deep)


# -- envelopes ---------------------------------------------------------------------------------


@FUZZ
@given(item=mutated_envelopes | raw_inputs)
@example(item=_nested_envelope(DEEP))
@example(item=_nested_envelope(DEEPER))
@example(item=b"\xff\xfe\x00")
@example(item='{"body": "", "properties": {"priority": Infinity}}')
def test_envelope_decode_raises_only_decode_error(item):
    try:
        delivery = envelope.decode("tag", item, "celery")
    except DecodeError:
        return
    assert isinstance(delivery.message.headers, dict)
    assert isinstance(delivery.message.body, bytes)
    envelope.priority_of(json.loads(item))  # and what restores read of it never raises


def test_an_envelope_over_the_size_bound_is_refused(monkeypatch):
    monkeypatch.setattr(limits, "MAX_BYTES", 1000)
    big = json.dumps(_mutate(_real_envelope(), ["headers", "pad"], "x" * 2000))
    with pytest.raises(DecodeError, match="too large"):
        envelope.decode("tag", big, "celery")


# -- headers and the request built from them ---------------------------------------------------


class _Task:
    time_limit = soft_time_limit = None


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(
    ["task", "id", "eta", "expires", "timelimit", "retries", "group", "root_id", "argsrepr",
     "ignore_result", "origin", "x"]), field_values, max_size=8) | json_values)
def test_headers_raise_only_invalid_message_and_a_request_reads_any(headers):
    try:
        name, task_id = check_headers(headers)
    except InvalidMessage:
        return
    message = build_task_message("fuzz.task", (), task_id="t")
    message = type(message)(body=message.body, content_type=message.content_type,
                            content_encoding=message.content_encoding, headers=headers,
                            properties={"priority": headers.get("priority")})
    delivery = envelope.decode("tag", envelope.encode(message)[1], "celery")
    req = Request(delivery, _Task(), name, task_id, False, True)  # type: ignore[arg-type]
    req.time_limits(None, None)
    req.header_time("eta")
    req.header_time("expires")
    req.context([], {}, {}, "host")
    req.info(safe=True)
    req.info(safe=False)


# -- task bodies -------------------------------------------------------------------------------

BODY_TYPES = ["application/json", "application/x-msgpack", "application/data", "text/plain", ""]


@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
       content_type=st.sampled_from(BODY_TYPES),
       content_encoding=st.sampled_from(["utf-8", "binary", "", "no-such-codec"]))
@example(body=("[[], {}, " + DEEP + "]").encode(), content_type="application/json",
         content_encoding="utf-8")
@example(body=DEEPER.encode(), content_type="application/json", content_encoding="utf-8")
@example(body=b"\x91" * 5000 + b"\xc0", content_type="application/x-msgpack",
         content_encoding="binary")
def test_bodies_raise_only_message_errors(body, content_type, content_encoding):
    accept = frozenset({"application/json", "application/x-msgpack"})
    try:
        decoded = decode_body(body, content_type, content_encoding, accept)
    except MessageError:
        return
    assert isinstance(decoded.args, list) and isinstance(decoded.kwargs, dict)


# -- remote control ----------------------------------------------------------------------------

PIDBOX_PATHS = [["method"], ["arguments"], ["destination"], ["pattern"], ["matcher"],
                ["reply_to"], ["ticket"]]


def _pidbox_payload(path: list[str], value: Any, headers: Any) -> str:
    body = {"method": "ping", "arguments": {}, "destination": None, "pattern": None,
            "matcher": None}
    body = _mutate(body, path, value)
    env = json.loads(pidbox.encode({}, "celery.pidbox", "", {}))
    env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    env["headers"] = headers
    return json.dumps(env)


pidbox_payloads = st.builds(_pidbox_payload, st.sampled_from(PIDBOX_PATHS), field_values,
                            st.dictionaries(st.sampled_from(["clock", "expires", "ticket"]),
                                            field_values, max_size=3) | field_values)


@FUZZ
@given(payload=pidbox_payloads | mutated_envelopes | raw_inputs)
@example(payload=_pidbox_payload(["destination"], 5, {}))
@example(payload=_pidbox_payload(["pattern"], "(", {}).replace('"matcher": null',
                                                              '"matcher": "pcre"'))
@example(payload=_nested_envelope(DEEPER))
@example(payload=_pidbox_payload(["method"], "", {"clock": "", "expires": 10**400}))  # found
def test_pidbox_messages_raise_only_our_errors(payload):
    try:
        body, headers = pidbox.decode(payload)
        pidbox.expired(headers)
        pidbox.match_destination(body, "celery@host")
    except CeleryError as exc:
        assert isinstance(exc, MessageError), exc


# -- stored result metas -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend():
    app = Celery(f"fuzz{uuid.uuid4().hex[:6]}", broker="memory://",
                 backend=f"cache+memory://{uuid.uuid4().hex}", set_as_current=False)
    yield app.backend
    app.close()


META_PATHS = [["status"], ["result"], ["traceback"], ["children"], ["date_done"],
              ["result", "exc_type"], ["result", "exc_message"], ["result", "exc_module"]]


def _meta(path: list[str], value: Any) -> bytes:
    meta = {"status": states.FAILURE, "result": {"exc_type": "ValueError", "exc_message": ["x"],
                                                  "exc_module": "builtins"},
            "traceback": None, "children": [], "date_done": None, "task_id": "t"}
    return json.dumps(_mutate(meta, path, value)).encode()


@FUZZ
@given(payload=st.builds(_meta, st.sampled_from(META_PATHS), field_values) | raw_inputs)
@example(payload=DEEPER.encode())
@example(payload=_meta(["result", "exc_type"], "KeyboardInterrupt"))
@example(payload=_meta(["result", "exc_module"], "os.path"))
def test_result_metas_raise_only_message_errors(backend, payload):
    try:
        meta = backend.meta_from_payload("t", payload)
    except MessageError:
        return
    assert isinstance(meta, dict) and isinstance(meta["status"], str)
