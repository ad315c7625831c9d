"""Bounds on input from outside (messages, control commands, stored results), checked
before it is parsed, and the JSON parse that applies them.

Python's JSON parser recurses once per level of nesting, so a payload of a few kilobytes
nested a thousand levels deep raises ``RecursionError`` (or, on a thread with a small stack,
worse) wherever it is parsed, and the same bytes parsed again on a deeper stack fail where
they passed before. A payload is therefore measured first: one that is larger than
``MAX_BYTES`` or nested deeper than ``MAX_DEPTH`` is refused with ``DecodeError`` before
any parser sees it, and anything else the parser raises is turned into ``DecodeError`` too,
so that a caller at a boundary catches one exception type.

Measuring costs nothing for a payload of at most ``QUICK`` characters, which cannot nest
deeper than ``MAX_DEPTH`` (callers on hot paths test ``len(data) > QUICK`` before calling
``check``), and two ``count`` calls for a larger one with fewer brackets than ``MAX_DEPTH``.
Only one with more is scanned properly (strings removed, then the brackets counted in
order).

Pure functions; any thread.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from ..exceptions import DecodeError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "QUICK", "check", "depth_of", "loads_json"]

#: The largest payload (envelope, control message, result) decoded, in bytes (or
#: characters, for text). RabbitMQ's default limit on a message is the same.
MAX_BYTES = 128 * 1024 * 1024
#: The deepest nesting of JSON arrays and objects decoded. Python's JSON parser recurses
#: once per level and fails at the recursion limit (1,000 by default) counting the caller's
#: own frames: this leaves 200 frames to any caller. (Deep enough for any real message: a
#: kombu envelope nests 3 levels, Celery's canvas a few dozen.)
MAX_DEPTH = 800
#: Payloads this short need no measuring: each level of nesting takes two characters.
QUICK = 2 * MAX_DEPTH

_STRING_TEXT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET_TEXT = re.compile(r"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_OTHER_BYTES = bytes(b for b in range(256) if b not in b"[]{}")


def depth_of(data: str | bytes) -> int:
    """How deeply the JSON arrays and objects of ``data`` nest (brackets inside strings do
    not count). Exact for valid JSON; for broken JSON, an estimate the parser then refutes."""
    if isinstance(data, str):
        brackets = _NOT_BRACKET_TEXT.sub("", _STRING_TEXT.sub("", data)).encode("ascii")
    else:
        brackets = _STRING_BYTES.sub(b"", data).translate(None, _OTHER_BYTES)
    return max(accumulate(_STEP[b] for b in brackets), default=0)



def check(data: str | bytes, what: str, max_depth: int | None = None,
          max_bytes: int | None = None, inside_string: int = 0) -> None:
    """Refuse ``data`` (JSON text) that is too large or too deeply nested to parse safely
    (bounds: MAX_DEPTH and MAX_BYTES unless given). ``inside_string``: ``data[1:n]`` is
    known to lie inside one string of the top-level object (a kombu envelope's body): no
    bracket there is counted.

    Raises:
        DecodeError: naming ``what`` and the bound it passed.
    """
    max_depth = MAX_DEPTH if max_depth is None else max_depth
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    if len(data) > max_bytes:
        raise DecodeError(f"{what} is too large: {len(data)} bytes, more than {max_bytes}")
    if len(data) <= 2 * max_depth:
        return
    start = inside_string  # (the top-level object's own bracket is before it)
    if isinstance(data, str):
        brackets = data.count("[", start) + data.count("{", start)
    else:
        brackets = data.count(b"[", start) + data.count(b"{", start)
    if brackets + (start > 0) > max_depth and depth_of(data) > max_depth:
        raise DecodeError(f"{what} is nested more than {max_depth} levels deep")


def loads_json(data: str | bytes | bytearray | memoryview, what: str) -> Any:
    """``json.loads(data)`` within the bounds above; raises only ``DecodeError``."""
    try:
        if not isinstance(data, str):
            # Text first: json.loads would sniff bytes for UTF-16/32 in Python code.
            data = bytes(data).decode("utf-8")
        if len(data) > QUICK:
            check(data, what)
        return json.loads(data)
    except DecodeError:
        raise
    except Exception as exc:  # ValueError, RecursionError, MemoryError, ...: all bad input
        raise DecodeError(f"{what} is not valid JSON: {type(exc).__name__}: {exc}") from None
