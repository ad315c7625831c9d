"""``sqlite://``: a broker in one SQLite file, shared by the processes of one machine.

``sqlite:///relative/path.db`` (relative to the working directory) or
``sqlite:////absolute/path.db``. Every producer and worker process opening the same file
shares its queues; no server runs. The file is in WAL mode, so readers never wait for the
writer; every read-modify-write is one short ``BEGIN IMMEDIATE`` transaction, and a writer
waits up to ``busy_timeout`` (transport option, default 5 s) for another one to finish.

Schema (created with ``CREATE ... IF NOT EXISTS`` when a connection opens)::

    celery_messages
      id           INTEGER PRIMARY KEY AUTOINCREMENT  -- FIFO order; never reused
      queue        TEXT     the queue (the message's routing key)
      priority     INTEGER  0..9, lower first (kombu's virtual transports; 0 when missing)
      payload      TEXT     kombu's JSON envelope (transport/envelope.py), as on Redis
      visible_at   REAL     epoch seconds; not delivered before (the ETA), 0 = at once
      reserved_at  REAL     epoch seconds of the reservation; NULL while waiting
      deliveries   INTEGER  how many times it was reserved
      redelivered  INTEGER  1 once requeued or restored (the envelope is marked too)
    index celery_messages_ready (queue, priority, id, visible_at) WHERE reserved_at IS NULL
    index celery_messages_reserved (reserved_at) WHERE reserved_at IS NOT NULL

    celery_dead_letter (id, queue, payload, reason, dead_at)
      malformed rows (reason: the decoding error) and reject(requeue=False) ("rejected")

    celery_fanout (id AUTOINCREMENT, exchange, payload, published_at)   remote control
    celery_bindings (exchange, routing_key, queue)                       remote control
    celery_direct (id AUTOINCREMENT, queue, payload)                     remote control

Ordering: lower priority number first, then the queues in the order given to ``fetch``, then
id (FIFO): the order kombu's Redis layout gives.
A delivery tag is ``"<id>.<deliveries>"``, so a settle of an old delivery of a message
that was restored and delivered again matches no row and does nothing (ids are never
reused, thanks to AUTOINCREMENT). ``requeue`` keeps a message's id (it is delivered first
again); ``reject(requeue=True)`` re-inserts it with a new id, at the back, as kombu does.

Messages whose ``eta`` header is in the future get that ``visible_at``, so no worker holds
them in memory while they wait (``CAP_DELAYED``). Reservations older than
``visibility_timeout`` (default 3600 s) go back to their queue with ``restore_visible``.

Remote control (``Mailbox``, ``CAP_BROADCAST``): ``fanout_publish`` inserts a row into
``celery_fanout`` and deletes rows older than ``FANOUT_KEEP`` (60 s) in the same transaction.
A subscription starts from the highest id ever given (``sqlite_sequence``) and reads the
rows of its exchange above the last id it saw; writers hold the write lock one at a time,
so ids are committed in increasing order and none is skipped. A subscriber more than 60 s
behind loses what was pruned meanwhile, much as a Redis subscriber that cannot keep up is
disconnected. ``direct_publish`` copies the payload into ``celery_direct`` once per queue
bound in ``celery_bindings``; ``pop_raw`` deletes and returns a queue's rows. Those queues
are not task queues: ``fetch``, ``purge`` and ``queue_length`` never see them. Waiting works
as for a fetch, on a wakeup of its own (``<path>#mailbox``). A stored payload that is not
UTF-8 text is skipped (fanout) or deleted (direct) with a warning.

Waiting: a fetch that finds nothing waits on ``embedded.wakeup_for(path)``, which a publish
in this process notifies, and polls for other processes' writes every 5 ms, backing off to
``polling_interval`` (default 0.1 s). Blocking sqlite3 calls made by coroutines run on a
``BlockingIO`` thread pool, never on an event loop; sync ``publish`` runs on its caller.

``SQLiteDatabase`` (URL to path, per-thread connections with the pragmas, transactions,
error translation) is shared with the ``db+sqlite://`` result backend.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..exceptions import CeleryError, ConnectionLost, DecodeError, ImproperlyConfigured
from ..messaging.protocol import Message, epoch_of
from . import envelope
from .base import (
    CAP_BROADCAST,
    CAP_DELAYED,
    CAP_LEASE,
    CAP_PRIORITY,
    CAP_VISIBILITY_TIMEOUT,
    Delivery,
)
from .embedded import BlockingIO, poll, wakeup_for
from .lease import SQLiteLease

__all__ = ["SQLiteDatabase", "SQLiteTransport", "database_path", "seconds_option"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Primary result codes (sqlite3 exceptions carry the extended code in sqlite_errorcode).
_BUSY, _LOCKED, _READONLY, _CANTOPEN, _NOTADB = 5, 6, 8, 14, 26

#: First poll interval of an idle fetch (seconds); doubles up to ``polling_interval``.
FIRST_POLL = 0.005

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celery_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        payload TEXT NOT NULL,
        visible_at REAL NOT NULL DEFAULT 0,
        reserved_at REAL,
        deliveries INTEGER NOT NULL DEFAULT 0,
        redelivered INTEGER NOT NULL DEFAULT 0)""",
    """CREATE INDEX IF NOT EXISTS celery_messages_ready
        ON celery_messages (queue, priority, id, visible_at) WHERE reserved_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS celery_messages_reserved
        ON celery_messages (reserved_at) WHERE reserved_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS celery_dead_letter (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload BLOB,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS celery_fanout (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange TEXT NOT NULL,
        payload TEXT NOT NULL,
        published_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS celery_fanout_exchange ON celery_fanout (exchange, id)",
    """CREATE TABLE IF NOT EXISTS celery_bindings (
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        queue TEXT NOT NULL,
        PRIMARY KEY (exchange, routing_key, queue)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS celery_direct (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS celery_direct_queue ON celery_direct (queue, id)",
)

#: Seconds a fanout payload is kept for subscribers that have not read it yet.
FANOUT_KEEP = 60.0
#: The most payloads one ``FanoutSubscription.get`` or ``pop_raw`` returns.
BATCH = 1000

_READY = "reserved_at IS NULL AND visible_at <= :now"
_INSERT = (
    "INSERT INTO celery_messages (queue, priority, payload, visible_at, redelivered) "
    "VALUES (?, ?, ?, ?, ?)"
)
_DEAD = "INSERT INTO celery_dead_letter (queue, payload, reason, dead_at) VALUES (?, ?, ?, ?)"
_SETTLE = "DELETE FROM celery_messages WHERE id = ? AND deliveries = ?"
_REQUEUE = (
    "UPDATE celery_messages SET reserved_at = NULL, redelivered = 1, payload = ? "
    "WHERE id = ? AND deliveries = ?"
)


# -- the database file, shared with backends/database.py ----------------------------------


def database_path(url: str, schemes: Iterable[str]) -> str:
    """The absolute file path of a ``scheme:///relative`` or ``scheme:////absolute`` URL.

    Raises:
        ImproperlyConfigured: not such a URL, or an in-memory database.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in tuple(schemes):
        raise ImproperlyConfigured(f"Invalid SQLite URL {url!r}: expected {'/'.join(schemes)}://")
    path = unquote(parts.path)[1:]  # "/rel" -> "rel", "//abs" -> "/abs"
    if parts.netloc or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"Invalid SQLite URL {url!r}: give a file path as {parts.scheme}:///relative.db "
            f"or {parts.scheme}:////absolute/path.db (no host, no query)"
        )
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ImproperlyConfigured(
            f"SQLite URL {url!r} names no database file: give a path, as "
            f"{parts.scheme}:///relative.db or {parts.scheme}:////absolute/path.db (an in-memory "
            "SQLite database can't be shared between threads and processes: for an "
            "in-process broker use memory://)"
        )
    if path.endswith("/"):
        raise ImproperlyConfigured(f"SQLite URL {url!r} names a directory, not a database file")
    return os.path.abspath(path)


def seconds_option(options: dict[str, Any], name: str, default: float) -> float:
    """``options[name]`` as non-negative float seconds; raises ImproperlyConfigured if not."""
    value = options.get(name)
    if value is None:
        return default
    try:
        seconds = float(value.total_seconds() if isinstance(value, dt.timedelta) else value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ImproperlyConfigured(f"{name} must be a number of seconds >= 0, not {value!r}")
    return seconds


class _Handle:
    """One thread's connection; ``lock`` is held while it is used or closed."""

    __slots__ = ("conn", "lock", "owner")

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()
        self.owner = threading.current_thread()


class SQLiteDatabase:
    """One SQLite file, opened with WAL, ``busy_timeout`` and ``schema``.

    Thread-safety: every method may be called from any thread. Each thread uses its own
    connection, opened on first use and found through a ``threading.local``; its
    ``_Handle.lock`` is held while that thread uses it, so ``close`` (from any thread) can
    close it safely. ``_lock`` guards ``_handles`` (every open connection, so that ``close``
    reaches them and connections of threads that ended are closed). Lock order: a handle's
    lock, then ``_lock``; ``close`` never holds both. ``io`` runs calls for coroutines.
    """

    def __init__(self, url: str, *, label: str, schemes: Iterable[str], schema: Sequence[str],
                 busy_timeout: float = 5.0, io_threads: int = 4) -> None:
        self.path = database_path(url, schemes)
        self.label = label
        self.busy_timeout = busy_timeout
        self._schema = tuple(schema)
        self.io = BlockingIO(f"celery-{label.lower().replace(' ', '-')}", io_threads)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: set[_Handle] = set()

    # -- connections ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = _Handle()
        with handle.lock:
            if handle.conn is None:
                handle.conn = self._open()
                self._register(handle)
            yield handle.conn

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False only so that close() may close it from another thread;
        # the handle's lock keeps it to one thread at a time.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable across crashes in WAL mode
            # The write lock only if needed: a new thread's connection must not wait to read.
            if self._schema_missing(conn):
                self._transaction(conn, lambda c: [c.execute(sql) for sql in self._schema])
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema_missing(self, conn: sqlite3.Connection) -> bool:
        """Whether a table or index of the schema is not in the file yet (True if unsure)."""
        creates = re.compile(r"\s*CREATE\s+(?:TABLE|INDEX)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)
        names = [m.group(1) if (m := creates.match(sql)) else None for sql in self._schema]
        found = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        return None in names or not found.issuperset(names)

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL while other processes do the same can fail with
        # SQLITE_BUSY at once (SQLite does not call the busy handler there): retry until
        # busy_timeout. Once the file is in WAL mode, the pragma takes no lock.
        deadline, delay = time.monotonic() + self.busy_timeout, 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if _code(exc) not in (_BUSY, _LOCKED) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        if str(mode).lower() != "wal":
            logger.warning("%s: %s stays in journal mode %r (WAL unsupported here?); "
                           "readers and writers will wait for each other", self.label,
                           self.path, mode)

    def _register(self, handle: _Handle) -> None:
        with self._lock:
            gone = {h for h in self._handles if not h.owner.is_alive()}
            self._handles -= gone
            self._handles.add(handle)
        for old in gone:  # their threads ended: nobody else can be using them
            _close_handle(old)

    def close(self) -> None:
        """Stop the I/O threads and close every thread's connection. Idempotent; any thread
        but an ``io`` one. A later call opens new connections."""
        self.io.close()
        with self._lock:
            handles, self._handles = self._handles, set()
        for handle in handles:
            _close_handle(handle)

    # -- running statements --------------------------------------------------------------

    def read(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on this thread's connection, errors translated."""
        with self.errors(what), self._connection() as conn:
            return fn(conn, *args)

    def write(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in one ``BEGIN IMMEDIATE`` transaction on this thread."""
        with self.errors(what), self._connection() as conn:
            return self._transaction(conn, fn, *args)

    async def aread(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``read`` on the I/O pool, from a running event loop."""
        return await self.io.run(self.read, what, fn, *args)

    async def awrite(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``write`` on the I/O pool, from a running event loop."""
        return await self.io.run(self.write, what, fn, *args)

    async def aping(self) -> None:
        """Open the database (creating it and its tables if needed) and read it.

        Raises:
            ImproperlyConfigured: bad directory, unwritable or not a SQLite file.
            ConnectionLost: the database could not be read (e.g. locked too long).
        """
        await self.aread("ping", lambda c: c.execute("SELECT count(*) FROM sqlite_master").fetchone())

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout): a deferred
        # transaction upgrading from read to write could fail at once under WAL.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    # -- errors --------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn sqlite3 errors into ImproperlyConfigured or ConnectionLost."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.error(what, exc) from exc

    def error(self, what: str, exc: sqlite3.Error) -> CeleryError:
        """Configuration problems (no such directory, not a database, read-only) give
        ImproperlyConfigured; anything else, e.g. a lock held too long, ConnectionLost."""
        code = _code(exc)
        if code == _NOTADB:
            return ImproperlyConfigured(
                f"{self.label}: {self.path} is not a valid SQLite database ({exc})"
            )
        if code in (_CANTOPEN, _READONLY):
            problem = self._path_problem()
            if problem:
                return ImproperlyConfigured(f"{self.label}: cannot use {self.path}: {problem}")
        text = f"{self.label} {what} failed on {self.path}: {exc}"
        if code in (_BUSY, _LOCKED):
            text += f" (another connection held it longer than busy_timeout={self.busy_timeout}s)"
        return ConnectionLost(text)

    def _path_problem(self) -> str | None:
        folder = os.path.dirname(self.path)
        if not os.path.exists(folder):
            return f"directory {folder} does not exist"
        if not os.path.isdir(folder):
            return f"{folder} is not a directory"
        if os.path.isdir(self.path):
            return "it is a directory"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"directory {folder} is not writable (SQLite needs it for the WAL files)"
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            return "the file is not readable and writable"
        return None


def _code(exc: sqlite3.Error) -> int:
    """The primary result code of a sqlite3 error (0 when unknown)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _close_handle(handle: _Handle) -> None:
    with handle.lock:
        conn, handle.conn = handle.conn, None
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


# -- the transport --------------------------------------------------------------------------


def _visible_at(message: Message) -> float:
    """Epoch seconds of a future ``eta`` header (naive means UTC), else 0 (at once)."""
    eta = message.headers.get("eta") if isinstance(message.headers, dict) else None
    try:
        at = epoch_of(eta)
    except ValueError:
        logger.warning("Ignoring unreadable eta %r of message %s", eta, message.headers.get("id"))
        return 0.0
    return at if at is not None and at > time.time() else 0.0


def _row(message: Message) -> tuple[str, int, str, float, int]:
    _, payload, priority = envelope.encode(message)
    return message.routing_key, envelope.clamp_priority(priority), payload, _visible_at(message), 0


def _tags(deliveries: Iterable[Delivery]) -> list[tuple[Delivery, int, int]]:
    """Each delivery with the ``(id, deliveries)`` of its tag ``"<id>.<deliveries>"``."""
    out = []
    for d in deliveries:
        row_id, _, count = d.delivery_tag.partition(".")
        try:
            out.append((d, int(row_id), int(count)))
        except ValueError:
            logger.warning("Ignoring delivery tag %r: not from the SQLite transport", d.delivery_tag)
    return out


@functools.cache
def _fetch_sql(nqueues: int) -> str:
    """Reserve up to :limit ready rows of queues :q0.., RETURNING them: lower priority number
    first, then the queues in the order given (as kombu's Redis layout), then oldest first."""
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority, {i} AS rank FROM celery_messages "
        f"WHERE queue = :q{i} AND {_READY} ORDER BY priority, id LIMIT :limit)"
        for i in range(nqueues)
    )
    return (
        "UPDATE celery_messages SET reserved_at = :now, deliveries = deliveries + 1 "
        f"WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY priority, rank, id LIMIT :limit) "
        "RETURNING id, queue, priority, payload, deliveries, redelivered"
    )


class SQLiteTransport:
    """The broker in one SQLite file (``sqlite://``). See the module docstring.

    Thread-safety: ``publish`` may be called from any thread (it uses that thread's
    connection); coroutines may be awaited on any event loop (their sqlite3 calls run on
    the database's ``BlockingIO`` pool). No state is bound to an event loop.
    """

    capabilities = frozenset({CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, CAP_DELAYED, CAP_BROADCAST,
                              CAP_LEASE})

    def __init__(self, url: str, *, transport_options: dict | None = None,
                 connection_timeout: float | None = None, max_connections: int | None = None,
                 **_ignored: Any) -> None:
        opts = dict(transport_options or {})
        self.url = url
        self.visibility_timeout = seconds_option(opts, "visibility_timeout", 3600.0)
        self.polling_interval = max(seconds_option(opts, "polling_interval", 0.1), FIRST_POLL)
        self.db = SQLiteDatabase(url, label="SQLite broker", schemes=("sqlite",),
                                 schema=_SCHEMA, busy_timeout=seconds_option(opts, "busy_timeout", 5.0))
        self._wakeup = wakeup_for(self.db.path)
        self._mailbox_wakeup = wakeup_for(self.db.path + "#mailbox")

    def __repr__(self) -> str:
        return f"<SQLiteTransport {self.db.path}>"

    # -- publishing ----------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """Insert one message. Blocking, on the calling thread; any thread."""
        self.db.write("publish", _insert, [_row(message)])
        self._wakeup.notify()

    async def apublish(self, message: Message) -> None:
        await self.apublish_many([message])

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        """Insert messages in one transaction, from a running loop."""
        if messages:
            await self.db.awrite("publish", _insert, [_row(m) for m in messages])
            self._wakeup.notify()

    async def declare(self, queues: Iterable[str]) -> None:
        """Nothing to do: a queue exists as soon as a message names it."""

    # -- consuming -----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Reserve up to ``max_count`` ready messages; wait up to ``timeout`` s. Any loop."""
        queues = tuple(dict.fromkeys(queues))
        if not queues or max_count <= 0:
            return []
        found = await poll(self._wakeup, lambda: self.db.io.run(self._reserve, queues, max_count),
                           timeout, FIRST_POLL, self.polling_interval)
        return list(found)

    def _reserve(self, queues: tuple[str, ...], max_count: int) -> list[Delivery]:
        """Reserve and decode ready messages; dead-letter malformed ones. An I/O thread."""
        for _ in range(3):  # again only when a round found nothing but malformed rows
            now = time.time()
            params = {"now": now, "limit": max_count, **{f"q{i}": q for i, q in enumerate(queues)}}
            # A read first: idle pollers then never take the write lock.
            if not self.db.read("fetch", _any_ready, queues, now):
                return []
            deliveries, bad = self.db.write("fetch", _reserve_rows, _fetch_sql(len(queues)),
                                            params, queues)
            for queue, payload, reason in bad:
                logger.warning("Malformed message in SQLite queue %r (%s) moved to "
                               "celery_dead_letter: %r", queue, reason, _head(payload))
            if deliveries or not bad:
                return deliveries
        return []

    # -- settling ------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages (one transaction). A settled or redelivered one is skipped."""
        if tags := [(row_id, count) for _, row_id, count in _tags(deliveries)]:
            await self.db.awrite("ack", lambda c: c.executemany(_SETTLE, tags))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Make the messages ready again in their old place (first in line), redelivered."""
        if rows := [(_redelivered(d.raw), *tag) for d, *tag in _tags(deliveries)]:
            await self.db.awrite("requeue", lambda c: c.executemany(_REQUEUE, rows))
            self._wakeup.notify()

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        """Refuse deliveries: ``requeue=True`` re-inserts them at the back of their queue
        (marked redelivered), ``requeue=False`` moves them to ``celery_dead_letter``."""
        tags = _tags(deliveries)
        if not tags:
            return
        if requeue:
            rows = [(_redelivered(d.raw), row_id, count) for d, row_id, count in tags]
            await self.db.awrite("reject", _requeue_at_back, rows)
            self._wakeup.notify()
        else:
            logger.info("Dead-lettering %d rejected message(s): %s", len(tags),
                        ", ".join(d.delivery_tag for d, _, _ in tags))
            await self.db.awrite("reject", _dead_letter_rows, [t[1:] for t in tags], "rejected")

    async def restore_visible(self) -> int:
        """Make messages reserved longer than ``visibility_timeout`` ready again (marked
        redelivered, in their old place); returns how many. Safe from many processes."""
        cutoff = time.time() - self.visibility_timeout
        restored = await self.db.awrite("restore_visible", _restore_rows, cutoff)
        if restored:
            logger.info("Restored %d unacknowledged message(s) to their queues", restored)
            self._wakeup.notify()
        return restored

    # -- queues and lifecycle ------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Delete every message of ``queue`` not reserved (delayed ones too); the count.
        Publishes this process started earlier land first (``BlockingIO.settle``)."""
        sql = "DELETE FROM celery_messages WHERE queue = ? AND reserved_at IS NULL"
        await self.db.io.settle()
        return await self.db.awrite("purge", lambda c: c.execute(sql, (queue,)).rowcount)

    async def queue_length(self, queue: str) -> int:
        """Messages of ``queue`` not reserved, delayed ones (ETA to come) included."""
        sql = "SELECT count(*) FROM celery_messages WHERE queue = ? AND reserved_at IS NULL"
        return await self.db.aread("queue_length", lambda c: c.execute(sql, (queue,)).fetchone()[0])

    # -- remote control (Mailbox) ---------------------------------------------------------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Insert the payload for the current subscribers; prune ones older than FANOUT_KEEP
        (``routing_key`` is not kept apart: it is in the envelope's delivery_info)."""
        await self.db.awrite("fanout_publish", _fanout_insert, exchange, payload, time.time())
        self._mailbox_wakeup.notify()

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> _Subscription:
        """A subscription that reads rows published from now on (all of them: publishes carry
        no routing key here, so ``routing_key`` narrows nothing). Any loop."""
        last = await self.db.aread("fanout_subscribe", _last_fanout_id)
        return _Subscription(self, exchange, last)

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        sql = "INSERT OR IGNORE INTO celery_bindings VALUES (?, ?, ?)"
        binding = (exchange, routing_key, queue)
        await self.db.awrite("direct_bind", lambda c: c.execute(sql, binding))

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        await self.db.awrite("direct_unbind", _unbind, exchange, routing_key, queue)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """Copy the payload to every queue bound with ``routing_key``; how many. Any loop."""
        count = await self.db.awrite("direct_publish", _direct_insert,
                                     exchange, routing_key, payload)
        if count:
            self._mailbox_wakeup.notify()
        return count

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """Delete and return the payloads waiting in ``queue`` (up to BATCH), oldest first;
        wait up to ``timeout`` s for the first. Any loop."""
        found = await self._mailbox_poll(lambda: self.db.io.run(self._pop, queue), timeout)
        return list(found)

    def _pop(self, queue: str) -> list[str]:
        # A read first: idle pollers then never take the write lock.
        if not self.db.read("pop_raw", _any_direct, queue):
            return []
        return self.db.write("pop_raw", _pop_rows, queue)

    async def _mailbox_poll(self, attempt: Callable[[], Awaitable[Sequence[str]]],
                           timeout: float) -> Sequence[str]:
        """``embedded.poll`` on the mailbox's wakeup with this transport's intervals."""
        return await poll(self._mailbox_wakeup, attempt, timeout, FIRST_POLL, self.polling_interval)

    async def ping(self) -> None:
        """Open and check the database (``SQLiteDatabase.aping``); any loop."""
        await self.db.aping()

    def leader_lease(self, name: str) -> SQLiteLease:
        """Beat's leader lease ``name``, a row in this broker's file (lease.py)."""
        return SQLiteLease(self.db, name)

    def dead_letters(self) -> list[tuple[str, Any, str]]:
        """``(queue, payload, reason)`` of every dead-lettered message, oldest first."""
        sql = "SELECT queue, payload, reason FROM celery_dead_letter ORDER BY id"
        return self.db.read("dead_letters", lambda c: c.execute(sql).fetchall())

    def close(self) -> None:
        """Close every connection and the I/O threads. Idempotent; any thread."""
        self.db.close()

    async def aclose(self) -> None:
        """Nothing is bound to an event loop; ``close`` releases the connections."""


class _Subscription:
    """One subscriber of a fanout exchange (``SQLiteTransport.fanout_subscribe``): the id
    of the last row it saw. Used from the loop that made it, one ``get`` at a time; ``_last``
    is written by the I/O thread that runs the read, while ``get`` awaits it."""

    def __init__(self, transport: SQLiteTransport, exchange: str, last: int) -> None:
        self._transport = transport
        self._exchange = exchange
        self._last = last
        self._closed = False

    async def get(self, timeout: float) -> list[str]:
        """Payloads published since the last call (up to BATCH), oldest first; ``[]`` after
        ``timeout`` s or once closed."""
        if self._closed:
            return []
        db = self._transport.db
        found = await self._transport._mailbox_poll(lambda: db.io.run(self._read), timeout)
        return list(found)

    def _read(self) -> list[str]:
        rows = self._transport.db.read("fanout_get", _fanout_rows, self._exchange, self._last)
        if rows:
            self._last = rows[-1][0]
        return _payloads(rows, f"fanout exchange {self._exchange!r}")

    async def close(self) -> None:
        self._closed = True


# -- statements, run inside SQLiteDatabase.read/write on an I/O (or publishing) thread ----


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(_INSERT, rows)


def _any_ready(conn: sqlite3.Connection, queues: tuple[str, ...], now: float) -> bool:
    marks = ", ".join("?" * len(queues))
    sql = (f"SELECT 1 FROM celery_messages WHERE queue IN ({marks}) "
           "AND reserved_at IS NULL AND visible_at <= ? LIMIT 1")
    return conn.execute(sql, (*queues, now)).fetchone() is not None


def _reserve_rows(conn: sqlite3.Connection, sql: str, params: dict[str, Any],
                  queues: tuple[str, ...]) -> tuple[list[Delivery], list[tuple[str, Any, str]]]:
    """Reserve rows, decode them in order; malformed ones go to the dead letters."""
    rows = conn.execute(sql, params).fetchall()
    rank = {q: i for i, q in enumerate(queues)}
    rows.sort(key=lambda r: (r[2], rank[r[1]], r[0]))  # RETURNING's order is arbitrary
    deliveries, bad, now = [], [], time.time()
    for row_id, queue, _priority, payload, count, redelivered in rows:
        try:
            delivery = envelope.decode(f"{row_id}.{count}", payload, queue)
        except DecodeError as exc:
            bad.append((queue, payload, str(exc)))
            conn.execute(_DEAD, (queue, payload, f"malformed: {exc}", now))
            conn.execute("DELETE FROM celery_messages WHERE id = ?", (row_id,))
            continue
        if redelivered and not delivery.redelivered:
            delivery.redelivered = delivery.delivery_info["redelivered"] = True
        deliveries.append(delivery)
    return deliveries, bad


def _requeue_at_back(conn: sqlite3.Connection, rows: list[tuple[str, int, int]]) -> None:
    for payload, row_id, count in rows:
        found = conn.execute(_SETTLE + " RETURNING queue, priority", (row_id, count)).fetchone()
        if found is not None:
            conn.execute(_INSERT, (found[0], found[1], payload, 0.0, 1))


def _dead_letter_rows(conn: sqlite3.Connection, tags: list[tuple[int, int]], reason: str) -> None:
    now = time.time()
    for tag in tags:
        found = conn.execute(_SETTLE + " RETURNING queue, payload", tag).fetchone()
        if found is not None:
            conn.execute(_DEAD, (found[0], found[1], reason, now))


def _restore_rows(conn: sqlite3.Connection, cutoff: float) -> int:
    expired = conn.execute(
        "SELECT id, deliveries, queue, payload FROM celery_messages "
        "WHERE reserved_at IS NOT NULL AND reserved_at < ?", (cutoff,),
    ).fetchall()
    updates = []
    for row_id, count, queue, payload in expired:
        try:
            updates.append((_redelivered(payload), row_id, count))
        except DecodeError as exc:
            logger.warning("Malformed reserved message %d in queue %r (%s) moved to "
                           "celery_dead_letter: %r", row_id, queue, exc, _head(payload))
            conn.execute(_DEAD, (queue, payload, f"malformed: {exc}", time.time()))
            conn.execute("DELETE FROM celery_messages WHERE id = ?", (row_id,))
    conn.executemany(_REQUEUE, updates)
    return len(updates)


def _fanout_insert(conn: sqlite3.Connection, exchange: str, payload: str, now: float) -> None:
    conn.execute("DELETE FROM celery_fanout WHERE published_at < ?", (now - FANOUT_KEEP,))
    conn.execute("INSERT INTO celery_fanout (exchange, payload, published_at) VALUES (?, ?, ?)",
                 (exchange, payload, now))


def _last_fanout_id(conn: sqlite3.Connection) -> int:
    # sqlite_sequence keeps the highest id ever given, even once its row has been pruned.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'celery_fanout'").fetchone()
    return int(row[0]) if row is not None else 0


def _fanout_rows(conn: sqlite3.Connection, exchange: str, after: int) -> list[tuple[int, Any]]:
    # As a BLOB: a row that is not valid UTF-8 must not make sqlite3 raise for the batch.
    sql = ("SELECT id, CAST(payload AS BLOB) FROM celery_fanout WHERE exchange = ? AND id > ? "
           "ORDER BY id LIMIT ?")
    return conn.execute(sql, (exchange, after, BATCH)).fetchall()


def _unbind(conn: sqlite3.Connection, exchange: str, routing_key: str, queue: str) -> None:
    conn.execute("DELETE FROM celery_bindings WHERE exchange = ? AND routing_key = ? AND queue = ?",
                 (exchange, routing_key, queue))
    conn.execute("DELETE FROM celery_direct WHERE queue = ?", (queue,))


def _direct_insert(conn: sqlite3.Connection, exchange: str, key: str, payload: str) -> int:
    sql = "SELECT queue FROM celery_bindings WHERE exchange = ? AND routing_key = ?"
    queues = conn.execute(sql, (exchange, key)).fetchall()
    conn.executemany("INSERT INTO celery_direct (queue, payload) VALUES (?, ?)",
                     [(queue, payload) for (queue,) in queues])
    return len(queues)


def _any_direct(conn: sqlite3.Connection, queue: str) -> bool:
    sql = "SELECT 1 FROM celery_direct WHERE queue = ? LIMIT 1"
    return conn.execute(sql, (queue,)).fetchone() is not None


def _pop_rows(conn: sqlite3.Connection, queue: str) -> list[str]:
    rows = conn.execute(
        "DELETE FROM celery_direct WHERE id IN (SELECT id FROM celery_direct WHERE queue = ? "
        "ORDER BY id LIMIT ?) RETURNING id, CAST(payload AS BLOB)", (queue, BATCH),
    ).fetchall()
    return _payloads(sorted(rows), f"direct queue {queue!r}")  # RETURNING's order is arbitrary


def _payloads(rows: list[tuple[int, Any]], where: str) -> list[str]:
    """The payloads of ``(id, payload as bytes)`` rows; a row that is not UTF-8 text is
    skipped with a warning."""
    out = []
    for row_id, raw in rows:
        try:
            out.append(bytes(raw).decode("utf-8"))
        except (TypeError, ValueError) as exc:
            logger.warning("Skipping malformed payload %d of the SQLite %s (%s): %r",
                           row_id, where, exc, _head(raw))
    return out


def _redelivered(payload: str | bytes) -> str:
    """The stored envelope marked redelivered. Raises DecodeError if it is not one."""
    return envelope.mark_redelivered(envelope.loads(payload))


def _head(payload: Any) -> Any:
    return payload[:120] if isinstance(payload, str | bytes) else payload
