"""The yaml serializer: kombu's (PyYAML's safe dumper and loader, application/x-yaml)."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from celery.exceptions import ContentDisallowed, DecodeError
from celery.messaging import serialization
from celery.messaging.protocol import build_task_message, decode_body


def test_yaml_task_messages_round_trip_and_read_kombus_form():
    message = build_task_message("t", [1, "two", dt.date(2024, 1, 2)], {"k": [3.5, None]},
                                 serializer="yaml")
    assert (message.content_type, message.content_encoding) == ("application/x-yaml", "utf-8")
    accept = serialization.accept_set(["yaml"])
    body = decode_body(message.body, message.content_type, message.content_encoding, accept)
    assert body.args == [1, "two", dt.date(2024, 1, 2)] and body.kwargs == {"k": [3.5, None]}
    theirs = yaml.safe_dump(([4], {"x": "y"}, {"callbacks": None}))  # kombu's encoder
    body = decode_body(theirs.encode(), "application/x-yaml", "utf-8", accept)
    assert (body.args, body.kwargs) == ([4], {"x": "y"})
    with pytest.raises(ContentDisallowed):  # not accepted unless listed, as any serializer
        decode_body(message.body, message.content_type, message.content_encoding,
                    serialization.accept_set(["json"]))


def test_yaml_loads_plain_data_only():
    evil = b"- !!python/object/apply:os.system ['echo owned']\n- {}\n- {}\n"
    with pytest.raises(DecodeError, match="Could not decode application/x-yaml"):
        serialization.loads(evil, "application/x-yaml", "utf-8", None)
    deep = ("[" * 5000 + "]" * 5000).encode()
    with pytest.raises(DecodeError, match="nested more than"):
        serialization.loads(deep, "application/x-yaml", "utf-8", None)
