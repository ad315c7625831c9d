"""``filesystem://``: a broker made of files in a folder, readable by kombu's filesystem transport.

One message is one file holding kombu's JSON envelope (``transport/envelope.py``). Producers
write into ``data_folder_out`` and consumers read ``data_folder_in`` (kombu's option names;
``filesystem:///some/dir`` uses ``/some/dir`` for both).

File names
----------
We write ``<p>_<t>_<u>.<queue>.msg``: ``p`` the priority as one digit (clamped to 0..9, 0 is
the highest, as on Redis), ``t`` the publish time in nanoseconds since the epoch, zero-padded
to 19 digits, ``u`` 32 hex digits of a uuid4. The time is made strictly increasing within a
process (``_next_stamp``), so it doubles as the sequence number: names sort by (priority,
time, sequence) as plain strings, and two publishers in different processes are told apart
by ``u``. Consumers order by (priority, position of the queue in the fetch, time).

kombu's reader takes every name whose part after the *first* dot is ``<queue>.msg`` and
takes them in ``sorted()`` order, so it reads our files, in priority-then-FIFO order among
themselves. kombu writes ``<monotonic ms>_<uuid4>.<queue>.msg``; we read those too: any name
with a non-empty, dot-free part before ``.<queue>.msg`` is a message. A name that is not ours
counts as priority 0 (kombu's filesystem transport has no priorities) and is ordered by its
modification time. Relative to each other, kombu's names and ours have no meaningful order.

Atomic writes and claims
------------------------
A message is written to ``.celery-tmp-<hex>.tmp`` in the destination folder (optionally
fsynced: transport option ``fsync``) and renamed into place, so nobody sees half a file; kombu
ignores the temporary name. kombu writes in place under an ``flock``, so we read under a
shared ``flock`` and skip empty files of foreign name for a short grace period.

A consumer claims a message by renaming it into ``<data_folder_in>/.reserved/`` as
``<claim time ns, 19 digits>-<original name>``; ``rename`` is atomic, so of several
consumers (threads or processes) exactly one wins and the others get FileNotFoundError and
move on. The delivery tag is that reserved name. Settling:

* ``ack``: unlink, or move to ``processed_folder`` under the original name (``store_processed``).
* ``requeue`` and ``restore_visible``: back under the original name (first in line again),
  marked redelivered. ``reject(requeue=True)``: under a new name (back of the queue).
* ``reject(requeue=False)`` and malformed files: moved to ``<data_folder_in>/.dead-letter/``
  under the reserved name (strip ``<ns>-`` to put one back); never deleted.

A worker holds a message whose ETA is near; one further off than half the visibility
timeout is deferred: renamed from ``.reserved/`` into ``<data_folder_in>/.delayed/`` as
``<due time ns, 19 digits>-<original name>``, where no visibility timeout sees it, and renamed
back under its original name by ``promote_due`` (any process, about once a second) when due.
``purge`` and ``queue_length`` do not count deferred messages.

Putting a message back first renames the reservation to a fresh claim time (so no other
process's ``restore_visible`` can take it meanwhile), writes the redelivered copy atomically,
then unlinks the reservation. A crash between the last two steps delivers it twice, never
zero times. ``restore_visible`` (any process) returns reservations older than
``visibility_timeout`` and sweeps temporary files a crashed writer left behind.

Remote control
--------------
``Mailbox`` (``CAP_BROADCAST``) keeps its exchanges and queues as folders in
``control_folder``; ``FilesystemTransport`` hands those methods to ``FilesystemMailbox``
(``transport/filesystem_mailbox.py``, whose docstring describes the layout).

Thread-safety: every blocking file system call made for a coroutine runs on this transport's
``BlockingIO`` pool; ``publish`` writes on the calling thread. Consumers are woken by the
process-wide ``embedded.wakeup_for(<data folder>)`` when this process writes there, and poll
for other processes. The only mutable shared state is ``_last_stamp`` (``_stamp_lock``) and
``FilesystemTransport._background`` (``FilesystemTransport._lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from ..exceptions import ConnectionLost, DecodeError, ImproperlyConfigured
from ..messaging.protocol import Message
from . import envelope
from .base import (
    CAP_BROADCAST,
    CAP_LEASE,
    CAP_PRIORITY,
    CAP_VISIBILITY_TIMEOUT,
    Delivery,
    FanoutSubscription,
)
from .embedded import BlockingIO, poll, wakeup_for

try:
    import fcntl
except ImportError:  # Windows: no flock; our own writes are atomic renames anyway
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .filesystem_mailbox import FilesystemMailbox
    from .lease import SQLiteLease
    from .sqlite import SQLiteDatabase

__all__ = [
    "FilesystemTransport",
    "message_name",
    "parse_message_name",
    "prepare_folder",
    "probe_folder",
    "read_file",
    "storage_errors",
    "sweep_stale_temp",
    "write_atomic",
]

logger = logging.getLogger(__name__)

#: Temporary files are named ``TEMP_PREFIX + hex + TEMP_SUFFIX``: hidden, and never ``.msg``.
TEMP_PREFIX = ".celery-tmp-"
TEMP_SUFFIX = ".tmp"
#: A temporary file older than this (seconds) belongs to a writer that died.
STALE_TEMP_AGE = 3600.0
RESERVED_DIR = ".reserved"
DEAD_LETTER_DIR = ".dead-letter"
PROCESSED_DIR = ".processed"
#: Messages whose far ETA a worker deferred (``defer``), named ``<due ns>-<original name>``.
DELAYED_DIR = ".delayed"
#: How long an empty file of foreign name may be a kombu writer that has not written yet.
EMPTY_FILE_GRACE_NS = 10 * 10**9
#: The first poll interval of an idle fetch (it doubles up to ``polling_interval``).
FIRST_POLL = 0.005

_OUR_PREFIX = re.compile(r"([0-9])_([0-9]{19})_[0-9a-f]{32}\Z")
_STAMP_DIGITS = 19

# ---------------------------------------------------------------------------------------
# File helpers, shared with the file:// result backend (backends/filesystem.py).
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def storage_errors(what: str, path: str) -> Iterator[None]:
    """Turn OSError into ConnectionLost naming ``what`` and ``path`` (runtime failures)."""
    try:
        yield
    except OSError as exc:
        raise ConnectionLost(f"{what} {path!r} failed: {exc.strerror or exc}") from exc


def _temp_path(folder: str) -> str:
    return os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}")


def write_atomic(folder: str, name: str, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``folder/name`` through a temporary file and a rename. Blocking.

    Readers see the old file or the whole new one, never part of it. With ``fsync`` the
    file and then the folder are flushed to disk.
    """
    tmp = _temp_path(folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync and os.name == "posix":
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_file(path: str) -> bytes:
    """The whole file, read under a shared ``flock`` (kombu writes under an exclusive one)."""
    with open(path, "rb") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        return f.read()


def probe_folder(path: str) -> None:
    """Create and remove a file in ``path``; raises OSError when that is not possible."""
    tmp = _temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.unlink(tmp)


def prepare_folder(path: str, what: str) -> str:
    """Make ``path`` (and its parents) if missing and check it is writable; its real path.

    Raises:
        ImproperlyConfigured: naming ``what`` and the path, when it is not a writable folder.
    """
    full = os.path.realpath(path)
    try:
        os.makedirs(full, exist_ok=True)
        probe_folder(full)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{what} {full!r} is not a writable directory ({exc.strerror or exc}): "
            "create it or fix its permissions"
        ) from None
    return full


