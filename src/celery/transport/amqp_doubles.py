"""Python floats in AMQP headers as doubles (``d``), the way py-amqp (kombu) encodes them.

pamqp, the codec under aio-pika, writes a float in a field table as a 32-bit ``f``. Its
24-bit mantissa rounds an epoch to a multiple of 128 seconds, so the ``expires`` header of
a remote-control broadcast (kombu's pidbox: send time + timeout) arrived up to a minute in
the past about half the time, and workers, ours and upstream's alike, dropped the command
as expired. Task headers carry floats too (``timelimit``). py-amqp encodes every Python
float as a 64-bit ``d``; ``install()`` makes pamqp do the same, for every connection of
the process (pamqp has no per-connection encoder). Its decoder already reads ``d``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["install"]

_lock = threading.Lock()  #: makes install() once, whichever thread connects first
_original: Callable[[Any], bytes] | None = None


def _encode_table_value(value: Any) -> bytes:
    from pamqp import encode

    if isinstance(value, float):
        return b"d" + encode.double(value)
    assert _original is not None
    return _original(value)


def install() -> None:
    """Make pamqp encode floats as doubles (idempotent, any thread). Called by
    ``Connections`` before its first connection (pamqp ships with aio-pika, imported then)."""
    global _original
    from pamqp import encode

    with _lock:
        if encode.encode_table_value is not _encode_table_value:
            _original = encode.encode_table_value
            encode.encode_table_value = _encode_table_value
