"""What a blocking wait takes on Redis is reserved at once: each consumer's own lists.

A fetch that finds its queues empty waits for a message with one blocking command per queue
key (``BLMOVE key <list> RIGHT LEFT``), each on a connection of its own (the keys are a
queue's priority sub-queues and the queues given: ``BLMOVE`` takes one source). The command
moves the message from the queue into this consumer's reserved list of that key in one step
on the server, so a worker killed (or a connection cut) after the move and before the fetch
script records the message in ``unacked`` leaves it in that list, not nowhere, as kombu's
``BRPOP`` would (issue 20, item 7).

* A reserved list is ``<prefix>celery-asyncio.reserved.<consumer id>:<queue key>``; the
  consumer id is made afresh for each transport and event loop. The sorted set
  ``<prefix>celery-asyncio.reserved`` registers each list with the time its consumer last
  showed it is alive (a heartbeat sent before a wait, at most every quarter of the
  visibility timeout, and by every fetch script).
* A message taken by a wait is handed over; if the handler settles it on the spot (acks
  early), an ``LREM`` takes it out of the list, written on the wait's connection together
  with that key's next wait (one system call; about 1 ms later for a lone task), or on its
  own after ``FORGET_WITHIN`` if no wait comes (the consumer is busy); its reply is read
  before the next wait's. Otherwise the fetch script moves it from the list into
  ``unacked``, with the batch.
* A wait whose reply was lost (its connection broke) may have moved a message nobody read:
  before that key is waited on again, its list goes back to the queue (``RECLAIM``). So
  does every list of this consumer when the transport closes.
* ``restore_visible`` (any of our workers) gives back the lists whose heartbeat is older
  than the visibility timeout: their consumer is gone. Their messages go back first in line,
  marked redelivered.

kombu's layout is unchanged (queues, ``unacked``, ``unacked_index``): upstream workers read
the same queues; they do not know these lists, so a message a dead worker of ours left in
one comes back only when one of our workers restores it.

Waits stay armed between fetches: one that took a message while no fetch was waiting keeps
it (in its list) for the next fetch, at most one per queue key. Event-loop bound: a
``Waiters`` belongs to the loop that made it, and one fetch waits at a time (``lock``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from valkey.exceptions import ResponseError

from ..exceptions import ConnectionLost
from .redis_aio import Popper, pack
from .redis_keys import Layout
from .redis_publish import RETRYABLE

__all__ = ["REGISTRY", "RESERVED", "Waiters", "source_of"]

logger = logging.getLogger("celery.transport.redis")

#: The registry of reserved lists (a sorted set: list key -> last heartbeat, epoch seconds).
REGISTRY = "celery-asyncio.reserved"
#: What each reserved list's name starts with (after the global key prefix).
RESERVED = "celery-asyncio.reserved."
#: Each consumer's fetch journal (after the global key prefix, before its id): what its last
#: fetch script reserved, for a retry after that script's reply was lost (redis_scripts.FETCH).
JOURNAL = "celery-asyncio.fetched."
#: How many tokens of fetch scripts whose reply was lost a consumer keeps claiming.
UNSURE_KEPT = 16
#: Seconds an LREM of a message acked on the spot waits for the next wait to go out with.
FORGET_WITHIN = 0.005
_SKIP = pack("CLIENT", "REPLY", "SKIP")


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def source_of(list_key: str, prefix: str) -> str | None:
    """The queue key a reserved list takes from, or None if the name is not one."""
    head = prefix + RESERVED
    if not list_key.startswith(head):
        return None
    _, colon, source = list_key[len(head):].partition(":")
    return source if colon and source else None


class _Waiter:
    """One queue key's blocking move, on its connection; fields touched on its loop only."""

    __slots__ = ("key", "list_key", "popper", "task", "item", "left", "lost", "beat", "timer")

    def __init__(self, pool: Any, key: str, list_key: str) -> None:
        self.key, self.list_key = key, list_key
        self.popper = Popper(pool)
        self.task: asyncio.Task[None] | None = None
        #: What the last wait moved into the list, until a fetch takes it.
        self.item: bytes | None = None
        #: How many messages its queue key still held right after that (an LLEN written
        #: with the wait, run by Redis just after it): a backlog is fetched as a batch.
        self.left = 0
        #: A wait failed on a broken connection: the list may hold a message nobody read.
        self.lost = False
        self.beat = 0.0  # time.monotonic() of the last heartbeat sent
        #: Writes the LREMs queued ahead if no wait took them along (``Waiters.forget``).
        self.timer: asyncio.TimerHandle | None = None


