"""The file-system result backend's groups and chord join: plain files, no lock.

In the results folder, for group ``G`` = ``celery-taskset-meta-<group id>`` (upstream's
name for a saved group, so either side finds the other's ``GroupResult.save()``):

* ``G``: the saved group; ``G.s``: the chord's header size;
* ``G.t.<uuid>``: members added later (``Task.add_to_chord``), one file per addition;
* ``G.j/``: one file per finished member, ``<index>-<task id>``, holding its part; a
  redelivered member rewrites its own file, so it counts once;
* ``G.c``: the claim: created with ``O_EXCL`` by the member that finds every part there
  (so one claims even when several finish together), ``done`` once the body was sent.

Every member writes its part (atomically: temporary file and rename) before it lists the
folder, so the last one to list sees every part. A claim older than twice the join timeout
whose holder never marked it done (the process died) may be taken again.

Thread-safety: the methods here run on the backend's I/O pool (or a sync caller's thread);
they share nothing in memory, and the file system is the only synchronisation.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..transport.filesystem import TEMP_PREFIX, storage_errors, write_atomic
from .groups import ChordPart

if TYPE_CHECKING:
    from ..transport.embedded import BlockingIO

__all__ = ["FilesystemChords"]

#: How long a chord's ``done`` mark is kept after its body was sent (seconds).
DONE_MARK_SECONDS = 600.0
_DONE = b"done"


class FilesystemChords:
    """Mixed into FilesystemBackend (which provides ``path``, ``_io`` and the settings)."""

    supports_chord_join = True

    if TYPE_CHECKING:
        path: str
        fsync: bool
        _io: BlockingIO
        conf: Any
        expires: float | None
        chord_expires: float | None
        group_keyprefix: str

        def get_key_for_group(self, group_id: str, suffix: str = "") -> str: ...

    def _group_path(self, group_id: str, suffix: str = "") -> str:
        name = self.get_key_for_group(group_id, suffix)
        if "/" in name or "\\" in name or "\0" in name:
            raise ValueError(f"Group id {group_id!r} can't be used in a file name")
        return os.path.join(self.path, name)

    def _claim_seconds(self) -> float:
        return max(5.0, float(self.conf.get("result_chord_join_timeout") or 5.0) * 2)

    # -- groups -------------------------------------------------------------------------------

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        path = self._group_path(group_id)
        await self._io.run(self._write, path, payload)

    async def _aget_group(self, group_id: str) -> bytes | None:
        path = self._group_path(group_id)
        return await self._io.run(self._read_file, path, self.expires)

    async def _adelete_group(self, group_id: str) -> None:
        path = self._group_path(group_id)
        await self._io.run(self._unlink, path)

    def _write(self, path: str, payload: bytes) -> None:
        with storage_errors("Writing", path):
            write_atomic(os.path.dirname(path), os.path.basename(path), payload, self.fsync)

    @staticmethod
    def _read_file(path: str, max_age: float | None = None) -> bytes | None:
        with storage_errors("Reading", path):
            try:
                with open(path, "rb") as f:
                    if max_age is not None and os.fstat(f.fileno()).st_mtime + max_age < time.time():
                        return None
                    return f.read()
            except FileNotFoundError:
                return None

    @staticmethod
    def _unlink(path: str) -> None:
        with storage_errors("Deleting", path), contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- chords -------------------------------------------------------------------------------

    async def _aset_chord_sizes(self, sizes: Sequence[tuple[str, int]]) -> None:
        await self._io.run(self._set_sizes, sizes)

    def _set_sizes(self, sizes: Sequence[tuple[str, int]]) -> None:
        for group_id, size in sizes:
            self._unlink(self._group_path(group_id, ".c"))
            self._write(self._group_path(group_id, ".s"), str(int(size)).encode())

    def chord_part(self, group_id: str, task_id: str, index: int | None,
                   part: bytes) -> ChordPart:
        """Report a finished member, on the calling thread (see the module docstring)."""
        claim = self._group_path(group_id, ".c")
        if self._read_file(claim) == _DONE:
            return ChordPart(late=True)
        parts_dir = self._group_path(group_id, ".j")
        if "/" in task_id or "\\" in task_id or "\0" in task_id:
            raise ValueError(f"Task id {task_id!r} can't be used in a file name")
        name = f"{'~inf' if index is None else f'{int(index):012d}'}-{task_id}"
        with storage_errors("Recording a chord member in", parts_dir):
            os.makedirs(parts_dir, exist_ok=True)
            write_atomic(parts_dir, name, part, self.fsync)
            size = self._read_file(self._group_path(group_id, ".s"))
            if size is None:
                return ChordPart()
            names = sorted(n for n in os.listdir(parts_dir) if not n.startswith(TEMP_PREFIX))
            if len(names) < int(size) + self._added(group_id):
                return ChordPart()
            token = uuid.uuid4().hex
            if not self._claim(claim, token):
                return ChordPart()
            parts = [self._read_file(os.path.join(parts_dir, n)) for n in names]
        return ChordPart(claimed=True, parts=tuple(p for p in parts if p is not None), token=token)

    async def achord_part(self, group_id: str, task_id: str, index: int | None,
                          part: bytes) -> ChordPart:
        return await self._io.run(self.chord_part, group_id, task_id, index, part)

    def _added(self, group_id: str) -> int:
        prefix = self.get_key_for_group(group_id, ".t.")
        total = 0
        for name in os.listdir(self.path):
            if name.startswith(prefix):
                raw = self._read_file(os.path.join(self.path, name))
                total += int(raw or 0)
        return total

    def _claim(self, path: str, token: str) -> bool:
        """Create the claim file (exclusive); take it over if its holder left it stale."""
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if st.st_mtime + self._claim_seconds() > time.time() \
                        or self._read_file(path) == _DONE:
                    return False
                with contextlib.suppress(FileNotFoundError):  # one taker wins the rename
                    os.replace(path, f"{path}.stale-{token}")
                    os.unlink(f"{path}.stale-{token}")
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(token.encode())
            return True
        return False

    async def achord_done(self, group_id: str, token: str) -> None:
        await self._io.run(self._chord_done, group_id, token)

    def _chord_done(self, group_id: str, token: str) -> None:
        claim = self._group_path(group_id, ".c")
        if self._read_file(claim) != token.encode():
            return
        parts_dir = self._group_path(group_id, ".j")
        with storage_errors("Cleaning up the chord in", parts_dir):
            for name in os.listdir(parts_dir) if os.path.isdir(parts_dir) else ():
                self._unlink(os.path.join(parts_dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(parts_dir)
            self._unlink(self._group_path(group_id, ".s"))
            prefix = self.get_key_for_group(group_id, ".t.")
            for name in os.listdir(self.path):
                if name.startswith(prefix):
                    self._unlink(os.path.join(self.path, name))
        self._write(claim, _DONE)

    async def aadd_to_chord(self, group_id: str, count: int = 1) -> None:
        path = self._group_path(group_id, f".t.{uuid.uuid4().hex}")
        await self._io.run(self._write, path, str(int(count)).encode())

    def sweep_chords(self) -> int:
        """Remove chord files older than ``chord_expires`` and ``done`` marks older than
        ``DONE_MARK_SECONDS``; returns how many went. Blocking (``cleanup``)."""
        removed = 0
        now = time.time()
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.name.startswith(self.group_keyprefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    age = now - entry.stat().st_mtime
                    limit = DONE_MARK_SECONDS if entry.name.endswith(".c") else self.chord_expires
                    if limit is None or age < limit:
                        continue
                    if entry.is_dir():
                        for name in os.listdir(entry.path):
                            self._unlink(os.path.join(entry.path, name))
                        os.rmdir(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
        return removed
