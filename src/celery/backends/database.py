"""``db+sqlite://``: results in one SQLite file (Celery's database backend URL, stdlib sqlite3).

``db+sqlite:///relative/path.db`` or ``db+sqlite:////absolute/path.db``; other ``db+``
dialects are not built in. The layout is our own, not the pickled columns of upstream's
SQLAlchemy backend, so upstream Celery can't read these results (nor we its)::

    celery_taskmeta
      task_id     TEXT PRIMARY KEY
      status      TEXT  the state, e.g. SUCCESS
      meta        BLOB  the encoded meta, byte for byte what the Redis backend stores
      date_done   REAL  epoch seconds of the write
      expires_at  REAL  epoch seconds (write + result_expires), NULL = never
    index celery_taskmeta_expires (expires_at) WHERE expires_at IS NOT NULL

    celery_tasksetmeta          saved groups (GroupResult.save)
      taskset_id  TEXT PRIMARY KEY
      meta        BLOB  the encoded {"result": <GroupResult.as_tuple()>}
      expires_at  REAL
    celery_chord                one row per chord joined here
      group_id    TEXT PRIMARY KEY
      size        INTEGER  the header size (NULL until the sender stored it)
      extra       INTEGER  members added later (Task.add_to_chord)
      claim       TEXT     the member that completed it, then 'done'
      claim_until REAL     a claim older than this (its holder died?) may be taken again
      expires_at  REAL
    celery_chord_part           finished members
      group_id, member ("<task id>:<index>", counted once), position (header index), part

A chord member's report is one ``BEGIN IMMEDIATE`` transaction: record it (once), count,
and claim the chord if that completed the header; the claimer gets every part back in
header order and sends the body (canvas/join.py). Writers in other processes wait for the
lock, so exactly one member claims.

A stored SUCCESS is never overwritten (as on Redis: a redelivered task must not clobber
its result), unless it has expired. Expired rows read as missing (PENDING); writes delete
them at most every ``CLEANUP_INTERVAL`` seconds, and ``cleanup()`` deletes them all (as
Celery's ``backend_cleanup``).

Waiting (``await_ready``) re-reads the row when a write in this process notifies (through
``embedded.wakeup_for``) and polls for other processes' writes every 1 ms, backing off to
50 ms. The file, connections, pragmas and errors are ``transport.sqlite.SQLiteDatabase``:
WAL, ``busy_timeout`` (``result_backend_transport_options``, default 5 s), one connection
per thread, and sqlite3 calls made by coroutines run on its ``BlockingIO`` pool.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .. import states
from ..exceptions import ImproperlyConfigured
from ..transport.embedded import wakeup_for
from ..transport.sqlite import SQLiteDatabase, seconds_option
from .base import Conf, ResultBackend
from .groups import ChordPart
from .polling import forget_pollers

__all__ = ["CLEANUP_INTERVAL", "DatabaseBackend"]

#: Writes delete expired rows at most this often (seconds).
CLEANUP_INTERVAL = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celery_taskmeta (
        task_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        meta BLOB NOT NULL,
        date_done REAL NOT NULL,
        expires_at REAL)""",
    """CREATE INDEX IF NOT EXISTS celery_taskmeta_expires
        ON celery_taskmeta (expires_at) WHERE expires_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
        taskset_id TEXT PRIMARY KEY,
        meta BLOB NOT NULL,
        expires_at REAL)""",
    """CREATE TABLE IF NOT EXISTS celery_chord (
        group_id TEXT PRIMARY KEY,
        size INTEGER,
        extra INTEGER NOT NULL DEFAULT 0,
        claim TEXT,
        claim_until REAL,
        expires_at REAL)""",
    """CREATE TABLE IF NOT EXISTS celery_chord_part (
        group_id TEXT NOT NULL,
        member TEXT NOT NULL,
        position REAL NOT NULL,
        part BLOB NOT NULL,
        PRIMARY KEY (group_id, member))""",
)

# The WHERE of the upsert keeps a stored SUCCESS unless it has expired (?6 = now).
_STORE = f"""
INSERT INTO celery_taskmeta (task_id, status, meta, date_done, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status, meta = excluded.meta,
    date_done = excluded.date_done, expires_at = excluded.expires_at
WHERE celery_taskmeta.status != '{states.SUCCESS}' OR celery_taskmeta.expires_at <= ?6
"""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_EXPIRED = "DELETE FROM celery_taskmeta WHERE expires_at <= ?"
_EXPIRED_OTHERS = (
    "DELETE FROM celery_tasksetmeta WHERE expires_at <= ?1",
    "DELETE FROM celery_chord_part WHERE group_id IN "
    "(SELECT group_id FROM celery_chord WHERE expires_at <= ?1)",
    "DELETE FROM celery_chord WHERE expires_at <= ?1",
)
#: How long a chord's ``done`` mark is kept after its body was sent (seconds).
DONE_MARK_SECONDS = 600.0
#: Task ids per SELECT (SQLite limits the number of parameters of a statement).
_CHUNK = 500


