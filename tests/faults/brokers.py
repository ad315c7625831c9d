"""The three real brokers the fault tests run on, each with what a test needs to reach under
the transport: plant an element in a queue or in the reserved area (as a worker killed
after fetching would leave it), read the dead-letter store, count what is still stored."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import valkey

from celery.messaging.protocol import build_task_message
from celery.transport import envelope
from celery.transport.redis import DEAD_LETTER_KEY
from celery.transport.registry import transport_for_url
from tests.conftest import flushed_redis_url

#: The Redis database of the fault tests (modules run one after the other).
REDIS_DB = 14
NAMES = ("redis", "sqlite", "filesystem")
#: Queue lists (``celery`` and its priority sub-queues), reserved lists and ``unacked``,
#: counted in one script (atomic on the server).
_COUNT_STORED = """
local n = redis.call('HLEN', 'unacked')
for _, key in ipairs(redis.call('KEYS', 'celery*')) do
  if string.sub(key, 1, 7) ~= 'celery-' or string.sub(key, 1, 24) == 'celery-asyncio.reserved.' then
    if redis.call('TYPE', key)['ok'] == 'list' then n = n + redis.call('LLEN', key) end
  end
end
return n
"""


@dataclass
class Broker:
    """One broker (and its result backend) for a test."""

    name: str
    url: str
    backend: str
    root: Path

    # -- planting ---------------------------------------------------------------------------

    def plant(self, raw: bytes, queue: str = "celery") -> None:
        """Put ``raw`` into ``queue`` as one element, next in line after what is there."""
        if self.name == "redis":
            with self._redis() as client:
                client.lpush(queue, raw)
        elif self.name == "sqlite":
            with self._sqlite() as conn:
                conn.execute("INSERT INTO celery_messages (queue, payload) VALUES (?, ?)",
                             (queue, _text(raw)))
        else:
            folder = self.root / "queue"
            folder.mkdir(exist_ok=True)
            (folder / f"0_{time.time_ns():019d}_{uuid.uuid4().hex}.{queue}.msg").write_bytes(raw)

    def plant_reserved(self, raw: bytes, age: float, queue: str = "celery") -> None:
        """Put ``raw`` in the reserved area as if a worker fetched it ``age`` seconds ago
        and died."""
        reserved_at = time.time() - age
        if self.name == "redis":
            tag = uuid.uuid4().hex
            with self._redis() as client:
                client.hset("unacked", tag, b"[" + raw + b', "", "' + queue.encode() + b'"]')
                client.zadd("unacked_index", {tag: reserved_at})
        elif self.name == "sqlite":
            with self._sqlite() as conn:
                conn.execute("INSERT INTO celery_messages (queue, payload, reserved_at, "
                             "deliveries) VALUES (?, ?, ?, 1)", (queue, _text(raw), reserved_at))
        else:
            folder = self.root / "queue" / ".reserved"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"0_{time.time_ns():019d}_{uuid.uuid4().hex}.{queue}.msg"
            (folder / f"{int(reserved_at * 1e9):019d}-{name}").write_bytes(raw)

    # -- reading ----------------------------------------------------------------------------

    def dead_letters(self) -> list[bytes]:
        """The raw elements in the dead-letter store, oldest first."""
        if self.name == "redis":
            with self._redis() as client:
                return client.lrange(DEAD_LETTER_KEY, 0, -1)[::-1]
        if self.name == "sqlite":
            with self._sqlite() as conn:
                rows = conn.execute("SELECT payload FROM celery_dead_letter ORDER BY id").fetchall()
            return [p.encode() if isinstance(p, str) else bytes(p) for (p,) in rows]
        folder = self.root / "queue" / ".dead-letter"
        return [f.read_bytes() for f in sorted(folder.iterdir())] if folder.exists() else []

    def stored(self) -> int:
        """Messages still in the broker: waiting or reserved, in ``unacked`` or in a
        consumer's reserved list (dead letters not counted). Read in one step where the
        broker allows it: a restore moves a batch from ``unacked`` (or a reserved list) back
        to its queue at once, and a count read key by key, between the two, would miss the
        whole batch (a 0 while 41 messages were stored, seen under load)."""
        if self.name == "redis":
            with self._redis() as client:
                return int(client.eval(_COUNT_STORED, 0))
        if self.name == "sqlite":
            with self._sqlite() as conn:
                return conn.execute("SELECT count(*) FROM celery_messages").fetchone()[0]
        # Files are renamed one at a time (queue -> .reserved, and back): the queue is read
        # before and after the reserved folder, so a message renamed once meanwhile is seen.
        folder = self.root / "queue"
        waiting = {f.name for f in folder.glob("*.msg")}
        reserved = {f.name.partition("-")[2] for f in folder.glob(".reserved/*")}
        return len(waiting | reserved | {f.name for f in folder.glob("*.msg")})

    # -- plumbing ---------------------------------------------------------------------------

    def _redis(self) -> valkey.Valkey:
        return valkey.Valkey.from_url(self.url)  # a context manager that closes it

    @contextlib.contextmanager
    def _sqlite(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=10)
        try:
            with conn:  # commits
                yield conn
        finally:
            conn.close()


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def make_broker(name: str, tmp_path: Path) -> Broker:
    """A fresh, empty broker of kind ``name`` and a result backend of the same kind."""
    if name == "redis":
        url = flushed_redis_url(REDIS_DB)
        return Broker(name, url, url, tmp_path)
    if name == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
        transport = transport_for_url(url)
        transport.dead_letters()  # type: ignore[attr-defined]  # (opening makes the tables)
        transport.close()
        return Broker(name, url, f"db+sqlite:///{tmp_path}/results.db", tmp_path)
    (tmp_path / "queue").mkdir(exist_ok=True)
    (tmp_path / "results").mkdir(exist_ok=True)
    return Broker(name, f"filesystem://{tmp_path}/queue", f"file://{tmp_path}/results", tmp_path)


def task_envelope(name: str, args: tuple = (), task_id: str | None = None,
                  queue: str = "celery") -> bytes:
    """The kombu envelope of a task message, as a producer would store it."""
    message = build_task_message(name, args, task_id=task_id, queue=queue)
    return envelope.encode(message)[1].encode()


def nested_envelope(depth: int, name: str = "poison", task_id: str = "poison") -> bytes:
    """A task envelope whose headers also hold a list nested ``depth`` levels deep."""
    env = json.loads(task_envelope(name, task_id=task_id))
    env["headers"]["deep"] = "@@"
    return json.dumps(env).replace('"@@"', "[" * depth + "]" * depth).encode()


def results_of(app, ids: list[str], timeout: float = 20) -> list:
    """What the tasks ``ids`` returned, waiting for each (AsyncResult.get)."""
    from celery.result import AsyncResult

    return [AsyncResult(task_id, app=app).get(timeout=timeout) for task_id in ids]
