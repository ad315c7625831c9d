"""``db+<SQLAlchemy URL>``: results in upstream Celery's SQL tables (PostgreSQL, MySQL, ...).

``db+postgresql://user@host/db``, ``db+postgresql+psycopg://...``, ``db+mysql+pymysql://...``
or any SQLAlchemy 2 URL after ``db+`` (``db+sqlite://`` is the separate, stdlib SQLite
backend in ``database.py``). Rows are upstream's ``celery_taskmeta``/``celery_tasksetmeta``
as Celery 5.7 writes them (``sql_tables.py``), so upstream Celery reads our results and we
read its, including the pickled rows of older Celery.

What differs from upstream's backend, and why:

* A stored SUCCESS is never overwritten (a redelivered task must not clobber its result),
  as on our other backends and Celery 5.7 (older Celery overwrote it).
* Rows whose ``date_done`` is older than ``result_expires`` read as missing (PENDING), and
  writes delete them at most every ``CLEANUP_INTERVAL`` seconds; ``cleanup()`` (Celery's
  ``backend_cleanup``) deletes them all, as upstream's does.
* ``group_id`` and ``parent_id`` are not stored: upstream's tables have no columns for
  them either.
* Chords are joined by ``celery.chord_unlock`` polling the header's rows, as upstream does
  for this backend.

The engine is SQLAlchemy's synchronous one, with the driver the URL names; its calls run on
this backend's ``BlockingIO`` threads, never on an event loop (any DB-API driver works, and
a pooled connection is never shared by two threads). ``database_engine_options`` go to
``create_engine`` (upstream's defaults: ``pool_pre_ping``, ``pool_recycle=3600``).
Waiting (``await_ready``) re-reads when a write in this process notifies, and polls for
other processes' writes from 10 ms, backing off to ``POLL_LONGEST``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .. import states
from ..exceptions import BackendError, BackendStoreError, ConnectionLost, ImproperlyConfigured
from ..messaging import serialization
from ..transport.embedded import BlockingIO, wakeup_for
from .base import Conf, ResultBackend
from .polling import forget_pollers
from .sql_tables import (
    EXTENDED,
    PICKLE_MARK,
    Tables,
    dump_group,
    from_db_time,
    load_group,
    load_pickled,
    to_db_time,
)

__all__ = ["CLEANUP_INTERVAL", "SQLBackend"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Writes delete expired rows at most this often (seconds).
CLEANUP_INTERVAL = 60.0
#: Longest pause between two polls of a waited-for result (seconds).
POLL_LONGEST = 0.25
#: Task ids per SELECT.
_CHUNK = 500
_PICKLE = "application/x-python-serialize"
#: Tries of a transaction that met a unique-key conflict or a deadlock.
_ATTEMPTS = 5


class SQLBackend(ResultBackend):
    """Results in upstream Celery's SQL tables; see the module docstring.

    Thread-safety: every method may be called from any thread and coroutines awaited on any
    loop. The engine (its pool is thread-safe) is made once under ``_lock``, which also
    guards ``_tables_ready``, ``_columns`` and ``_next_cleanup``; each statement checks out
    its own connection on a ``BlockingIO`` thread.
    """

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        engine_options = options.pop("engine_options", None)
        super().__init__(conf, url, **options)
        if not url or not url.lower().startswith("db+"):
            raise ImproperlyConfigured(f"Not a database result backend URL: {url!r}")
        try:
            self.sa_url = sa.engine.make_url(url[3:])
        except sa_exc.ArgumentError as exc:
            raise ImproperlyConfigured(f"Invalid database result backend URL: {exc}") from None
        self.engine_options = {**(conf.get("database_engine_options") or {}),
                               **(engine_options or {})}
        callback = conf.get("database_engine_callback")
        if isinstance(callback, str):
            from ..transport.registry import load_class

            spec = callback if ":" in callback else ":".join(callback.rsplit(".", 1))
            try:
                callback = load_class(spec, "")
            except (ImportError, AttributeError, ValueError) as exc:
                raise ImproperlyConfigured(
                    f"database_engine_callback {callback!r} cannot be imported: {exc}") from None
        if callback is not None and not callable(callback):
            raise ImproperlyConfigured(
                f"database_engine_callback must be callable, got {callback!r}")
        self._engine_callback: Callable[[sa.Engine], Any] | None = callback
        self.tables = Tables(conf.get("database_table_names"), conf.get("database_table_schemas"))
        #: The task table's columns we read and write (set with ``_tables_ready``).
        self._columns: list[sa.Column[Any]] = []
        self.trusted = _PICKLE in self.accept
        self.io = BlockingIO("celery-sql-backend", int(self.options.get("io_threads", 4)))
        label = self.sa_url.render_as_string(hide_password=True)
        self._label = f"SQL result backend {label}"
        self._wakeup = wakeup_for(f"{label}#{self.tables.task.fullname}")
        self._lock = threading.Lock()
        self._engine: sa.Engine | None = None
        self._tables_ready = False
        self._next_cleanup = 0.0
        if conf.get("database_create_tables_at_setup", True):
            try:
                self._run(lambda conn: None)
            except ConnectionLost as exc:  # as upstream, a later use tries again
                logger.warning("%s: tables not created at setup: %s", self._label, exc)

    def __repr__(self) -> str:
        return f"<SQLBackend {self._label}>"

    # -- engine, connections and errors ----------------------------------------------------

    def _get_engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                try:
                    engine = sa.create_engine(self.sa_url, **self.engine_options)
                except ImportError as exc:
                    raise ImproperlyConfigured(
                        f"The {self._label} needs the database driver {exc.name!r}: "
                        f"install it, or name an installed one in the URL "
                        f"(db+postgresql+psycopg://, db+mysql+pymysql://)") from None
                except (sa_exc.ArgumentError, TypeError) as exc:
                    raise ImproperlyConfigured(
                        f"The {self._label} cannot be made with database_engine_options "
                        f"{self.engine_options!r}: {exc}") from None
                if self._engine_callback is not None:
                    self._engine_callback(engine)
                self._engine = engine
            return self._engine

    def _ensure_tables(self, engine: sa.Engine) -> None:
        with self._lock:
            if self._tables_ready:
                return
        # Another process may create them at the same time: a failed existence check is
        # retried, as upstream does.
        for attempt in range(10):
            try:
                self.tables.metadata.create_all(engine)
                break
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                raise  # the server: _run says so at once
            except sa_exc.DatabaseError:
                if attempt == 9:
                    raise
                time.sleep(0.01 * 2 ** attempt)
        table = self.tables.task
        present = {c["name"] for c in sa.inspect(engine).get_columns(table.name, table.schema)}
        columns = self.tables.task_columns(self.extended, present)
        missing = [n for n in EXTENDED if self.extended and n not in present]
        if missing:
            logger.warning("%s: the table %s has no column %s (made by Celery without "
                           "result_extended?): those values are not stored",
                           self._label, table.fullname, ", ".join(missing))
        with self._lock:
            self._columns = columns
            self._tables_ready = True

    def _run(self, fn: Callable[[sa.Connection], T]) -> T:
        """``fn(connection)`` in one transaction, on the calling thread; driver errors come
        out as ConnectionLost (server unreachable), BackendStoreError (a value it refuses)
        or BackendError. A unique-key conflict
        (another writer inserted the same task or group since ``fn`` looked: the row now
        exists) or a deadlock the server broke runs ``fn`` again, up to ``_ATTEMPTS`` times."""
        try:
            engine = self._get_engine()
            self._ensure_tables(engine)
            for attempt in range(_ATTEMPTS):
                try:
                    with engine.begin() as conn:
                        return fn(conn)
                except sa_exc.DBAPIError as exc:
                    if attempt == _ATTEMPTS - 1 or not _conflict(exc):
                        raise
            raise AssertionError("unreachable")
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise ConnectionLost(f"{self._label}: {_first_line(exc)}") from exc
        except sa_exc.DataError as exc:  # this value, not the database: see _store_alone
            raise BackendStoreError(f"{self._label}: {_first_line(exc)}") from exc
        except sa_exc.SQLAlchemyError as exc:
            raise BackendError(f"{self._label}: {_first_line(exc)}") from exc

    async def _arun(self, fn: Callable[[sa.Connection], T]) -> T:
        return await self.io.run(self._run, fn)

    def _cutoff(self) -> dt.datetime | None:
        """Rows done before this (naive UTC) have expired; None: results never expire."""
        if not self.expires:
            return None
        return dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=self.expires)

    def _live(self, table: sa.Table) -> Any:
        cutoff = self._cutoff()
        if cutoff is None:
            return sa.true()
        return sa.or_(table.c.date_done.is_(None), table.c.date_done >= cutoff)

    def _cleanup_due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next_cleanup:
                return False
            self._next_cleanup = now + CLEANUP_INTERVAL
            return True

    # -- storage ---------------------------------------------------------------------------

    def _own(self, payload: bytes) -> Any:
        """Decode what this backend encoded (trusted: no accept check)."""
        content_type = serialization.serializer_by_name(self.serializer).content_type
        return serialization.loads(payload, content_type)

    def _row(self, task_id: str, payload: bytes) -> dict[str, Any]:
        """Every column's value for one stored meta (``payload``: encoded by this backend),
        as Celery 5.7 fills them; ``_store`` writes those the table has."""
        meta = self._own(payload)
        children = meta.get("children")
        row = {"task_id": task_id, "status": meta["status"],
               "result": self.encode(meta.get("result")),
               "date_done": to_db_time(meta.get("date_done")), "traceback": meta.get("traceback"),
               "children": self.encode(children) if children else None}
        if self.extended:
            row.update({name: meta.get(name) for name in EXTENDED})
            for name in ("args", "kwargs"):
                row[name] = self.encode(meta.get(name))
            stamped = meta.get("stamped_headers")
            row["stamps"] = self.encode({
                "stamped_headers": stamped,
                "stamps": {h: meta[h] for h in stamped if h in meta},
            }) if stamped else None
        return row

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Write every item in one transaction (in order: the last of a task's wins unless
        a SUCCESS came first), then wake this process's waiters."""
        if not items:
            return
        rows: dict[str, dict[str, Any]] = {}
        for task_id, payload, _state in items:
            if rows.get(task_id, {}).get("status") == states.SUCCESS:
                continue
            rows[task_id] = self._row(task_id, payload)
        cleanup = self._cleanup_due()
        try:
            await self._arun(lambda conn: self._store(conn, rows, cleanup))
        except BackendStoreError:  # a value the database refuses (other errors: retried)
            for task_id, row in rows.items():
                await self._store_alone(task_id, row)
        self._wakeup.notify()

    async def _store_alone(self, task_id: str, row: dict[str, Any]) -> None:
        """Write one row; one the database refuses (a task id over 155 characters, a
        result over 64 KiB in a MySQL table upstream made, ...) is replaced by a FAILURE
        saying why, so that neither its waiter nor the other results wait forever."""
        try:
            await self._arun(lambda conn: self._store(conn, {task_id: row}, False))
            return
        except BackendStoreError as exc:
            error = BackendStoreError(f"The result of task {task_id} could not be stored: {exc}")
        logger.error("%s", error)
        meta = self.prepare_meta(task_id, states.FAILURE, error)
        failure = self._row(task_id, self.encode(meta))
        try:
            await self._arun(lambda conn: self._store(conn, {task_id: failure}, False))
        except BackendError as exc:
            logger.error("%s: the failure of task %s cannot be stored either, nothing is: %s",
                         self._label, task_id, exc)

    def _store(self, conn: sa.Connection, rows: dict[str, dict[str, Any]],
               cleanup: bool) -> None:
        table = self.tables.task
        ids = list(rows)
        existing: dict[str, tuple[str, dt.datetime | None]] = {}
        # Only rows that exist are locked (read again FOR UPDATE, as Celery 5.7 does): on
        # MySQL a locking read of a missing key takes a gap lock, and concurrent inserts
        # then deadlock. A row inserted meanwhile by another writer fails our insert with
        # a unique-key conflict, and _run tries again.
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            found = [r[0] for r in conn.execute(
                sa.select(table.c.task_id).where(table.c.task_id.in_(chunk)))]
            if found:
                query = (sa.select(table.c.task_id, table.c.status, table.c.date_done)
                         .where(table.c.task_id.in_(found)).with_for_update())
                existing.update({r[0]: (r[1], r[2]) for r in conn.execute(query)})
        cutoff = self._cutoff()
        inserts, updates = [], []
        for task_id, row in rows.items():
            if task_id not in existing:
                inserts.append(row)
                continue
            status, done = existing[task_id]
            expired = cutoff is not None and done is not None and done < cutoff
            if status != states.SUCCESS or expired:
                updates.append({**row, "_task_id": task_id})
        names = {c.name for c in self._columns}
        inserts = [{k: v for k, v in row.items() if k in names} for row in inserts]
        updates = [{k: v for k, v in row.items() if k in names or k == "_task_id"}
                   for row in updates]
        if inserts:
            conn.execute(table.insert(), inserts)
        if updates:
            values: dict[str, Any] = {c.name: sa.bindparam(c.name) for c in self._columns if c.name != "task_id"}
            conn.execute(table.update().where(table.c.task_id == sa.bindparam("_task_id"))
                         .values(values), updates)
        if cleanup and cutoff is not None:
            self._delete_expired(conn, cutoff)

    def _delete_expired(self, conn: sa.Connection, cutoff: dt.datetime) -> int:
        count = conn.execute(sa.delete(self.tables.task)
                             .where(self.tables.task.c.date_done < cutoff)).rowcount
        conn.execute(sa.delete(self.tables.group).where(self.tables.group.c.date_done < cutoff))
        return count

    async def aget_raw(self, task_id: str) -> bytes | None:
        """The task's meta encoded with ``result_serializer``, None when missing (any loop)."""
        return (await self.aget_many_raw([task_id]))[task_id]

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Several tasks' metas, read in one round trip and encoded as our other backends
        store them (None: missing or expired).

        Raises:
            DecodeError: a stored ``result`` column cannot be read (see sql_tables.py).
        """
        rows = await self._arun(lambda conn: self._read(conn, list(task_ids)))
        found: dict[str, bytes | None] = dict.fromkeys(task_ids)
        for row in rows:
            found[row["task_id"]] = self.encode(self._meta(row))
        return found

    def _read(self, conn: sa.Connection, ids: list[str]) -> list[dict[str, Any]]:
        table, out = self.tables.task, list[dict[str, Any]]()
        for start in range(0, len(ids), _CHUNK):
            query = (sa.select(*self._columns)
                     .where(table.c.task_id.in_(ids[start:start + _CHUNK]), self._live(table)))
            out.extend(dict(r._mapping) for r in conn.execute(query))
        return out

    def _decode_column(self, raw: bytes | None, what: str) -> Any:
        """A ``result`` column: encoded with our serializer, or pickled by old Celery."""
        if raw is None:
            return None
        raw = bytes(raw)
        try:
            return self.decode(raw)
        except Exception:
            if not raw.startswith(PICKLE_MARK):
                raise
        return load_pickled(raw, self.trusted, what)

    def _meta(self, row: dict[str, Any]) -> dict[str, Any]:
        """Our meta of a row, as upstream's ``_get_task_meta_for`` makes it."""
        task_id = row["task_id"]
        children = row.get("children")
        meta = {"status": row["status"],
                "result": self._decode_column(row["result"], f"task {task_id}"),
                "traceback": row["traceback"],
                "children": None if children is None else self.decode(bytes(children)),
                "date_done": from_db_time(row["date_done"])}
        if self.extended:
            for name in EXTENDED[:-1]:
                meta[name] = row.get(name)
            for name in ("args", "kwargs"):
                if meta[name] is not None:
                    meta[name] = self.decode(bytes(meta[name]))
            stamps = row.get("stamps")
            info = None if stamps is None else self.decode(bytes(stamps))
            if isinstance(info, dict) and info.get("stamped_headers"):
                meta["stamped_headers"] = info["stamped_headers"]
                meta.update(info.get("stamps") or {})
        meta["task_id"] = task_id
        if meta["status"] in states.EXCEPTION_STATES and isinstance(meta["result"], BaseException):
            meta["result"] = self.prepare_exception(meta["result"])
        return meta

    async def adelete(self, task_id: str) -> None:
        """Forget the task's result (any loop)."""
        await self.adelete_many([task_id])

    async def adelete_many(self, task_ids: Sequence[str]) -> None:
        """Forget several results: one DELETE per 500 (any loop)."""
        table, ids = self.tables.task, list(task_ids)

        def delete(chunk: list[str]) -> Callable[[Any], Any]:
            return lambda conn: conn.execute(sa.delete(table).where(table.c.task_id.in_(chunk)))

        for start in range(0, len(ids), 500):
            await self._arun(delete(ids[start:start + 500]))

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait for a ready state: woken by writes in this process, polling for others.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            celery.exceptions.ConnectionLost: the database could not be read.
        """
        return await self._poll_ready(task_id, timeout, self._wakeup, 0.01, POLL_LONGEST)

    # -- saved groups (celery_tasksetmeta) ------------------------------------------------

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        """Save a group as Celery 5.7 does: the encoded ``as_tuple()``, or with the pickle
        serializer the pickled GroupResult."""
        as_tuple = self._own(payload)["result"]
        value = dump_group(as_tuple) if self.serializer == "pickle" else self.encode(as_tuple)
        row = {"taskset_id": group_id, "result": value,
               "date_done": dt.datetime.now(dt.UTC).replace(tzinfo=None)}
        table = self.tables.group

        def save(conn: sa.Connection) -> None:
            conn.execute(sa.delete(table).where(table.c.taskset_id == group_id))
            conn.execute(table.insert(), [row])

        await self._arun(save)

    async def _aget_group(self, group_id: str) -> bytes | None:
        table = self.tables.group
        query = sa.select(table.c.result).where(table.c.taskset_id == group_id,
                                                self._live(table))
        raw = await self._arun(lambda conn: conn.execute(query).scalar())
        if raw is None:
            return None
        raw = bytes(raw)
        if raw.startswith(PICKLE_MARK):  # a pickled GroupResult (pickle, or old Celery)
            return self.encode({"result": load_group(raw, group_id)})
        return self.encode({"result": self.decode(raw)})

    async def _adelete_group(self, group_id: str) -> None:
        table = self.tables.group
        await self._arun(lambda conn: conn.execute(
            sa.delete(table).where(table.c.taskset_id == group_id)))

    # -- upkeep -----------------------------------------------------------------------------

    async def acleanup(self) -> int:
        """Delete every expired result and group; returns how many results (any loop)."""
        cutoff = self._cutoff()
        if cutoff is None:
            return 0
        return await self._arun(lambda conn: self._delete_expired(conn, cutoff))

    def cleanup(self) -> int:
        """Delete every expired result (Celery's ``backend_cleanup``); blocking."""
        return self._call(self.acleanup())

    async def ping(self) -> None:
        """Connect and run ``SELECT 1`` (ConnectionLost if the server can't be reached)."""
        await self._arun(lambda conn: conn.execute(sa.text("SELECT 1")))

    async def aclose(self) -> None:
        """Drop the running loop's result poller; connections are not bound to a loop."""
        forget_pollers(self, asyncio.get_running_loop())

    def close(self) -> None:
        """Close the pool and the I/O threads. Idempotent; any thread."""
        forget_pollers(self)
        super().close()
        with self._lock:
            engine, self._engine = self._engine, None
        self.io.close()
        if engine is not None:
            engine.dispose()


def _conflict(exc: sa_exc.DBAPIError) -> bool:
    """A unique-key conflict or a deadlock (MySQL 1213, PostgreSQL 40P01): try again."""
    if isinstance(exc, sa_exc.IntegrityError):
        return True
    text = str(exc.orig).lower()
    return "deadlock" in text or "40p01" in text or "1213" in text.split(",")[0]


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
