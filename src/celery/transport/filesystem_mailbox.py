"""Remote control (``Mailbox``) for ``filesystem://``: exchanges and queues as folders of files.

``FilesystemTransport`` (transport/filesystem.py) makes one ``FilesystemMailbox`` and hands
its ``Mailbox`` methods to it; this module uses that module's file helpers (atomic writes,
the process-wide name stamp) and runs every blocking call on the transport's I/O pool.

Layout
------
Everything lives in ``control_folder`` (kombu's option name; default: ``control`` next to
``data_folder_in``, made on first use), with names percent-encoded (``urllib.parse.quote``)
so that any exchange or queue name is one safe path component:

* ``fanout.<exchange>/<t>_<u>.msg``: one file per fanout payload, ``t`` the publish time in
  nanoseconds (19 digits, strictly increasing within a process), ``u`` 32 hex digits of a
  uuid4. ``fanout_publish`` deletes the files older than ``FANOUT_KEEP`` (60 s) as it writes.
  A subscription reads the files stamped after it subscribed that it has not read yet, in
  name order (it remembers the names it read, so a file renamed into place late, by a slower
  writer, is still seen); a subscriber more than 60 s behind loses what was pruned.
* ``bindings.<exchange>/<routing key>@<queue>``: one empty file per binding.
* ``queue.<queue>/<t>_<u>.msg``: the payloads waiting in a direct queue. ``pop_raw`` reads a
  file and then unlinks it; only the consumer whose unlink succeeds returns it, so of two
  consumers exactly one gets each payload. ``direct_unbind`` removes the folder (and
  ``direct_publish`` makes it again for the queue's other bindings, if any).

Payload files are written atomically (temporary file, then rename). One that cannot be read
as UTF-8 text is skipped (fanout) or deleted (direct), with a warning.

Thread-safety: coroutines may be awaited on any event loop; their file system calls run on
the transport's ``BlockingIO`` pool. Waiters are woken by ``embedded.wakeup_for(<control
folder>)`` when this process writes there, and poll for other processes. The only mutable
shared state is ``FilesystemMailbox._made`` (``FilesystemMailbox._lock``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote, unquote

from .embedded import BlockingIO, poll, wakeup_for
from .filesystem import (
    _STAMP_DIGITS,
    FIRST_POLL,
    _next_stamp,
    prepare_folder,
    read_file,
    storage_errors,
    sweep_stale_temp,
    write_atomic,
)

__all__ = ["FANOUT_KEEP", "MAILBOX_BATCH", "FilesystemMailbox"]

logger = logging.getLogger(__name__)

#: Seconds a fanout payload file is kept for subscribers that have not read it yet.
FANOUT_KEEP = 60.0
#: The most payloads one ``FanoutSubscription.get`` or ``pop_raw`` returns.
MAILBOX_BATCH = 1000

_PAYLOAD_NAME = re.compile(r"([0-9]{19})_[0-9a-f]{32}\.msg\Z")


class FilesystemMailbox:
    """``Mailbox`` of a ``FilesystemTransport``, in ``control_folder``.

    Thread-safety: coroutines may be awaited on any event loop; the other methods run on
    the ``io`` pool. ``_lock`` guards ``_made`` (control_folder checked on first use).
    """

    def __init__(
        self, io: BlockingIO, control_folder: str, polling_interval: float, fsync: bool
    ) -> None:
        self.control_folder = control_folder
        self._io = io
        self._polling_interval = polling_interval
        self._fsync = fsync
        self._wakeup = wakeup_for(control_folder)
        self._lock = threading.Lock()
        self._made = False

    def _folder(self, kind: str, name: str) -> str:
        """``control_folder/<kind>.<name, percent-encoded>``; control_folder is made (and
        checked) on first use. Pool thread."""
        with self._lock:
            if not self._made:
                prepare_folder(self.control_folder, "control_folder")
                self._made = True
        return os.path.join(self.control_folder, f"{kind}.{quote(name, safe='')}")

    async def poll(self, attempt: Callable[[], list[str]], timeout: float) -> list[str]:
        """Run ``attempt`` on the pool until it finds payloads or ``timeout`` s passed."""
        found = await poll(
            self._wakeup, lambda: self._io.run(attempt), timeout, FIRST_POLL, self._polling_interval
        )
        return list(found)

    # -- fanout --------------------------------------------------------------------------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Write a payload file for the current subscribers; prune the old ones. Any loop.
        ``routing_key`` is not kept apart here: it is in the envelope's delivery_info."""
        await self._io.run(self._fanout_write, exchange, payload.encode())

    def _fanout_write(self, exchange: str, data: bytes) -> None:
        folder = self._folder("fanout", exchange)
        ceiling = time.time_ns() - int(FANOUT_KEEP * 1e9)
        with storage_errors("Broadcasting to", folder):
            os.makedirs(folder, exist_ok=True)
            for name, stamp in _payload_files(folder):
                if stamp < ceiling:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
            sweep_stale_temp(folder)
            write_atomic(folder, _payload_name(), data, self._fsync)
        self._wakeup.notify()

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> _Subscription:
        """A subscription to the payloads published from now on (all of them: publishes
        carry no routing key here, so ``routing_key`` narrows nothing). Any loop."""
        folder = await self._io.run(self._folder, "fanout", exchange)
        return _Subscription(self, folder, _next_stamp())

    # -- direct --------------------------------------------------------------------------

    def _binding(self, exchange: str, routing_key: str, queue: str) -> tuple[str, str, str]:
        """(bindings folder, binding file name, queue folder). Pool thread."""
        name = f"{quote(routing_key, safe='')}@{quote(queue, safe='')}"
        return self._folder("bindings", exchange), name, self._folder("queue", queue)

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Create the binding file (idempotent). Any loop."""
        await self._io.run(self._bind, exchange, routing_key, queue)

    def _bind(self, exchange: str, routing_key: str, queue: str) -> None:
        bindings, name, _ = self._binding(exchange, routing_key, queue)
        with storage_errors("Binding in", bindings):
            os.makedirs(bindings, exist_ok=True)
            os.close(os.open(os.path.join(bindings, name), os.O_WRONLY | os.O_CREAT, 0o666))

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Remove the binding file and the queue's folder (idempotent). Any loop."""
        await self._io.run(self._unbind, exchange, routing_key, queue)

    def _unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        bindings, name, queue_folder = self._binding(exchange, routing_key, queue)
        with storage_errors("Unbinding in", bindings):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(bindings, name))
            for file, _ in _payload_files(queue_folder):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(queue_folder, file))
        with contextlib.suppress(OSError):  # not empty: a publish is writing into it
            os.rmdir(queue_folder)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """Write the payload into every queue bound with ``routing_key``; how many. Any loop."""
        return await self._io.run(self._direct_write, exchange, routing_key, payload.encode())

    def _direct_write(self, exchange: str, routing_key: str, data: bytes) -> int:
        bindings = self._folder("bindings", exchange)
        prefix, delivered = f"{quote(routing_key, safe='')}@", 0
        with storage_errors("Publishing to", bindings):
            try:
                names = os.listdir(bindings)
            except FileNotFoundError:
                return 0
            for queue in sorted({unquote(n[len(prefix) :]) for n in names if n.startswith(prefix)}):
                folder = self._folder("queue", queue)
                os.makedirs(folder, exist_ok=True)  # another binding's unbind may have removed it
                try:
                    write_atomic(folder, _payload_name(), data, self._fsync)
                except FileNotFoundError:
                    continue  # removed again by an unbind running right now
                delivered += 1
        if delivered:
            self._wakeup.notify()
        return delivered

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """Take the payloads waiting in ``queue``, oldest first; wait up to ``timeout`` s for
        the first. Any loop."""
        return await self.poll(lambda: self._pop(queue), timeout)

    def _pop(self, queue: str) -> list[str]:
        folder = self._folder("queue", queue)
        taken: list[str] = []
        with storage_errors("Reading from", folder):
            for name, _ in _payload_files(folder)[:MAILBOX_BATCH]:
                path = os.path.join(folder, name)
                payload = _read_payload(path, f"direct queue {queue!r}")
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # another consumer took it: only the one that unlinks keeps it
                if payload is not None:
                    taken.append(payload)
        return taken


