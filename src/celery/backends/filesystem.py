"""``file:///path/to/dir``: results as files, one per task, named and laid out as upstream's.

Upstream Celery's filesystem backend keeps the encoded meta of task ``<id>`` in the file
``<dir>/celery-task-meta-<id>``; so do we, so either can read what the other wrote. The URL
is read as upstream reads it (``file:///abs/dir``, ``file://localhost/abs/dir``, and
``file://rel/dir`` relative to the working directory).

* Writes go through a temporary file and a rename (``transport.filesystem.write_atomic``):
  a reader sees the old result or the new one, never half of one.
* A stored SUCCESS is never overwritten (a redelivered task must not clobber its result):
  the existing file's status is read first. Writers of one id in this process are
  serialized by a striped lock; writers in *different processes* can still race, and a
  non-SUCCESS state written at the same moment as the SUCCESS may win (the window is one
  read plus one rename; the worker only writes another state for an id it is running).
* ``result_expires``: a file whose modification time is older than that reads as missing
  (PENDING) and is deleted then; ``cleanup()`` deletes every expired file and the
  temporary files of writers that died. A result rewritten just as a reader deletes it as
  expired can be lost (the reader checks the inode first, which narrows this to a moment).
* Groups and chords: ``backends/filesystem_chords.py`` (saved groups, the chord join).
* Waiting: one poller per event loop (``backends/polling.py``) reads every awaited file in
  one trip to the I/O pool; a write in this process wakes it at once
  (``embedded.wakeup_for``), writes by other processes are seen within 1 ms growing to 50 ms.

Thread-safety: every file system call made by a coroutine runs on the backend's
``BlockingIO`` pool; ``_write_locks`` (a fixed list of locks, chosen by task id) serializes
check-then-write per id; nothing else is shared and mutable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import states
from ..exceptions import ImproperlyConfigured
from ..transport.embedded import BlockingIO, wakeup_for
from ..transport.filesystem import (
    prepare_folder,
    probe_folder,
    storage_errors,
    sweep_stale_temp,
    write_atomic,
)
from .base import Conf, ResultBackend
from .filesystem_chords import FilesystemChords
from .polling import forget_pollers

__all__ = ["FilesystemBackend"]

logger = logging.getLogger(__name__)

_LOCK_STRIPES = 64


def path_from_url(url: str | None) -> str:
    """The directory of a ``file://`` URL, read as upstream Celery reads it."""
    path = ""
    if url and url.startswith("file://localhost/"):
        path = url[len("file://localhost") :]
    elif url and url.startswith("file://"):
        path = url[len("file://") :]
    if not path:
        raise ImproperlyConfigured(
            f"The file-system result backend needs a directory: file:///path/to/dir, not {url!r}"
        )
    if os.name == "nt" and path.startswith("/"):
        path = path[1:]  # file:///C:/dir
    return path


