"""valkey-py's asyncio pool and connections, without the loop turns it adds to each command.

valkey-py (6.x) makes every pooled asyncio command wait for one or two extra turns of the
event loop, each a selector poll after everything else ready on the loop has run:

* the pool checks a connection before handing it out by reading from it under a zero
  timeout (``can_read_destructive``); a read that finds nothing ends only when that timeout
  fires, on the loop's next turn;
* a connection with a socket timeout writes inside ``asyncio.wait_for``, which on Python
  3.11 runs the write as a new task, started on the loop's next turn.

An idle worker sends three commands per task (BRPOP, the batch script, the result script);
a timestamp trace showed the result script written about 0.15 ms after the flusher asked
for it, and the other coroutines on the loop running in between. Here:

* the pool hands a connection out at once when nothing is left to read on it: nothing in
  its stream's buffer or parsed ahead, no end of stream or error seen. Otherwise, or with
  a parser whose buffer cannot be inspected, valkey-py's own check runs. What the quick
  check cannot see is bytes in the kernel that the loop has not read yet, which on an idle
  pooled connection are either a reply left unread (valkey-py disconnects a command that
  is cancelled or fails mid-reply, so none is left) or the server closing the connection
  (the command then fails with ConnectionError, which every client of ours retries once);
* a connection writes a command at once and waits, under its socket timeout, only when
  the transport could not send it all, which is what that timeout is for.

And one error is put right: uvloop raises RuntimeError ("the handler is closed") for a write
to a connection the server already closed, where asyncio's own loop raises or ignores an
OSError; valkey-py passes it through, so it would escape every ``except`` of a connection
error (a broker that closes connections at accept made the flusher log its acks' failures
as unexpected errors). Such a write raises valkey's ConnectionError here.

All of it runs on the loop that owns the connection, as valkey-py's own code does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, TypeVar

import valkey.asyncio as avalkey
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ResponseError

__all__ = ["BlockingConnectionPool", "ConnectionPool", "Popper", "direct_write", "nothing_to_read",
           "pack"]

C = TypeVar("C", bound=type[AbstractConnection])

logger = logging.getLogger(__name__)


def pack(*args: str | bytes | int) -> bytes:
    """The RESP encoding of a command (text, bytes and ints only): what valkey-py's
    ``pack_command`` makes, at a fraction of its cost, for commands packed once each."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def _parser_has_data(parser: Any) -> bool | None:
    """Whether the reply parser holds bytes of a reply not yet read out; None if unknown."""
    reader: Any = getattr(parser, "_reader", None)  # libvalkey's or hiredis's reader
    if hasattr(reader, "has_data"):
        return bool(reader.has_data())
    buffer = getattr(parser, "_buffer", None)  # valkey-py's pure-Python parser
    if isinstance(buffer, bytes):
        return bool(buffer)
    return None


def nothing_to_read(connection: AbstractConnection) -> bool:
    """True if ``connection`` is connected and certainly holds no unread reply."""
    parser: Any = getattr(connection, "_parser", None)
    stream = getattr(parser, "_stream", None)
    if not connection.is_connected or not isinstance(stream, asyncio.StreamReader):
        return False
    if stream.at_eof() or stream.exception() is not None:
        return False
    return not getattr(stream, "_buffer", True) and _parser_has_data(parser) is False


def _unread(connection: AbstractConnection) -> bool:
    """True if bytes of a reply wait in the connection's stream, which valkey-py's own check
    misses with its pure-Python parser (it looks at the parser's buffer only, so a pooled
    connection holding a stale reply would answer the next command with it)."""
    stream = getattr(getattr(connection, "_parser", None), "_stream", None)
    return isinstance(stream, asyncio.StreamReader) and bool(getattr(stream, "_buffer", b""))


class _QuickCheck:
    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if nothing_to_read(connection):
            return
        if connection.is_connected and _unread(connection):
            await connection.disconnect()  # the base check then connects anew
        await super().ensure_connection(connection)  # type: ignore[misc]


class ConnectionPool(_QuickCheck, avalkey.ConnectionPool):
    """``valkey.asyncio.ConnectionPool`` with the quick check of a pooled connection."""


class BlockingConnectionPool(_QuickCheck, avalkey.BlockingConnectionPool):
    """``valkey.asyncio.BlockingConnectionPool`` with the quick check of a pooled connection."""


@functools.cache
def direct_write(cls: C) -> C:
    """``cls``, a valkey.asyncio connection class, writing commands without a loop turn."""
    base = cls.send_packed_command

    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        try:
            writer = self._writer
            if writer is None or not self.socket_timeout:  # unconnected, or no wait_for to skip
                return await base(self, command, check_health)
            if check_health:
                await self.check_health()  # may PING, or reconnect: take the writer again
                writer = self._writer
            if writer is None or writer.transport.is_closing():
                return await base(self, command, False)  # its errors, raised its way
            if isinstance(command, str):
                command = command.encode()
            writer.writelines([command] if isinstance(command, bytes) else command)
            if writer.transport.get_write_buffer_size():
                # Not all sent: wait for the rest under the socket timeout (nothing more to
                # write).
                await base(self, [], False)
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):  # (uvloop's words for a closed transport)
                raise
            await self.disconnect(nowait=True)
            raise ValkeyConnectionError(self._error_message(exc)) from exc

    quick: Any = type(cls.__name__, (cls,), {"send_packed_command": send_packed_command,
                                             "__module__": __name__})
    return quick