class _Subscription:
    """One subscriber of a fanout exchange (``FilesystemMailbox.fanout_subscribe``).

    Used from the loop that made it, one ``get`` at a time: ``_seen`` is read and written
    by the pool thread running ``_read`` while ``get`` awaits it.
    """

    def __init__(self, mailbox: FilesystemMailbox, folder: str, since: int) -> None:
        self._mailbox = mailbox
        self._folder = folder
        self._since = since
        #: Names already delivered that are still young enough to be listed.
        self._seen: set[str] = set()
        self._closed = False

    async def get(self, timeout: float) -> list[str]:
        """Payloads published since the last call, in name order; ``[]`` after ``timeout``
        seconds or once closed."""
        if self._closed:
            return []
        return await self._mailbox.poll(self._read, timeout)

    def _read(self) -> list[str]:
        floor = max(self._since, time.time_ns() - int(FANOUT_KEEP * 1e9))
        self._seen = {name for name in self._seen if int(name[:_STAMP_DIGITS]) > floor}
        with storage_errors("Reading from", self._folder):
            files = _payload_files(self._folder)
        new = [name for name, stamp in files if stamp > floor and name not in self._seen]
        out = []
        for name in new[:MAILBOX_BATCH]:
            self._seen.add(name)
            payload = _read_payload(os.path.join(self._folder, name), "fanout exchange")
            if payload is not None:
                out.append(payload)
        return out

    async def close(self) -> None:
        self._closed = True


def _payload_name() -> str:
    return f"{_next_stamp():0{_STAMP_DIGITS}d}_{uuid.uuid4().hex}.msg"


def _payload_files(folder: str) -> list[tuple[str, int]]:
    """``(name, stamp)`` of the payload files in a mailbox folder, in name order (none when
    the folder does not exist)."""
    try:
        with os.scandir(folder) as entries:
            found = [
                (entry.name, int(match[1])) for entry in entries
                if (match := _PAYLOAD_NAME.match(entry.name)) and entry.is_file()
            ]  # fmt: skip
    except FileNotFoundError:
        return []
    found.sort()
    return found


def _read_payload(path: str, where: str) -> str | None:
    """A payload file's text; None when it is gone, or unreadable (logged)."""
    content = b""
    try:
        content = read_file(path)
        return content.decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Skipping malformed payload file %s of the %s (%s): %r",
                       path, where, exc, content[:120])  # fmt: skip
        return None