class DatabaseBackend(ResultBackend):
    supports_chord_join = True

    """Results in a SQLite file (``db+sqlite://``); see the module docstring.

    Thread-safety: every method may be called from any thread and coroutines awaited on any
    loop: connections are per thread (``SQLiteDatabase``), and ``_cleanup_lock`` guards
    ``_next_cleanup``.
    """

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        if not url or not url.lower().startswith("db+sqlite:"):
            raise ImproperlyConfigured(
                f"Unsupported database result backend URL {url!r}: only db+sqlite:///path.db "
                "is built in"
            )
        opts = {**(conf.get("result_backend_transport_options") or {}), **self.options}
        self.db = SQLiteDatabase(url, label="SQLite result backend", schemes=("db+sqlite",),
                                 schema=_SCHEMA, busy_timeout=seconds_option(opts, "busy_timeout", 5.0))
        self._wakeup = wakeup_for(f"{self.db.path}#celery_taskmeta")
        self._cleanup_lock = threading.Lock()
        self._next_cleanup = 0.0

    def __repr__(self) -> str:
        return f"<DatabaseBackend {self.db.path}>"

    # -- storage --------------------------------------------------------------------------

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Upsert every item in one transaction, then wake this process's waiters."""
        if not items:
            return
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        rows = [(tid, state, payload, now, expires_at, now) for tid, payload, state in items]
        await self.db.awrite("store", _store, rows, now if self._cleanup_due() else None)
        self._wakeup.notify()

    def _cleanup_due(self) -> bool:
        now = time.monotonic()
        with self._cleanup_lock:
            if now < self._next_cleanup:
                return False
            self._next_cleanup = now + CLEANUP_INTERVAL
            return True

    async def aget_raw(self, task_id: str) -> bytes | None:
        """The stored meta, or None when missing or expired (any loop)."""
        return (await self.aget_many_raw([task_id]))[task_id]

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Stored metas of several tasks (None: missing or expired), read together."""
        return await self.db.aread("read", _read_many, list(task_ids))

    async def adelete(self, task_id: str) -> None:
        """Forget the task's result (any loop)."""
        await self.adelete_many([task_id])

    async def adelete_many(self, task_ids: Sequence[str]) -> None:
        """Forget several results, in one transaction per ``_CHUNK`` of them (any loop)."""
        ids = list(task_ids)
        for start in range(0, len(ids), _CHUNK):
            await self.db.awrite("delete", _delete_many, ids[start:start + _CHUNK])

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait for a ready state: woken by writes in this process, polling for others.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            celery.exceptions.ConnectionLost: the database could not be read.
        """
        return await self._poll_ready(task_id, timeout, self._wakeup)

    # -- groups and chords (backends/groups.py) -----------------------------------------------

    def _expires_at(self, seconds: float | None) -> float | None:
        return time.time() + seconds if seconds else None

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        sql = "INSERT OR REPLACE INTO celery_tasksetmeta VALUES (?, ?, ?)"
        row = (group_id, payload, self._expires_at(expires))
        await self.db.awrite("save group", lambda c: c.execute(sql, row))

    async def _aget_group(self, group_id: str) -> bytes | None:
        sql = f"SELECT meta FROM celery_tasksetmeta WHERE taskset_id = ? AND {_LIVE}"

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql, (group_id, time.time())).fetchone()
            return None if row is None else bytes(row[0])

        return await self.db.aread("restore group", read)

    async def _adelete_group(self, group_id: str) -> None:
        sql = "DELETE FROM celery_tasksetmeta WHERE taskset_id = ?"
        await self.db.awrite("delete group", lambda c: c.execute(sql, (group_id,)))

    async def _aset_chord_sizes(self, sizes: Sequence[tuple[str, int]]) -> None:
        await self.db.awrite("prepare chord", _set_sizes, sizes,
                             self._expires_at(self.chord_expires))

    def _claim_seconds(self) -> float:
        """How long a claim holds (as on Redis: twice the join timeout, at least 5 s)."""
        return max(5.0, float(self.conf.get("result_chord_join_timeout") or 5.0) * 2)

    def chord_part(self, group_id: str, task_id: str, index: int | None,
                   part: bytes) -> ChordPart:
        """Report a finished member, on the calling thread (no hop to the portal loop)."""
        return self.db.write("chord part", _chord_part, group_id, task_id, index, part,
                             self._claim_seconds())

    async def achord_part(self, group_id: str, task_id: str, index: int | None,
                          part: bytes) -> ChordPart:
        return await self.db.awrite("chord part", _chord_part, group_id, task_id, index, part,
                                    self._claim_seconds())

    async def achord_done(self, group_id: str, token: str) -> None:
        await self.db.awrite("chord done", _chord_done, group_id, token)

    async def aadd_to_chord(self, group_id: str, count: int = 1) -> None:
        sql = ("INSERT INTO celery_chord (group_id, extra, expires_at) VALUES (?1, ?2, ?3) "
               "ON CONFLICT (group_id) DO UPDATE SET extra = extra + ?2")
        args = (group_id, count, self._expires_at(self.chord_expires))
        await self.db.awrite("add to chord", lambda c: c.execute(sql, args))

    async def acleanup(self) -> int:
        """Delete every expired result; returns how many (any loop)."""
        return await self.db.awrite("cleanup", lambda c: c.execute(_EXPIRED, (time.time(),)).rowcount)

    def cleanup(self) -> int:
        """Delete every expired result (Celery's ``backend_cleanup``); blocking."""
        return self._call(self.acleanup())

    async def ping(self) -> None:
        """Open and check the database (``SQLiteDatabase.aping``); any loop."""
        await self.db.aping()

    async def aclose(self) -> None:
        """Drop the running loop's result poller; connections are not bound to a loop."""
        forget_pollers(self, asyncio.get_running_loop())

    def close(self) -> None:
        """Close every connection and the I/O threads. Idempotent; any thread."""
        forget_pollers(self)
        self.db.close()
        super().close()


def _delete_many(conn: sqlite3.Connection, task_ids: list[str]) -> None:
    marks = ", ".join("?" * len(task_ids))
    conn.execute(f"DELETE FROM celery_taskmeta WHERE task_id IN ({marks})", task_ids)


def _read_many(conn: sqlite3.Connection, task_ids: list[str]) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = dict.fromkeys(task_ids)
    now = time.time()
    for start in range(0, len(task_ids), _CHUNK):
        chunk = task_ids[start:start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT task_id, meta FROM celery_taskmeta WHERE task_id IN ({marks}) AND {_LIVE}"
        for task_id, meta in conn.execute(sql, (*chunk, now)):
            found[task_id] = meta.encode() if isinstance(meta, str) else bytes(meta)
    return found


def _store(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], cleanup_at: float | None) -> None:
    conn.executemany(_STORE, rows)
    if cleanup_at is not None:
        conn.execute(_EXPIRED, (cleanup_at,))
        for sql in _EXPIRED_OTHERS:
            conn.execute(sql, (cleanup_at,))


def _set_sizes(conn: sqlite3.Connection, sizes: Sequence[tuple[str, int]],
               expires_at: float | None) -> None:
    conn.executemany(
        "INSERT INTO celery_chord (group_id, size, expires_at) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (group_id) DO UPDATE SET size = ?2, claim = NULL, claim_until = NULL, "
        "expires_at = ?3",
        [(group_id, int(size), expires_at) for group_id, size in sizes])


def _chord_part(conn: sqlite3.Connection, group_id: str, task_id: str, index: int | None,
                part: bytes, claim_seconds: float) -> ChordPart:
    """Record one member and maybe claim the chord (in the caller's transaction)."""
    row = conn.execute("SELECT size, extra, claim, claim_until FROM celery_chord "
                       "WHERE group_id = ?", (group_id,)).fetchone()
    if row is not None and row[2] == "done":
        return ChordPart(late=True)
    position = float("inf") if index is None else float(index)
    conn.execute("INSERT OR IGNORE INTO celery_chord_part VALUES (?, ?, ?, ?)",
                 (group_id, f"{task_id}:{'+inf' if index is None else index}", position, part))
    now = time.time()
    if row is None or row[0] is None or (row[2] is not None and (row[3] or 0) > now):
        return ChordPart()
    count = conn.execute("SELECT count(*) FROM celery_chord_part WHERE group_id = ?",
                         (group_id,)).fetchone()[0]
    if count < int(row[0]) + int(row[1] or 0):
        return ChordPart()
    token = uuid.uuid4().hex
    conn.execute("UPDATE celery_chord SET claim = ?, claim_until = ? WHERE group_id = ?",
                 (token, now + claim_seconds, group_id))
    parts = conn.execute("SELECT part FROM celery_chord_part WHERE group_id = ? "
                         "ORDER BY position, member", (group_id,)).fetchall()
    return ChordPart(claimed=True, parts=tuple(bytes(p[0]) for p in parts), token=token)


def _chord_done(conn: sqlite3.Connection, group_id: str, token: str) -> None:
    row = conn.execute("SELECT claim FROM celery_chord WHERE group_id = ?", (group_id,)).fetchone()
    if row is None or row[0] != token:
        return
    conn.execute("DELETE FROM celery_chord_part WHERE group_id = ?", (group_id,))
    # The mark stays a while, so that a late duplicate of a member is seen as such.
    conn.execute("UPDATE celery_chord SET claim = 'done', expires_at = ? WHERE group_id = ?",
                 (time.time() + DONE_MARK_SECONDS, group_id))
