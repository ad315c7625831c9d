"""The bodies of the peers' realistic tasks: one Redis round trip (INCR), CPU work, payloads.

The client library is whichever the venv has: valkey-py in ours, redis-py in the peers'.

* ``incr()``: one INCR with a blocking client, one per process, made on first use in that
  process (a prefork pool forks after import, and a connection must not be shared across a
  fork); its connection pool is thread-safe, so the worker's threads share it. ``_lock``
  guards making it; ``_state`` is replaced whole (one reference, read atomically), never
  changed in place.
* ``aincr()``: the same INCR with the library's asyncio client, one per event loop (a
  client's connections belong to the loop that opened them); ``_lock`` guards ``_aclients``.
* ``burn()``: about 0.2 ms of pure-Python CPU work (the "mix" tasks: ``burn()`` then one INCR).
* ``PAYLOADS``: the string argument of the 1 KB and 100 KB tasks, by workload kind.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

try:
    import valkey as _lib
    import valkey.asyncio as _alib
except ImportError:  # the peers' venvs: redis-py
    import redis as _lib  # type: ignore[no-redef]
    import redis.asyncio as _alib  # type: ignore[no-redef]

KEY = "bench:calls"
BURN_ROUNDS = 2_000  #: burn()'s loop length: about 0.2 ms on the 2-core benchmark machine
PAYLOADS = {"kb1": "x" * 1024, "kb100": "x" * 102_400}
_lock = threading.Lock()
_state: tuple[int, Any] = (0, None)  #: (pid that made the client, client)
_aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  #: event loop -> client


def _options() -> dict:
    url = urlsplit(os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11"))
    return {"host": url.hostname or "127.0.0.1", "port": url.port or 6379,
            "db": int(url.path.lstrip("/") or 0)}


def _get() -> Any:
    global _state
    pid, client = _state
    if pid == os.getpid():
        return client
    with _lock:
        if _state[0] != os.getpid():
            _state = (os.getpid(), _lib.Redis(**_options()))
        return _state[1]


def incr() -> int:
    """One INCR on the bench database, blocking."""
    return int(_get().incr(KEY))


async def aincr() -> int:
    """One INCR on the bench database with the running loop's asyncio client."""
    loop = asyncio.get_running_loop()
    with _lock:
        client = _aclients.get(loop)
        if client is None:
            client = _aclients[loop] = _alib.Redis(**_options())
    return int(await client.incr(KEY))


def burn() -> int:
    """Pure-Python CPU work (it holds the GIL throughout, as most application code does)."""
    total = 0
    for i in range(BURN_ROUNDS):
        total += i * i % 7
    return total
