"""messaging/limits.py: bounds on outside input, checked before parsing."""

from __future__ import annotations

import json

import pytest

from celery.exceptions import DecodeError
from celery.messaging import limits
from celery.transport import envelope


@pytest.mark.parametrize("text, depth", [
    ("1", 0), ("[]", 1), ("{}", 1), ('{"a": [1, {"b": []}]}', 4),
    ('["[[[[", "}}}"]', 1),  # brackets inside strings do not count
    ('["\\"[[["]', 1),  # nor after an escaped quote
    ("[" * 700 + "]" * 700, 700), ("[" * 900 + "]" * 900, 900),
])
def test_depth_of_counts_nesting_outside_strings(text: str, depth: int):
    assert limits.depth_of(text) == depth
    assert limits.depth_of(text.encode()) == depth


def test_check_passes_wide_documents_with_many_brackets():
    wide = json.dumps([[i] for i in range(10_000)])  # 10,001 brackets, 2 levels
    limits.check(wide, "x")
    assert limits.loads_json(wide, "x")[-1] == [9_999]


@pytest.mark.parametrize("depth", [limits.MAX_DEPTH + 1, 995, 100_000])
def test_too_deep_is_refused_before_parsing(depth: int):
    text = "[" * depth + "]" * depth
    with pytest.raises(DecodeError, match="nested more than 800 levels"):
        limits.loads_json(text, "the thing")


def test_too_large_is_refused():
    with pytest.raises(DecodeError, match="too large"):
        limits.check(b"x" * 11, "a payload", max_bytes=10)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"{", b"[1,]", b"NaN-ish", "\ud800"])
def test_loads_json_raises_only_decode_error(data):
    with pytest.raises(DecodeError):
        limits.loads_json(data, "x")


@pytest.mark.parametrize("item", [
    "[1]", "{}", '{"body": 1, "properties": {}}', '{"body": "", "properties": []}',
    '{"body": "", "properties": {"delivery_info": 3}}',
    '{"body": "", "properties": {"delivery_info": {"exchange": 5}}}',
    '{"body": "", "properties": {}, "content-type": 7}',
    '{"body": "", "properties": {}, "headers": "text"}',
    '{"body": "!!", "properties": {"body_encoding": "base64"}}',
    '{"body": "", "properties": {}, "headers": {"x": ' + "[" * 990 + "]" * 990 + "}}",
])
def test_envelope_decode_raises_only_decode_error(item: str):
    with pytest.raises(DecodeError):
        envelope.decode("t", item, "q")


@pytest.mark.parametrize("value, expected", [
    (None, 0), (3, 3), ("7", 7), (-4, 0), (255, 9), ("x", 0), ([1], 0),
    (float("inf"), 0), (float("nan"), 0),
])
def test_clamp_priority(value, expected):
    assert envelope.clamp_priority(value) == expected