class FilesystemBackend(FilesystemChords, ResultBackend):
    """Results in files of one directory; see the module docstring.

    Thread-safety: coroutines may be awaited on any event loop; ``close`` and ``cleanup``
    may be called from any thread.
    """

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        self.path = prepare_folder(path_from_url(url), "Result backend directory")
        transport_options = conf.get("result_backend_transport_options") or {}
        self.fsync = bool(transport_options.get("fsync", False))
        self._io = BlockingIO("celery-file-results", 4)
        self._wakeup = wakeup_for(f"{self.path}#{self.task_keyprefix}")
        self._write_locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    def __repr__(self) -> str:
        return f"<FilesystemBackend {self.path}>"

    def _name(self, task_id: str) -> str:
        name = self.get_key_for_task(task_id)
        if "/" in name or "\\" in name or "\0" in name:
            raise ValueError(f"Task id {task_id!r} can't be used in a file name")
        return name

    # -- reading --------------------------------------------------------------------------

    def _expired(self, mtime: float) -> bool:
        return self.expires is not None and mtime + self.expires < time.time()

    def _read(self, name: str) -> bytes | None:
        """The stored payload, or None when missing or expired (deleted then). Pool thread."""
        path = os.path.join(self.path, name)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not self._expired(st.st_mtime):
                    return f.read()
        except FileNotFoundError:
            return None
        _unlink_same(path, st)
        return None

    def _read_many(self, names: Sequence[str]) -> list[bytes | None]:
        with storage_errors("Reading results in", self.path):
            return [self._read(name) for name in names]

    async def aget_raw(self, task_id: str) -> bytes | None:
        """The stored payload, or None (missing or expired). Any loop."""
        return (await self.aget_many_raw([task_id]))[task_id]

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Stored payloads of several tasks, in one trip to the I/O pool. Any loop."""
        names = [self._name(t) for t in task_ids]
        raws = await self._io.run(self._read_many, names)
        return dict(zip(task_ids, raws, strict=True))

    # -- writing --------------------------------------------------------------------------

    def _stored_success(self, name: str) -> bool:
        raw = self._read(name)
        if raw is None:
            return False
        try:
            return self.decode(raw).get("status") == states.SUCCESS
        except Exception:  # undecodable: not a SUCCESS we must keep
            return False

    def _write_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        with storage_errors("Storing results in", self.path):
            for task_id, payload, _state in items:
                try:
                    name = self._name(task_id)
                except ValueError as exc:
                    logger.warning("Result not stored: %s", exc)
                    continue
                with self._write_locks[hash(task_id) % _LOCK_STRIPES]:
                    if not self._stored_success(name):
                        write_atomic(self.path, name, payload, self.fsync)

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Write every item (skipping stored SUCCESSes) and wake this process's waiters."""
        if items:
            await self._io.run(self._write_many, items)
            self._wakeup.notify()

    def _delete(self, name: str) -> None:
        with storage_errors("Deleting a result in", self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))

    async def adelete(self, task_id: str) -> None:
        """Forget the task's result. Any loop."""
        await self._io.run(self._delete, self._name(task_id))

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait for a ready state: woken by writes in this process, polling for others.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
        """
        self._name(task_id)  # a bad id fails now, not inside the shared poller
        return await self._poll_ready(task_id, timeout, self._wakeup, 0.001, 0.05)

    # -- maintenance ----------------------------------------------------------------------

    def cleanup(self) -> int:
        """Delete expired results and stale temporary files; returns how many results went.

        Blocking: call from a thread that runs no event loop (``acleanup`` from a loop).
        """
        removed = 0
        with storage_errors("Cleaning up", self.path):
            sweep_stale_temp(self.path)
            self.sweep_chords()
            if self.expires is None:
                return 0
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if not entry.name.startswith(self.task_keyprefix):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        if self._expired(st.st_mtime) and _unlink_same(entry.path, st):
                            removed += 1
        return removed

    async def acleanup(self) -> int:
        """``cleanup`` on the I/O pool. Any loop."""
        return await self._io.run(self.cleanup)

    async def ping(self) -> None:
        """Raise ConnectionLost, naming the directory, unless it is writable. Any loop."""
        await self._io.run(self._probe)

    def _probe(self) -> None:
        with storage_errors("Writing to the result directory", self.path):
            probe_folder(self.path)

    async def aclose(self) -> None:
        """Drop the running loop's result poller; files are not bound to a loop."""
        forget_pollers(self, asyncio.get_running_loop())

    def close(self) -> None:
        """Stop the I/O pool (a later call starts a new one). Idempotent; any non-pool thread."""
        forget_pollers(self)
        self._io.close()
        super().close()


def _unlink_same(path: str, st: os.stat_result) -> bool:
    """Unlink ``path`` if it is still the file ``st`` describes (not rewritten meanwhile)."""
    try:
        if os.stat(path).st_ino != st.st_ino:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
