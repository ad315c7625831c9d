"""Worker state that outlives one message: the revoked task ids, and their persistence
(``--statedb``); and the process's resident memory (``--max-memory-per-child``).

Celery keeps revoked ids in a bounded set whose entries expire (``REVOKES_MAX`` = 50,000
ids, ``REVOKE_EXPIRES`` = 10,800 s, both overridable from the environment as Celery's
``CELERY_WORKER_REVOKES_MAX`` / ``CELERY_WORKER_REVOKE_EXPIRES``). ``--statedb`` keeps them
across restarts; our file is JSON (``{"revoked": {task_id: epoch_seconds}}``) written
atomically (a temporary file renamed into place), not Celery's ``shelve`` database, so a
state file cannot be shared with an upstream Celery worker.

Thread-safety: a ``RevokedIds`` belongs to the consumer's event loop; only that loop reads
or changes it (control commands run there too), so it has no lock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

__all__ = ["REVOKE_EXPIRES", "REVOKES_MAX", "RevokedIds", "resident_kb"]

logger = logging.getLogger("celery.worker.state")

#: At most this many revoked ids are remembered (the oldest go first).
REVOKES_MAX = int(os.environ.get("CELERY_WORKER_REVOKES_MAX", 50_000))
#: A revoked id is forgotten this many seconds after its revoke.
REVOKE_EXPIRES = float(os.environ.get("CELERY_WORKER_REVOKE_EXPIRES", 10_800))


class RevokedIds:
    """Task ids revoked on this worker: bounded, expiring, optionally persisted."""

    def __init__(self, path: str | os.PathLike[str] | None = None, maxlen: int = REVOKES_MAX,
                 expires: float = REVOKE_EXPIRES) -> None:
        self.path = Path(path) if path else None
        self.maxlen = maxlen
        self.expires = expires
        self._ids: OrderedDict[str, float] = OrderedDict()  # id -> revoked at (epoch), oldest first
        if self.path is not None:
            self._load()

    def __contains__(self, task_id: object) -> bool:
        if not self._ids:
            return False
        at = self._ids.get(task_id)  # type: ignore[call-overload]
        if at is None:
            return False
        if time.time() - at > self.expires:
            del self._ids[task_id]  # type: ignore[arg-type]
            return False
        return True

    def __len__(self) -> int:
        self._prune()
        return len(self._ids)

    def add(self, task_ids: Iterable[str]) -> None:
        """Remember ``task_ids`` as revoked now; saved when persistent."""
        when = time.time()  # never older than what is in: the dict stays oldest first
        for task_id in task_ids:
            self._ids.pop(task_id, None)
            self._ids[task_id] = when
        self._prune()
        if self.path is not None:
            self.save()

    def ids(self) -> list[str]:
        """The ids still remembered, oldest revoke first."""
        self._prune()
        return list(self._ids)

    def _prune(self) -> None:
        cutoff = time.time() - self.expires
        while self._ids:
            task_id, at = next(iter(self._ids.items()))
            if at > cutoff and len(self._ids) <= self.maxlen:
                break
            del self._ids[task_id]

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            entries = data["revoked"]
            loaded = sorted((float(at), str(task_id)) for task_id, at in entries.items())
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A state file we cannot read must not stop the worker: say so and start empty
            # (the file is rewritten at the next revoke).
            logger.error("Cannot read the worker state file %s (%s); starting with no "
                         "revoked tasks", self.path, exc)
            return
        for at, task_id in loaded:
            self._ids[task_id] = at
        self._prune()
        if self._ids:
            logger.info("Loaded %d revoked task id(s) from %s", len(self._ids), self.path)

    def save(self) -> None:
        """Write the file atomically. Errors are logged (the ids stay revoked in memory)."""
        assert self.path is not None
        self._prune()
        data = json.dumps({"revoked": dict(self._ids)})
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            logger.error("Cannot write the worker state file %s: %s", self.path, exc)


def resident_kb() -> int | None:
    """This process's resident memory in KiB (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        try:
            import resource
        except ImportError:
            return None
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
