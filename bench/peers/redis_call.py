"""The body of the peers' "call" task: one Redis round trip (INCR) with a blocking client.

The client library is whichever the venv has: valkey-py in ours, redis-py in the peers'.
One client per process, made on first use in that process (a prefork pool forks after
import, and a connection must not be shared across a fork); its connection pool is
thread-safe, so the worker's threads share it. ``_lock`` guards making it; ``_state`` is
replaced whole (one reference, read atomically), never changed in place.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

try:
    import valkey as _lib
except ImportError:  # the peers' venvs: redis-py
    import redis as _lib  # type: ignore[no-redef]

KEY = "bench:calls"
_lock = threading.Lock()
_state: tuple[int, Any] = (0, None)  #: (pid that made the client, client)


def _get() -> Any:
    global _state
    pid, client = _state
    if pid == os.getpid():
        return client
    with _lock:
        if _state[0] != os.getpid():
            url = urlsplit(os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11"))
            client = _lib.Redis(host=url.hostname or "127.0.0.1", port=url.port or 6379,
                                db=int(url.path.lstrip("/") or 0))
            _state = (os.getpid(), client)
        return _state[1]


def incr() -> int:
    """One INCR on the bench database."""
    return int(_get().incr(KEY))