def sweep_stale_temp(folder: str, max_age: float = STALE_TEMP_AGE) -> int:
    """Remove temporary files older than ``max_age`` seconds (left by a dead writer)."""
    ceiling = time.time() - max_age
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < ceiling:
                        os.unlink(entry.path)
                        removed += 1
    return removed


# ---------------------------------------------------------------------------------------
# The name scheme.
# ---------------------------------------------------------------------------------------

_stamp_lock = threading.Lock()  # guards _last_stamp
_last_stamp = 0


def _next_stamp() -> int:
    """``time.time_ns()``, made strictly increasing within the process (any thread)."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def _check_queue(queue: str) -> str:
    if not queue or "/" in queue or "\\" in queue or "\0" in queue or queue in (".", ".."):
        raise ImproperlyConfigured(f"Queue name {queue!r} can't be used in a file name")
    return queue


def message_name(priority: Any, queue: str) -> str:
    """A new file name for a message of ``queue`` (see the module docstring)."""
    digit = envelope.clamp_priority(priority)
    return f"{digit}_{_next_stamp():019d}_{uuid.uuid4().hex}.{_check_queue(queue)}.msg"


class ParsedName(NamedTuple):
    priority: int
    #: Publish time (ns) for our names; None for a foreign (kombu) name.
    stamp: int | None
    queue: str


def parse_message_name(name: str) -> ParsedName | None:
    """What a message file name says, or None when it is not a message file."""
    prefix, dot, rest = name.partition(".")
    if not dot or not prefix or len(rest) <= 4 or not rest.endswith(".msg"):
        return None
    queue = rest[:-4]
    ours = _OUR_PREFIX.match(prefix)
    if ours is None:
        return ParsedName(0, None, queue)
    return ParsedName(int(ours[1]), int(ours[2]), queue)


def _reserved_name(original: str) -> str:
    return f"{time.time_ns():0{_STAMP_DIGITS}d}-{original}"


def _split_reserved(tag: str) -> tuple[int, str] | None:
    """``(claim time ns, original name)`` of a reserved file name, or None."""
    stamp, dash, original = tag.partition("-")
    if not dash or len(stamp) != _STAMP_DIGITS or not stamp.isdigit():
        return None
    if parse_message_name(original) is None:
        return None
    return int(stamp), original


def _url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImproperlyConfigured(
            f"Invalid filesystem URL {url!r}: expected filesystem:///absolute/path or filesystem://"
        )
    path = unquote(parts.path)
    if re.match(r"/[A-Za-z]:[/\\]", path):  # filesystem:///C:/dir on Windows
        path = path[1:]
    return path


def _number(options: dict[str, Any], name: str, default: float) -> float:
    try:
        value = float(options.get(name, default))
    except (TypeError, ValueError):
        value = -1.0
    if value < 0:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, not {options[name]!r}")
    return value


class _Candidate(NamedTuple):
    key: tuple[int, int, int, str]  # priority, queue position, time, name
    name: str
    queue: str


class FilesystemTransport:
    """Transport for ``filesystem://`` (kombu's filesystem transport, plus acks). See the
    module docstring for the layout.

    Thread-safety: ``publish`` may be called from any thread; coroutines may be awaited on any
    event loop (their file system calls run on the transport's own thread pool).
    """

    capabilities = frozenset({CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, CAP_BROADCAST, CAP_LEASE})

    def __init__(
        self,
        url: str,
        *,
        transport_options: dict | None = None,
        connection_timeout: float | None = None,
        max_connections: int | None = None,
        **_ignored: Any,
    ) -> None:
        opts = dict(transport_options or {})
        self.url = url
        path = _url_path(url)
        folder_in = opts.get("data_folder_in") or path
        folder_out = opts.get("data_folder_out") or path
        if not folder_in or not folder_out:
            raise ImproperlyConfigured(
                f"The filesystem broker {url!r} needs its folders: use filesystem:///path/to/dir "
                "or set the transport options data_folder_in and data_folder_out "
                "(broker_transport_options)"
            )
        self.data_folder_in = prepare_folder(folder_in, "data_folder_in")
        self.data_folder_out = prepare_folder(folder_out, "data_folder_out")
        self.reserved_folder = prepare_folder(
            os.path.join(self.data_folder_in, RESERVED_DIR), "Reservation folder"
        )
        self.dead_letter_folder = prepare_folder(
            os.path.join(self.data_folder_in, DEAD_LETTER_DIR), "Dead-letter folder"
        )
        self.delayed_folder = prepare_folder(
            os.path.join(self.data_folder_in, DELAYED_DIR), "Delayed-message folder"
        )
        self.store_processed = bool(opts.get("store_processed", False))
        processed = opts.get("processed_folder") or os.path.join(self.data_folder_in, PROCESSED_DIR)
        self.processed_folder = (
            prepare_folder(processed, "processed_folder")
            if self.store_processed
            else os.path.realpath(processed)
        )
        self.polling_interval = max(_number(opts, "polling_interval", 0.1), FIRST_POLL)
        self.visibility_timeout = _number(opts, "visibility_timeout", 3600)
        self.fsync = bool(opts.get("fsync", False))
        self._in_wakeup = wakeup_for(self.data_folder_in)
        self._out_wakeup = wakeup_for(self.data_folder_out)
        control = opts.get("control_folder") or os.path.join(
            os.path.dirname(self.data_folder_in), "control"
        )
        self.control_folder = os.path.realpath(control)
        self._io = BlockingIO("celery-filesystem", 4)
        # Imported here, not at the top: filesystem_mailbox imports this module's helpers.
        from .filesystem_mailbox import FilesystemMailbox

        self._mailbox: FilesystemMailbox = FilesystemMailbox(
            self._io, self.control_folder, self.polling_interval, self.fsync
        )
        # _lock guards _background: tasks giving back claims a cancelled fetch made, created
        # on any loop and kept here so they are not garbage-collected while running.
        self._lock = threading.Lock()
        self._background: set[asyncio.Task[None]] = set()
        #: beat.db (``leader_lease``), opened on first use; under _lock.
        self._lease_db: SQLiteDatabase | None = None

    def __repr__(self) -> str:
        return f"<FilesystemTransport in={self.data_folder_in} out={self.data_folder_out}>"

    # -- publishing ----------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[str, bytes]:
        _, payload, priority = envelope.encode(message)
        return message_name(priority, message.routing_key), payload.encode()

    def _write_messages(self, files: Sequence[tuple[str, bytes]]) -> None:
        with storage_errors("Publishing to", self.data_folder_out):
            for name, data in files:
                write_atomic(self.data_folder_out, name, data, self.fsync)
        self._out_wakeup.notify()

    def publish(self, message: Message) -> None:
        """Write one message file. Blocking, on the calling thread; any thread."""
        self._write_messages([self._encode(message)])

    async def apublish(self, message: Message) -> None:
        """Write one message file on the I/O pool. Any loop."""
        await self._io.run(self._write_messages, [self._encode(message)])

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        """Write several message files in one trip to the I/O pool. Any loop."""
        if messages:
            await self._io.run(self._write_messages, [self._encode(m) for m in messages])

    async def declare(self, queues: Iterable[str]) -> None:
        """Nothing to do: a queue is the set of files named after it."""

    # -- consuming -----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Claim up to ``max_count`` messages; wait up to ``timeout`` s for some. Any loop.

        Between scans it waits for a publish in this process (woken at once) or a poll
        interval, growing from FIRST_POLL to ``polling_interval``, for other processes.
        """
        if not queues or max_count <= 0:
            return []
        wanted = tuple(queues)
        found = await poll(self._in_wakeup, lambda: self._claim_or_give_back(wanted, max_count),
                           timeout, FIRST_POLL, self.polling_interval)
        return list(found)

    async def _claim_or_give_back(self, queues: tuple[str, ...], count: int) -> list[Delivery]:
        """Run one claim on the pool; if the caller is cancelled meanwhile, the files the
        claim took go back to the queue unchanged when it finishes."""
        claim = asyncio.ensure_future(self._io.run(self._claim, queues, count))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            claim.add_done_callback(self._give_back_abandoned)
            raise

    def _give_back_abandoned(self, claim: asyncio.Future[list[Delivery]]) -> None:
        if claim.cancelled() or claim.exception() is not None or not claim.result():
            return
        tags = [d.delivery_tag for d in claim.result()]
        task = asyncio.get_running_loop().create_task(self._io.run(self._unclaim, tags))
        with self._lock:
            self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("Could not give back abandoned claims: %s", task.exception())

    def _candidates(self, queues: tuple[str, ...]) -> list[_Candidate]:
        """Message files of ``queues`` in delivery order, from their names (pool thread)."""
        position = {q: i for i, q in reversed(list(enumerate(queues)))}
        now = time.time_ns()
        found: list[_Candidate] = []
        with os.scandir(self.data_folder_in) as entries:
            for entry in entries:
                parsed = parse_message_name(entry.name)
                if parsed is None or parsed.queue not in position:
                    continue
                stamp = parsed.stamp
                if stamp is None:  # a kombu name: order by mtime; skip while kombu writes
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    if st.st_size == 0 and now - st.st_mtime_ns < EMPTY_FILE_GRACE_NS:
                        continue
                    stamp = st.st_mtime_ns
                key = (parsed.priority, position[parsed.queue], stamp, entry.name)
                found.append(_Candidate(key, entry.name, parsed.queue))
        found.sort()
        return found

    def _claim(self, queues: tuple[str, ...], count: int) -> list[Delivery]:
        """Rename up to ``count`` good messages into the reservation folder (pool thread)."""
        deliveries: list[Delivery] = []
        with storage_errors("Reading messages from", self.data_folder_in):
            for candidate in self._candidates(queues):
                if len(deliveries) >= count:
                    break
                tag = _reserved_name(candidate.name)
                reserved = os.path.join(self.reserved_folder, tag)
                try:
                    os.rename(os.path.join(self.data_folder_in, candidate.name), reserved)
                except FileNotFoundError:
                    continue  # another consumer claimed it first
                delivery = self._open(tag, reserved, candidate.queue)
                if delivery is not None:
                    deliveries.append(delivery)
        return deliveries

    def _open(self, tag: str, path: str, queue: str) -> Delivery | None:
        """The Delivery of a claimed file; None when it went to the dead-letter folder."""
        content = b""
        try:
            content = read_file(path)
            return envelope.decode(tag, content, queue)
        except FileNotFoundError:
            return None  # only a restore_visible that thought us dead could have taken it
        except OSError as exc:
            self._dead_letter(tag, f"{type(exc).__name__}: {exc}", content)
            return None
        except DecodeError as exc:
            self._dead_letter(tag, str(exc), content)
            return None

    def _dead_letter(self, tag: str, why: str, content: bytes) -> None:
        logger.warning(
            "Malformed message file %r in %s (%s) moved to %s: %r",
            tag.partition("-")[2], self.data_folder_in, why, self.dead_letter_folder, content[:120],
        )  # fmt: skip
        self._move_reserved(tag, self.dead_letter_folder, tag)

    def _move_reserved(self, tag: str, folder: str, name: str) -> bool:
        """Rename a reservation to ``folder/name``; False when it was already gone."""
        try:
            os.rename(os.path.join(self.reserved_folder, tag), os.path.join(folder, name))
        except FileNotFoundError:
            return False
        return True

    def _unclaim(self, tags: Sequence[str]) -> None:
        """Rename reservations back under their original names, content unchanged."""
        with storage_errors("Returning messages to", self.data_folder_in):
            for tag in tags:
                self._move_reserved(tag, self.data_folder_in, tag.partition("-")[2])
        self._in_wakeup.notify()

    # -- settling ------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove the reservations (or move them to ``processed_folder``). Any loop."""
        if deliveries:
            await self._io.run(self._ack, [d.delivery_tag for d in deliveries])

    def _ack(self, tags: Sequence[str]) -> None:
        with storage_errors("Acknowledging in", self.reserved_folder):
            for tag in tags:
                path = os.path.join(self.reserved_folder, tag)
                try:
                    if self.store_processed:
                        _move(path, os.path.join(self.processed_folder, tag.partition("-")[2]))
                    else:
                        os.unlink(path)
                except FileNotFoundError:
                    logger.debug("Ack of %s: already settled or restored", tag)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries back at their original place (delivered first again). Any loop."""
        if deliveries:
            await self._io.run(self._put_back_all, [d.delivery_tag for d in deliveries], True)

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        """Refuse deliveries: to the back of their queue (``requeue``), else to the
        dead-letter folder. Any loop."""
        if not deliveries:
            return
        tags = [d.delivery_tag for d in deliveries]
        if requeue:
            await self._io.run(self._put_back_all, tags, False)
        else:
            logger.info("Dead-lettering %d rejected message(s) in %s: %s",
                        len(tags), self.dead_letter_folder, ", ".join(tags))  # fmt: skip
            await self._io.run(self._reject_for_good, tags)

    def _reject_for_good(self, tags: Sequence[str]) -> None:
        with storage_errors("Dead-lettering into", self.dead_letter_folder):
            for tag in tags:
                self._move_reserved(tag, self.dead_letter_folder, tag)

    def _put_back_all(self, tags: Sequence[str], keep_place: bool) -> int:
        with storage_errors("Returning messages to", self.data_folder_in):
            moved = sum(self._put_back(tag, keep_place) for tag in tags)
        if moved:
            self._in_wakeup.notify()
        return moved

    def _put_back(self, tag: str, keep_place: bool) -> bool:
        """Return one reservation to its queue, marked redelivered; False if it was gone."""
        original = tag.partition("-")[2]
        taken = _reserved_name(original)  # a fresh claim: no restore_visible can take it now
        path = os.path.join(self.reserved_folder, taken)
        try:
            os.rename(os.path.join(self.reserved_folder, tag), path)
            content = read_file(path)
        except FileNotFoundError:
            return False
        try:
            env = envelope.loads(content)
        except DecodeError as exc:
            self._dead_letter(taken, str(exc), content)
            return False
        data = envelope.mark_redelivered(env).encode()
        name = original
        parsed = parse_message_name(original)
        if not keep_place and parsed is not None:  # (reserved names always parse)
            name = message_name(envelope.priority_of(env), parsed.queue)
        write_atomic(self.data_folder_in, name, data, self.fsync)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True

    # -- far ETAs (the worker's defer / promote_due) ----------------------------------------

    async def defer(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Take reservations whose ETA is far off out of ``.reserved/`` (so no visibility
        timeout redelivers them) into ``.delayed/`` as ``<due ns>-<original name>``, one
        atomic rename each, until ``promote_due`` puts them back. Any loop."""
        if deliveries:
            await self._io.run(self._defer, [(d.delivery_tag, due) for d, due in deliveries])

    def _defer(self, items: Sequence[tuple[str, float]]) -> None:
        with storage_errors("Deferring into", self.delayed_folder):
            for tag, due in items:
                name = f"{max(int(due * 1e9), 0):019d}-{tag.partition('-')[2]}"
                if not self._move_reserved(tag, self.delayed_folder, name):
                    logger.debug("Defer of %s: already settled or restored", tag)

    async def promote_due(self, limit: int = 500) -> int:
        """Put deferred messages whose ETA has come back in their queue, under their
        original names (their place and priority); how many. Any loop, any process."""
        return await self._io.run(self._promote, limit)

    def _promote(self, limit: int) -> int:
        now, moved = time.time_ns(), 0
        with storage_errors("Promoting from", self.delayed_folder):
            for name in sorted(os.listdir(self.delayed_folder))[:limit]:
                due, _, original = name.partition("-")
                if not due.isdigit() or int(due) > now:
                    break  # sorted by due time: the rest are later (or not ours)
                with contextlib.suppress(FileNotFoundError):  # another process took it
                    os.rename(os.path.join(self.delayed_folder, name),
                              os.path.join(self.data_folder_in, original))
                    moved += 1
        if moved:
            self._in_wakeup.notify()
        return moved

    async def restore_visible(self) -> int:
        """Return reservations older than ``visibility_timeout`` to their queues (marked
        redelivered, at their original place); returns the count. Any loop, any process."""
        restored = await self._io.run(self._restore)
        if restored:
            logger.info("Restored %d unacknowledged message(s) to their queues", restored)
        return restored

    def _restore(self) -> int:
        ceiling = time.time_ns() - int(self.visibility_timeout * 1e9)
        with storage_errors("Restoring messages in", self.reserved_folder):
            with os.scandir(self.reserved_folder) as entries:
                expired = [
                    entry.name for entry in entries
                    if (split := _split_reserved(entry.name)) is not None and split[0] <= ceiling
                ]  # fmt: skip
            for folder in {self.data_folder_in, self.data_folder_out}:
                sweep_stale_temp(folder)
        return self._put_back_all(expired, True)

    # -- queues and lifecycle ------------------------------------------------------------

    def _queue_files(self, queue: str) -> list[str]:
        with os.scandir(self.data_folder_in) as entries:
            return [
                e.path for e in entries
                if (parsed := parse_message_name(e.name)) is not None and parsed.queue == queue
            ]  # fmt: skip

    def _purge(self, queue: str) -> int:
        removed = 0
        with storage_errors("Purging", self.data_folder_in):
            for path in self._queue_files(queue):
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass  # claimed by a consumer meanwhile
        return removed

    async def purge(self, queue: str) -> int:
        """Delete the waiting messages of ``queue`` (not the reserved ones). Any loop."""
        await self._io.settle()  # publishes this process started earlier land first
        return await self._io.run(self._purge, queue)

    def _length(self, queue: str) -> int:
        with storage_errors("Listing", self.data_folder_in):
            return len(self._queue_files(queue))

    async def queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue`` (reserved ones not counted). Any loop."""
        return await self._io.run(self._length, queue)

    # -- remote control: FilesystemMailbox (filesystem_mailbox.py) does the work ----------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Write a payload file for the current subscribers; prune the old ones. Any loop."""
        await self._mailbox.fanout_publish(exchange, payload, routing_key)

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> FanoutSubscription:
        """A subscription to the payloads published from now on (all of them: publishes
        carry no routing key here, so ``routing_key`` narrows nothing). Any loop."""
        return await self._mailbox.fanout_subscribe(exchange)

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Create the binding file (idempotent). Any loop."""
        await self._mailbox.direct_bind(exchange, routing_key, queue)

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Remove the binding file and the queue's folder (idempotent). Any loop."""
        await self._mailbox.direct_unbind(exchange, routing_key, queue)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """Write the payload into every queue bound with ``routing_key``; how many. Any loop."""
        return await self._mailbox.direct_publish(exchange, routing_key, payload)

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """Take the payloads waiting in ``queue``, oldest first; wait up to ``timeout`` s for
        the first. Any loop."""
        return await self._mailbox.pop_raw(queue, timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def _folders(self) -> list[str]:
        folders = [self.data_folder_in, self.data_folder_out]
        folders += [self.reserved_folder, self.dead_letter_folder, self.delayed_folder]
        return folders + [self.processed_folder] if self.store_processed else folders

    def _check_folders(self) -> None:
        for folder in self._folders():
            with storage_errors("Writing to folder", folder):
                probe_folder(folder)

    async def ping(self) -> None:
        """Raise ConnectionLost, naming the folder, unless every folder is writable."""
        await self._io.run(self._check_folders)

    def leader_lease(self, name: str) -> SQLiteLease:
        """Beat's leader lease ``name``: a row in ``beat.db``, a SQLite file in the control
        folder, opened on first use (lease.py)."""
        from .lease import SQLiteLease
        from .sqlite import SQLiteDatabase

        with self._lock:
            if self._lease_db is None:
                path = os.path.join(prepare_folder(self.control_folder, "control_folder"), "beat.db")
                self._lease_db = SQLiteDatabase(f"sqlite:///{quote(path)}", label="Beat lease",
                                                schemes=("sqlite",), schema=(), io_threads=1)
            return SQLiteLease(self._lease_db, name)

    def close(self) -> None:
        """Stop the I/O pool (a later call starts a new one). Idempotent; any non-pool thread."""
        self._io.close()
        with self._lock:
            db = self._lease_db
        if db is not None:
            db.close()

    async def aclose(self) -> None:
        """Nothing is bound to a loop. Idempotent."""


def _move(src: str, dst: str) -> None:
    """Rename, copying when ``dst`` is on another file system (a processed_folder elsewhere)."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(src, dst)
