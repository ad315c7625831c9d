"""Leader leases for beat (``celery/beat/``): one holder at a time, with a fencing token.

Several beat processes may run for availability; each asks the broker's lease for the right
to send, and only the holder sends. A lease is held for ``ttl`` seconds and renewed by its
holder well before it runs out; a holder that dies (kill -9) loses it when it expires, and
the next beat to ask takes it over. Each acquisition is given a new, higher **fencing
token**, and every run a holder records goes through ``claim``, which checks the token in
the same atomic step: a holder that was paused past its expiry (a stopped process, a long
GC pause) and then wakes up cannot record or send a run any more, because its token is no
longer the current one.

Runs are recorded per entry as the epoch second of the run (``claim``): a run is claimed
only when it is later than the recorded one, so a new holder that read the records
(``runs``) never sends again a run its predecessor claimed. A claimed run is sent after the
claim; a holder that dies between the two loses that one run (at most once per run).

Implementations: ``redis_lease.RedisLease`` (Redis/Valkey), ``SQLiteLease`` here (the SQLite
broker's file; the filesystem broker keeps one such file in its control folder), and
``MemoryLease`` here (``memory://``: beats of one process). Transports that have one declare
``CAP_LEASE`` and make them with ``leader_lease(name)``.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .sqlite import SQLiteDatabase

__all__ = ["Claim", "LeaderLease", "MemoryLease", "SQLiteLease"]


class Claim(enum.IntEnum):
    """What ``LeaderLease.claim`` found."""

    #: This holder lost the lease (expired, taken over): it must not send.
    LOST = 0
    #: The run is recorded: send it.
    CLAIMED = 1
    #: A run as late or later is recorded already: do not send this one.
    ALREADY = 2


@runtime_checkable
class LeaderLease(Protocol):
    """One beat's handle on a named lease. Used from one event loop at a time; not shared
    between beats (it remembers this beat's token)."""

    #: The fencing token of this beat's current term (0 when it never held the lease).
    token: int

    async def acquire(self, holder: str, ttl: float) -> bool:
        """Take the lease if nobody holds it (or it expired); True when this beat holds it."""
        ...

    async def renew(self, ttl: float) -> bool:
        """Extend this beat's term by ``ttl`` seconds; False if it lost the lease."""
        ...

    async def release(self) -> None:
        """Give the lease up now if this beat still holds it (a clean shutdown)."""
        ...

    async def claim(self, entry: str, run_at: float) -> tuple[Claim, float | None]:
        """Record ``run_at`` (epoch seconds) as ``entry``'s last run if this beat holds the
        lease and it is later than the recorded one; the outcome and the recorded run."""
        ...

    async def runs(self) -> dict[str, float]:
        """Every entry's recorded last run (epoch seconds)."""
        ...

    async def holder(self) -> str | None:
        """Who holds the lease now, if anyone."""
        ...


# -- SQLite ---------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celery_beat_lease (
        name TEXT PRIMARY KEY,
        holder TEXT,
        token INTEGER NOT NULL,
        expires REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS celery_beat_runs (
        name TEXT NOT NULL,
        entry TEXT NOT NULL,
        last_run REAL NOT NULL,
        PRIMARY KEY (name, entry)) WITHOUT ROWID""",
)


class SQLiteLease:
    """A lease row in a SQLite file: ``(name, holder, token, expires)``, every change one
    ``BEGIN IMMEDIATE`` transaction, so processes on one machine see one holder. Expiry is
    read from the machine's clock (``time.time()``), which all those processes share."""

    def __init__(self, db: SQLiteDatabase, name: str) -> None:
        self._db = db
        self._name = name
        self._holder = ""
        self.token = 0

    @staticmethod
    def _schema(conn: sqlite3.Connection) -> None:
        # In every transaction (cheap): a flag set once could outlive a rolled-back create.
        for sql in _SCHEMA:
            conn.execute(sql)

    async def acquire(self, holder: str, ttl: float) -> bool:
        self._holder = holder
        token = await self._db.awrite("beat lease", self._acquire, holder, ttl)
        if token:
            self.token = token
        return bool(token)

    def _acquire(self, conn: sqlite3.Connection, holder: str, ttl: float) -> int:
        self._schema(conn)
        now = time.time()
        row = conn.execute("SELECT holder, token, expires FROM celery_beat_lease WHERE name = ?",
                           (self._name,)).fetchone()
        if row is not None and row[0] is not None and row[2] > now:
            return 0
        token = (row[1] if row else 0) + 1
        conn.execute("INSERT OR REPLACE INTO celery_beat_lease VALUES (?, ?, ?, ?)",
                     (self._name, holder, token, now + ttl))
        return token

    async def renew(self, ttl: float) -> bool:
        return await self._db.awrite("beat lease", self._renew, ttl)

    def _renew(self, conn: sqlite3.Connection, ttl: float) -> bool:
        self._schema(conn)
        now = time.time()
        cursor = conn.execute(
            "UPDATE celery_beat_lease SET expires = ? "
            "WHERE name = ? AND token = ? AND holder = ? AND expires > ?",
            (now + ttl, self._name, self.token, self._holder, now))
        return cursor.rowcount == 1

    async def release(self) -> None:
        await self._db.awrite("beat lease", lambda c: c.execute(
            "UPDATE celery_beat_lease SET holder = NULL, expires = 0 "
            "WHERE name = ? AND token = ? AND holder = ?", (self._name, self.token, self._holder)))

    async def claim(self, entry: str, run_at: float) -> tuple[Claim, float | None]:
        return await self._db.awrite("beat claim", self._claim, entry, run_at)

    def _claim(self, conn: sqlite3.Connection, entry: str, run_at: float) -> tuple[Claim, float | None]:
        self._schema(conn)
        held = conn.execute(
            "SELECT 1 FROM celery_beat_lease WHERE name = ? AND token = ? AND holder = ? "
            "AND expires > ?", (self._name, self.token, self._holder, time.time())).fetchone()
        if held is None:
            return Claim.LOST, None
        row = conn.execute("SELECT last_run FROM celery_beat_runs WHERE name = ? AND entry = ?",
                           (self._name, entry)).fetchone()
        if row is not None and row[0] >= run_at:
            return Claim.ALREADY, row[0]
        conn.execute("INSERT OR REPLACE INTO celery_beat_runs VALUES (?, ?, ?)",
                     (self._name, entry, run_at))
        return Claim.CLAIMED, run_at

    async def runs(self) -> dict[str, float]:
        def read(conn: sqlite3.Connection) -> dict[str, float]:
            self._schema(conn)
            rows = conn.execute("SELECT entry, last_run FROM celery_beat_runs WHERE name = ?",
                                (self._name,))
            return {entry: last for entry, last in rows}
        return await self._db.awrite("beat runs", read)

    async def holder(self) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            self._schema(conn)
            row = conn.execute("SELECT holder, expires FROM celery_beat_lease WHERE name = ?",
                               (self._name,)).fetchone()
            return row[0] if row and row[1] > time.time() else None
        return await self._db.awrite("beat lease", read)


# -- memory ---------------------------------------------------------------------------------

class _Term:
    __slots__ = ("expires", "holder", "runs", "token")

    def __init__(self) -> None:
        self.holder: str | None = None
        self.token = 0
        self.expires = 0.0
        self.runs: dict[str, float] = {}


#: Lease name -> its state, for the whole process; guarded by _MEMORY_LOCK.
_MEMORY: dict[str, _Term] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryLease:
    """The lease of ``memory://``: beats of one process (a test, ``worker -B`` with an
    in-process broker). State is process-global, guarded by ``_MEMORY_LOCK``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._holder = ""
        self.token = 0

    def _term(self) -> _Term:
        term = _MEMORY.get(self._name)
        if term is None:
            term = _MEMORY[self._name] = _Term()
        return term

    def _mine(self, term: _Term, now: float) -> bool:
        return term.holder == self._holder and term.token == self.token and term.expires > now

    async def acquire(self, holder: str, ttl: float) -> bool:
        self._holder, now = holder, time.monotonic()
        with _MEMORY_LOCK:
            term = self._term()
            if term.holder is not None and term.expires > now:
                return False
            term.holder, term.token, term.expires = holder, term.token + 1, now + ttl
            self.token = term.token
        return True

    async def renew(self, ttl: float) -> bool:
        now = time.monotonic()
        with _MEMORY_LOCK:
            term = self._term()
            if not self._mine(term, now):
                return False
            term.expires = now + ttl
        return True

    async def release(self) -> None:
        with _MEMORY_LOCK:
            term = self._term()
            if term.holder == self._holder and term.token == self.token:
                term.holder, term.expires = None, 0.0

    async def claim(self, entry: str, run_at: float) -> tuple[Claim, float | None]:
        with _MEMORY_LOCK:
            term = self._term()
            if not self._mine(term, time.monotonic()):
                return Claim.LOST, None
            last = term.runs.get(entry)
            if last is not None and last >= run_at:
                return Claim.ALREADY, last
            term.runs[entry] = run_at
        return Claim.CLAIMED, run_at

    async def runs(self) -> dict[str, float]:
        with _MEMORY_LOCK:
            return dict(self._term().runs)

    async def holder(self) -> str | None:
        with _MEMORY_LOCK:
            term = self._term()
            return term.holder if term.expires > time.monotonic() else None