class Popper:
    """Blocking commands (a consumer's BLMOVE, transport/redis_reserved.py) on a connection
    of their own, kept between them.

    An idle worker sends one blocking command per task. Through the client, each pays for
    valkey-py's command path (a pool checkout and check-in, packing its arguments, the retry
    wrapper): on the benchmark machine that was about 80 µs of the loop thread's CPU per
    pop, against about 45 µs for writing the command packed once and reading the reply on a
    connection set aside. Here the connection is made like the pool's, outside it (a pool
    limited to one connection must not lose it for good), and connected on first use. A
    send or read that fails or is cancelled disconnects it (valkey-py does), and the next
    command connects again; ``close`` disconnects it.

    ``ahead`` queues a command whose reply nobody waits for (an LREM, a heartbeat): it is
    written together with the next ``call``'s command, in one system call (a write is about
    as costly as the rest of a lone task's wait), or by ``flush``; ``call`` reads such
    replies first, in order, and drops them (an error reply is logged).

    Loop-bound, one command at a time: ``busy`` is set while one is in flight.
    """

    def __init__(self, pool: Any) -> None:
        self._conn: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        self._packed: dict[tuple[Any, ...], bytes] = {}
        self._ahead: list[bytes] = []  # packed commands not written yet
        self._ahead_replies = 0  # how many replies those will bring
        self._unread = 0  # replies of commands written ahead, not read yet
        self.busy = False

    def _pack(self, args: tuple[Any, ...]) -> bytes:
        packed = self._packed.get(args)
        if packed is None:
            if len(self._packed) >= 64:  # commands that differ each time would grow it
                self._packed.clear()
            packed = self._packed[args] = b"".join(self._conn.pack_command(*args))
        return packed

    def ahead(self, packed: bytes, replies: int = 1) -> None:
        """Queue packed commands (``pack``) to go out before the next ``call``'s, which
        bring ``replies`` replies (0 after ``CLIENT REPLY SKIP``)."""
        self._ahead.append(packed)
        self._ahead_replies += replies

    @property
    def pending(self) -> bool:
        """Commands queued ``ahead`` wait to be written."""
        return bool(self._ahead)

    async def flush(self) -> None:
        """Write what was queued ahead now (no reply is waited for).

        Raises:
            the driver's connection errors (the connection is disconnected).
        """
        if not self._ahead or self.busy:
            return
        ahead, self._ahead = self._ahead, []
        self._unread += self._ahead_replies  # before the write yields: a call may follow
        self._ahead_replies = 0
        self.busy = True
        try:
            await self._conn.send_packed_command(ahead, check_health=False)
        except BaseException:
            self._unread = 0
            raise
        finally:
            self.busy = False

    async def settle(self) -> None:
        """Write what waits ahead and read the replies of all written ahead, so that they
        have run (when no ``call`` is in flight)."""
        await self.flush()
        while self._unread:
            self._unread -= 1
            try:
                await self._conn.read_response()
            except ResponseError as exc:
                logger.warning("A command sent ahead on %s failed: %s", self._conn, exc)

    async def call(self, args: tuple[Any, ...], *then: tuple[Any, ...]) -> Any:
        """Send the command ``args`` and return its raw reply (no response callbacks); with
        ``then``, commands written with it (run by the server right after it, even after a
        blocking one) and a list of all the replies.

        Raises:
            the driver's errors: ResponseError for an error reply (the connection stays),
            ConnectionError/TimeoutError/OSError otherwise (it is disconnected).
        """
        self.busy = True
        conn = self._conn
        ahead, self._ahead = self._ahead, []
        self._unread += self._ahead_replies
        self._ahead_replies = 0
        try:
            commands = [*ahead, self._pack(args), *map(self._pack, then)]
            await conn.send_packed_command(commands, check_health=False)  # connects
            while self._unread:
                self._unread -= 1
                try:
                    await conn.read_response()
                except ResponseError as exc:
                    logger.warning("A command sent ahead of %s on %s failed: %s", args[0],
                                   conn, exc)
            if not then:
                return await conn.read_response()
            replies: list[Any] = []
            error: ResponseError | None = None
            for _ in range(1 + len(then)):  # every reply read, so none is left behind
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    error = error or exc
                    replies.append(None)
            if error is not None:
                raise error
            return replies
        except BaseException:
            if not conn.is_connected:
                self._unread = 0
            raise
        finally:
            self.busy = False

    async def close(self) -> None:
        await self._conn.disconnect()
