"""Floats in AMQP headers go as doubles, as py-amqp (kombu) sends them
(amqp_envelope.encode_floats_as_doubles; the interop remote-control test found the 32-bit
floats pamqp writes by default)."""

from __future__ import annotations

import pytest

pytest.importorskip("pamqp")

from pamqp import decode, encode  # noqa: E402

from celery.transport.amqp_envelope import encode_floats_as_doubles  # noqa: E402


def test_an_epoch_in_a_header_keeps_its_sub_second_precision():
    encode_floats_as_doubles()
    patched = encode.encode_table_value
    encode_floats_as_doubles()  # idempotent: not wrapped twice
    assert encode.encode_table_value is patched
    headers = {"expires": 1796532904.123, "timelimit": [1.5, None], "clock": 3, "ok": True,
               "nested": {"at": 0.1}}
    raw = encode.field_table(headers)
    assert b"d" + encode.double(1796532904.123) in raw  # 64-bit, type tag 'd'
    assert decode.field_table(raw)[1] == headers