class Waiters:
    """A consumer's blocking waits on one event loop (see the module docstring)."""

    def __init__(self, pool: Any, prefix: str, heartbeat_every: float,
                 reclaim: Callable[[str, str], Awaitable[int]]) -> None:
        self.consumer_id = uuid.uuid4().hex
        self._pool = pool
        self._prefix = prefix
        self._registry = prefix + REGISTRY
        self._heartbeat_every = heartbeat_every
        self._reclaim = reclaim  # (list key, queue key) -> messages given back
        self._by_key: dict[str, _Waiter] = {}
        self._lists: dict[tuple[str, ...], tuple[str, ...]] = {}  # queue keys -> lists
        self._fetch_keys: dict[tuple[str, ...], tuple[str, ...]] = {}  # queue keys -> KEYS
        self._by_layout: dict[tuple[str, ...], list[tuple[int, _Waiter]]] = {}
        #: Commands whose reply is not wanted go after ``CLIENT REPLY SKIP`` (no reply to
        #: read: as costly as the rest of a lone task's wait); None until a wait tried it.
        self._skip: bool | None = None
        self._woken: asyncio.Future[None] | None = None
        self._command = "BLMOVE"  # BRPOPLPUSH on a server older than 6.2 (same ends)
        #: One fetch waits at a time: the item a wait brings goes to exactly one.
        self.lock = asyncio.Lock()
        self._flushing: set[asyncio.Task[None]] = set()
        #: Whether a queue key still held messages right after the waits that ``taken``
        #: last returned took theirs.
        self.backlog = False
        #: The fetch journal (see ``claims``).
        self.journal_key = f"{prefix}{JOURNAL}{self.consumer_id}"
        self._tokens = 0
        self._unsure: list[str] = []

    # -- the fetch journal -----------------------------------------------------------------

    @property
    def journaled(self) -> bool:
        """Whether a fetch script ran with this consumer's journal."""
        return self._tokens > 0

    def token(self) -> str:
        """A new token for one run of the fetch script (unique for this consumer)."""
        self._tokens += 1
        return str(self._tokens)

    def claims(self) -> list[str]:
        """The tokens of fetch scripts whose reply was lost: each may have run, and what it
        reserved (in ``unacked``, in the journal if no later run reserved anything) is handed
        to the next run that claims it. A copy: the caller's."""
        return self._unsure[:]

    def settle_claims(self, resolved: list[str], lost: list[str]) -> None:
        """A fetch script's reply came (``resolved``: the tokens it claimed, handed over now
        or never to be found), or did not (``lost``: its tokens, claimed from now on)."""
        unsure = [t for t in self._unsure if t not in resolved] + lost
        self._unsure = unsure[-UNSURE_KEPT:]

    def list_key(self, key: str) -> str:
        return f"{self._prefix}{RESERVED}{self.consumer_id}:{key}"

    def lists(self, layout: Layout) -> tuple[str, ...]:
        """This consumer's reserved list of each of the layout's queue keys, in order."""
        lists = self._lists.get(layout.queue_keys)
        if lists is None:
            lists = self._lists[layout.queue_keys] = tuple(map(self.list_key, layout.queue_keys))
        return lists

    def fetch_keys(self, layout: Layout) -> tuple[str, ...]:
        """The fetch script's KEYS for the layout (redis_scripts.FETCH), made once."""
        keys = self._fetch_keys.get(layout.queue_keys)
        if keys is None:
            keys = self._fetch_keys[layout.queue_keys] = (
                *layout.script_keys[:4], self.journal_key, *layout.script_keys[4:],
                *self.lists(layout))
        return keys

    def _pairs(self, layout: Layout) -> list[tuple[int, _Waiter]]:
        """``(key number, its wait)`` of each queue key of the layout, made once."""
        pairs = self._by_layout.get(layout.queue_keys)
        if pairs is None:
            pairs = self._by_layout[layout.queue_keys] = []
            for number, key in enumerate(layout.queue_keys, 1):
                waiter = self._by_key.get(key)
                if waiter is None:
                    waiter = self._by_key[key] = _Waiter(self._pool, key, self.list_key(key))
                pairs.append((number, waiter))
        return pairs

    # -- taking what the waits brought -------------------------------------------------

    def taken(self, layout: Layout) -> list[tuple[int, bytes]]:
        """``(key number, message)`` of each wait of the layout that moved a message since
        it was last asked; they are the caller's now."""
        out: list[tuple[int, bytes]] = []
        backlog = False
        for number, waiter in self._pairs(layout):
            if waiter.item is not None:
                out.append((number, waiter.item))
                backlog = backlog or bool(waiter.left)
                waiter.item, waiter.left = None, 0
        self.backlog = backlog
        return out

    def untake(self, layout: Layout, moved: list[tuple[int, bytes]]) -> None:
        """Messages ``taken`` whose record failed (and that were not handed over): the next
        fetch takes them again (they are still in their lists)."""
        pairs = self._pairs(layout)
        for number, item in moved:
            pairs[number - 1][1].item = item

    def lost(self, layout: Layout, moved: list[tuple[int, bytes]]) -> None:
        """Messages whose record failed for good: their lists go back to the queues before
        their keys are waited on again."""
        pairs = self._pairs(layout)
        for number, _ in moved:
            pairs[number - 1][1].lost = True

    async def wait(self, layout: Layout, block: float) -> list[tuple[int, bytes]]:
        """Arm a wait on every queue key of the layout that has none in flight, then wait up
        to ``block`` seconds until one of them moves a message; what they moved (and
        ``backlog`` then says whether more waited behind it).

        A wait that fails on a broken connection is armed again at once on a new one, after
        its list was given back; one armed by this call that fails twice raises
        ConnectionLost (the broker is away: the consumer backs off). A failure this call
        did not see (a wait of an earlier fetch, or a record that failed) is not counted: a
        connection left idle while the broker was away fails on its first use.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        pairs = self._pairs(layout)
        armed: dict[str, int] = {}  # queue key -> waits this call armed on it
        while True:
            # Made before arming: a wait that ends while another is armed (their arming
            # awaits a give-back) wakes it, so that no wait is left unarmed until the deadline.
            woken = self._woken = loop.create_future()
            try:
                for _, waiter in pairs:
                    if waiter.task is None and waiter.item is None:
                        await self._arm(waiter, block, armed)
                got = self.taken(layout)
                remaining = deadline - loop.time()
                if got or remaining <= 0:
                    return got
                # A future and a timer: asyncio.wait_for costs about as much as the rest of
                # the wait.
                timer = loop.call_later(remaining, _wake, woken)
                try:
                    await woken
                finally:
                    timer.cancel()
            finally:
                self._woken = None

    async def _arm(self, waiter: _Waiter, block: float, armed: dict[str, int]) -> None:
        """Start a wait on ``waiter``'s key (none in flight, no message of it waiting);
        ``armed`` counts the waits the calling ``wait`` armed on each key."""
        if waiter.lost:
            if armed.get(waiter.key, 0) >= 2:
                raise ConnectionLost(f"blocking wait on {waiter.key!r} failed twice")
            await self._give_back(waiter)
        armed[waiter.key] = armed.get(waiter.key, 0) + 1
        if waiter.timer is not None:  # the wait takes the LREMs queued ahead along
            waiter.timer.cancel()
            waiter.timer = None
        beat = time.monotonic() - waiter.beat >= self._heartbeat_every
        waiter.task = asyncio.get_running_loop().create_task(self._block(waiter, block, beat))

    async def _block(self, waiter: _Waiter, block: float, beat: bool) -> None:
        """One wait (its own task): the message it moved is left in ``waiter.item``."""
        popper = waiter.popper
        try:
            if self._skip is None:
                self._skip = await self._reply_skip(popper)
            if beat:
                waiter.beat = time.monotonic()
                self._ahead(popper, pack("ZADD", self._registry, repr(time.time()),
                                         waiter.list_key))
            length = ("LLEN", waiter.key)
            try:
                waiter.item, waiter.left = await popper.call(self._wait_command(waiter, block),
                                                             length)
            except ResponseError as exc:
                if self._command != "BLMOVE" or "unknown command" not in str(exc).lower():
                    raise
                logger.info("Redis has no BLMOVE (older than 6.2): waiting with BRPOPLPUSH")
                self._command = "BRPOPLPUSH"
                waiter.item, waiter.left = await popper.call(
                    self._wait_command(waiter, block), length)
        except RETRYABLE as exc:
            waiter.lost = True
            logger.debug("A blocking wait on %r failed (%s): its list is given back first",
                         waiter.key, exc)
        except Exception:  # a bug, or an error reply: the list may hold something
            waiter.lost = True
            logger.exception("A blocking wait on %r failed", waiter.key)
        finally:
            # Whatever the end (a message, a failure, a wait armed by an earlier fetch that
            # timed out), the fetch waiting now looks again: it arms the key anew.
            waiter.task = None
            woken = self._woken
            if woken is not None and not woken.done():
                woken.set_result(None)

    def _ahead(self, popper: Popper, packed: bytes) -> None:
        """Queue a command whose reply nobody reads, after CLIENT REPLY SKIP if it works."""
        if self._skip:
            popper.ahead(_SKIP + packed, 0)
        else:
            popper.ahead(packed)

    @staticmethod
    async def _reply_skip(popper: Popper) -> bool:
        """Does the server take CLIENT REPLY (Redis 3.2 on; some managed ones refuse it)?"""
        try:
            await popper.call(("CLIENT", "REPLY", "ON"))
        except ResponseError as exc:
            logger.info("Redis refuses CLIENT REPLY (%s): each LREM after a message acked on "
                        "the spot has a reply to read", exc)
            return False
        return True

    def _wait_command(self, waiter: _Waiter, block: float) -> tuple[Any, ...]:
        if self._command == "BLMOVE":
            return ("BLMOVE", waiter.key, waiter.list_key, "RIGHT", "LEFT", block)
        return ("BRPOPLPUSH", waiter.key, waiter.list_key, block)

    # -- settling what was handed over early ---------------------------------------------

    def forget(self, number: int, layout: Layout, item: bytes) -> None:
        """A message a wait moved was settled on the spot (acked early): take it out of its
        list, with that key's next wait or within FORGET_WITHIN (reply read before the next
        wait's)."""
        waiter = self._pairs(layout)[number - 1][1]
        self._ahead(waiter.popper, pack("LREM", waiter.list_key, 1, item))
        if waiter.timer is None:
            loop = asyncio.get_running_loop()
            waiter.timer = loop.call_later(FORGET_WITHIN, self._forget_now, waiter)

    def _forget_now(self, waiter: _Waiter) -> None:
        """No wait took the LREM along: write it alone (a task of its own)."""
        waiter.timer = None
        if waiter.popper.pending and waiter.task is None:
            task = asyncio.get_running_loop().create_task(self._flush(waiter))
            self._flushing.add(task)  # a strong reference until it is done
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, waiter: _Waiter) -> None:
        try:
            await waiter.popper.flush()
        except RETRYABLE as exc:  # the list gets given back before the next wait: it may
            waiter.lost = True  # then run again, as after any connection cut (at least once)
            logger.warning("Could not take a message acked on the spot out of %r (%s): it "
                           "may run again", waiter.list_key, exc)

    async def _give_back(self, waiter: _Waiter) -> None:
        """Put back in its queue what the list of a wait whose reply was lost holds."""
        given = await self._reclaim(waiter.list_key, waiter.key)
        waiter.lost = False
        if given:
            logger.warning("Gave back %d message(s) that a blocking wait on %r took while its "
                           "connection broke", given, waiter.key)

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every wait (their connections close: the server unblocks them), then give
        back what the lists hold. A wait the server serves between the two leaves its
        message listed: restore_visible returns it after the visibility timeout."""
        waiters = list(self._by_key.values())
        for waiter in waiters:
            if waiter.task is None and waiter.popper.pending:
                try:  # the LREMs of messages acked on the spot run before the give-back
                    await waiter.popper.settle()
                except RETRYABLE as exc:
                    logger.warning("Could not take messages acked on the spot out of %r "
                                   "(%s): they may run again", waiter.list_key, exc)
            await waiter.popper.close()
        tasks = [w.task for w in waiters if w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for waiter in waiters:
            try:
                await self._give_back(waiter)
            except Exception as exc:  # the broker is gone: restore_visible does it later
                logger.warning("Could not give back the reserved list %r (%s): restored after "
                               "the visibility timeout", waiter.list_key, exc)



async def restore_dead(client: Any, run: Callable[[Any, Any, tuple, tuple], Awaitable[Any]],
                       prefix: str, ceiling: float, mark: Callable[[bytes], bytes | str]) -> int:
    """Give back the reserved lists whose heartbeat is older than ``ceiling`` (their consumer
    is gone) to their queues, first in line, each message ``mark``-ed redelivered; how many
    messages. Called by ``restore_visible`` under kombu's ``unacked_mutex``, on ``client``;
    ``run(client, script, keys, args)`` runs a script."""
    from . import redis_scripts

    registry = prefix + REGISTRY
    dead = await client.execute_command("ZRANGE", registry, "-inf", repr(ceiling), "BYSCORE")
    restored = 0
    for member in dead:
        list_key = member.decode(errors="replace") if isinstance(member, bytes) else member
        source = source_of(list_key, prefix)
        if source is None:  # not one of ours: unregister it, never touch the key
            await client.execute_command("ZREM", registry, member)
            continue
        items = await client.execute_command("LRANGE", list_key, 0, -1)
        args = (repr(ceiling), len(items), *(mark(item) for item in items))
        moved = await run(client, redis_scripts.RESTORE_LIST, (registry, list_key, source), args)
        if moved > 0:
            logger.warning("Restored %d message(s) a worker that is gone had taken with a "
                           "blocking wait (%s)", moved, list_key)
            restored += moved
    return restored
