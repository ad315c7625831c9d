"""Floats in AMQP headers go as doubles, as py-amqp (kombu) sends them."""

from __future__ import annotations

import pytest

pytest.importorskip("pamqp")

from pamqp import decode, encode  # noqa: E402

from celery.transport import amqp_doubles  # noqa: E402


def test_an_epoch_in_a_header_keeps_its_sub_second_precision():
    amqp_doubles.install()
    amqp_doubles.install()  # idempotent: the original encoder is kept once
    headers = {"expires": 1796532904.123, "timelimit": [1.5, None], "clock": 3, "ok": True,
               "nested": {"at": 0.1}}
    raw = encode.field_table(headers)
    assert b"d" + encode.double(1796532904.123) in raw  # 64-bit, type tag 'd'
    assert decode.field_table(raw)[1] == headers
    assert amqp_doubles._original is not amqp_doubles._encode_table_value
