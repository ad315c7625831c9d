"""``PersistentScheduler``: beat's state (each entry's last run and run count) in a SQLite
file, ``-s/--schedule`` (``beat_schedule_filename``, default ``celerybeat-schedule``).

The schedule itself comes from the settings (``beat_schedule``, ``add_periodic_task``); the
file keeps only when each entry last ran, so a restarted beat neither sends again a run
that was sent before it stopped nor forgets one that came due while it was down (sent once
when it is back, unless the entry says ``catch_up=False``). Each run is written in its own
transaction before the task is sent (not every few minutes as Celery's shelve file), so a
beat killed with -9 loses nothing. A file that is not a readable state file (corrupt, or
Celery's own shelve file) is renamed ``<file>.corrupt-<epoch seconds>`` and a new one made,
with one error line. A change of ``timezone`` or ``enable_utc`` starts the runs afresh, as
in Celery.

Tables::

    celery_beat_meta (key PRIMARY KEY, value)        version, timezone, enable_utc
    celery_beat_entries (name PRIMARY KEY, last_run_at REAL epoch seconds, total_run_count)

The connection is opened and used by beat's thread only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import time
from typing import Any

from ..exceptions import ImproperlyConfigured
from .entry import ScheduleEntry
from .scheduler import Scheduler, from_epoch

__all__ = ["PersistentScheduler", "StateFile"]

logger = logging.getLogger("celery.beat")

#: Format of the state file; a file of another version is started afresh.
VERSION = "1"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS celery_beat_meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS celery_beat_entries (
        name TEXT PRIMARY KEY,
        last_run_at REAL NOT NULL,
        total_run_count INTEGER NOT NULL)""",
)


class StateFile:
    """The SQLite state file of one beat (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._conn = self._open_or_replace()

    def _open_or_replace(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _unreadable(exc):
                raise ImproperlyConfigured(f"beat: cannot use the schedule file {self.path}: {exc}") from None
            aside = f"{self.path}.corrupt-{int(time.time())}"
            os.replace(self.path, aside)
            logger.error("beat: the schedule file %s is not a readable state file (%s); moved "
                         "it to %s and started a new one: entries run as if beat were new",
                         self.path, exc, aside)
            return self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise ImproperlyConfigured(f"beat: cannot open the schedule file {self.path}: {exc}") from None
        try:
            with self.transaction(conn):
                for sql in _SCHEMA:
                    conn.execute(sql)
            conn.execute("SELECT count(*) FROM celery_beat_entries").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    @contextlib.contextmanager
    def transaction(conn: sqlite3.Connection) -> Any:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def load(self, timezone: str, utc: bool) -> dict[str, tuple[float, int]]:
        """Each entry's ``(last run epoch, run count)``; nothing when the file was written
        under another time zone setting or format version (then it is cleared)."""
        conn = self._conn
        meta = dict(conn.execute("SELECT key, value FROM celery_beat_meta").fetchall())
        wanted = {"version": VERSION, "timezone": timezone, "enable_utc": str(bool(utc))}
        if meta and meta != wanted:
            logger.warning("beat: %s was written with %s; now %s: previous runs are forgotten",
                           self.path, meta, wanted)
        if meta != wanted:
            with self.transaction(conn):
                conn.execute("DELETE FROM celery_beat_entries")
                conn.execute("DELETE FROM celery_beat_meta")
                conn.executemany("INSERT INTO celery_beat_meta VALUES (?, ?)", wanted.items())
            return {}
        rows = conn.execute("SELECT name, last_run_at, total_run_count FROM celery_beat_entries")
        return {name: (last, count) for name, last, count in rows}

    def write(self, entries: list[ScheduleEntry], keep: set[str] | None = None) -> None:
        """Store these entries' state; with ``keep``, forget entries not named in it."""
        rows = [(e.name, e.last_run_at.timestamp(), e.total_run_count) for e in entries]
        with self.transaction(self._conn) as conn:
            conn.executemany("INSERT OR REPLACE INTO celery_beat_entries VALUES (?, ?, ?)", rows)
            if keep is not None:
                stored = [r[0] for r in conn.execute("SELECT name FROM celery_beat_entries")]
                conn.executemany("DELETE FROM celery_beat_entries WHERE name = ?",
                                 [(n,) for n in stored if n not in keep])

    def close(self) -> None:
        self._conn.close()


def _unreadable(exc: sqlite3.Error) -> bool:
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return code in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class PersistentScheduler(Scheduler):
    """The default scheduler: the settings' schedule, with its state in a SQLite file."""

    def __init__(self, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        app = kwargs.get("app") or (args[0] if args else None)
        self.schedule_filename = schedule_filename or (
            app.conf.beat_schedule_filename if app is not None else "celerybeat-schedule")
        self._store: StateFile | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self._store = StateFile(self.schedule_filename)
        tz = self.app.timezone
        stored = self._store.load(str(tz), bool(self.app.conf.enable_utc))
        super().setup_schedule()
        for name, entry in list(self.schedule.items()):
            if name in stored:
                last, count = stored[name]
                self.schedule[name] = entry._copy(last_run_at=from_epoch(last, _tz_of(entry, tz)),
                                                  total_run_count=count)
        self._store.write(list(self.schedule.values()), keep=set(self.schedule))

    def record(self, entry: ScheduleEntry) -> None:
        if self._store is not None:
            self._store.write([entry])

    def sync(self) -> None:
        if self._store is not None:
            self._store.write(list(self.schedule.values()))

    def close(self) -> None:
        if self._store is not None:
            self.sync()
            self._store.close()
            self._store = None

    @property
    def info(self) -> str:
        return f"    . db -> {self.schedule_filename}"


def _tz_of(entry: ScheduleEntry, default: dt.tzinfo) -> dt.tzinfo:
    return entry.last_run_at.tzinfo or default
