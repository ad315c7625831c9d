"""Remote control, client side: ``app.control`` and ``app.control.inspect()``.

Commands are broadcast to every worker (or to ``destination``, a list of node names) over
the broker's fanout exchange ``celery.pidbox``; with ``reply=True`` the workers' answers are
collected from this client's reply queue for ``timeout`` seconds (or until ``limit`` replies
came). The messages are kombu's (``messaging/pidbox.py``), so upstream Celery workers answer
us and ``celery inspect`` of upstream Celery reaches our workers.

Every method has an ``a``-prefixed coroutine twin (``await app.control.aping()``); the sync
ones run it on the app's portal loop, so they work from any thread, inside a running event
loop too. Thread-safety: a ``Control`` keeps no mutable state besides its ``clock``
(guarded by ``_lock``); each call uses its own reply ticket.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import CeleryError, DecodeError
from ..messaging import pidbox

if TYPE_CHECKING:
    from .base import Celery

__all__ = ["Control", "Inspect"]

logger = logging.getLogger("celery.app.control")

Reply = dict[str, Any]


def flatten_replies(replies: Iterable[Reply]) -> dict[str, Any]:
    """``[{node: value}, ...]`` as one ``{node: value}`` dict (Celery's ``flatten_reply``)."""
    nodes: dict[str, Any] = {}
    for reply in replies:
        nodes.update(reply)
    return nodes


class Control:
    """``app.control``: broadcast commands to workers, revoke tasks, change rate limits."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        #: This client's id (kombu's ``Mailbox.oid``); each call's reply routing key
        #: is ``<oid>.<ticket>``.
        self.oid = str(uuid.uuid4())
        self._lock = threading.Lock()  # guards _clock
        self._clock = itertools.count(1)

    def _tick(self) -> int:
        with self._lock:
            return next(self._clock)

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        wait = None if timeout is None else timeout + float(self.app.conf.broker_connection_timeout or 4) + 5
        return self.app.portal.call(coro, timeout=wait)

    def _mailbox(self) -> Any:
        transport = self.app.transport
        if not callable(getattr(transport, "fanout_publish", None)):
            raise CeleryError(f"remote control is not supported by the broker {self.app.broker_url.split(':', 1)[0]}://")
        return transport

    # -- broadcasting ----------------------------------------------------------------------

    async def abroadcast(self, command: str, arguments: dict[str, Any] | None = None,
                         destination: Sequence[str] | None = None, reply: bool = False,
                         timeout: float = 1.0, limit: int | None = None,
                         callback: Callable[[Reply], Any] | None = None,
                         pattern: str | None = None, matcher: str | None = None,
                         connection: Any = None, channel: Any = None,
                         **extra: Any) -> list[Reply] | None:
        """Send ``command`` to the workers; with ``reply`` their replies, as Celery returns
        them: a list of ``{node name: reply}``. Other keyword arguments join ``arguments``,
        as in Celery; ``connection`` and ``channel`` (kombu's) are accepted for Celery's
        signature: the app's own broker connection is used."""
        if destination is not None and not isinstance(destination, list | tuple):
            raise ValueError(f"destination must be a list/tuple not {type(destination)}")
        transport = self._mailbox()
        exchange, reply_exchange = pidbox.exchanges(self.app.conf.control_exchange)
        body: dict[str, Any] = {"method": command, "arguments": dict(arguments or {}, **extra),
                                "destination": list(destination) if destination else None,
                                "pattern": pattern, "matcher": matcher}
        headers = {"clock": self._tick(), "expires": time.time() + timeout if timeout else 0}
        if not reply:
            await transport.fanout_publish(exchange, pidbox.encode(body, exchange, "", headers))
            return None
        # A reply queue of its own per call (kombu shares one per client): concurrent calls
        # from several threads or tasks never take each other's replies.
        ticket = str(uuid.uuid4())
        oid = f"{self.oid}.{ticket}"
        queue = f"{oid}.{reply_exchange}"
        body["ticket"] = ticket
        body["reply_to"] = {"exchange": reply_exchange, "routing_key": oid}
        if limit is None and destination:
            limit = len(destination)
        await transport.direct_bind(reply_exchange, oid, queue)
        try:
            await transport.fanout_publish(exchange, pidbox.encode(body, exchange, "", headers))
            return await self._collect(transport, queue, ticket, timeout, limit, callback)
        finally:
            await transport.direct_unbind(reply_exchange, oid, queue)

    async def _collect(self, transport: Any, queue: str, ticket: str, timeout: float,
                       limit: int | None, callback: Callable[[Reply], Any] | None) -> list[Reply]:
        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for payload in await transport.pop_raw(queue, left):
                try:
                    body, headers = pidbox.decode(payload)
                except (DecodeError, CeleryError) as exc:
                    logger.warning("Ignoring a malformed remote control reply: %s", exc)
                    continue
                if headers.get("ticket", ticket) != ticket or pidbox.expired(headers):
                    continue  # a late reply to an earlier call of this client
                if callback is not None:
                    callback(body)
                replies.append(body)
        return replies[:limit] if limit is not None else replies

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: Sequence[str] | None = None, reply: bool = False,
                  timeout: float = 1.0, **kwargs: Any) -> list[Reply] | None:
        kwargs.pop("connection", None)
        return self._run(self.abroadcast(command, arguments, destination, reply, timeout,
                                         **kwargs), timeout)

    # -- commands --------------------------------------------------------------------------

    def _revoke_args(self, task_id: str | Sequence[str], terminate: bool, signal: str | None,
                     kwargs: dict[str, Any]) -> dict[str, Any]:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        extra = {k: v for k, v in kwargs.items() if k not in ("connection", "reply", "timeout",
                                                              "limit", "callback")}
        return {"task_id": ids if len(ids) != 1 else ids[0], "terminate": terminate,
                "signal": signal or "SIGTERM", **extra}

    async def arevoke(self, task_id: str | Sequence[str], destination: Sequence[str] | None = None,
                      terminate: bool = False, signal: str | None = "SIGTERM",
                      **kwargs: Any) -> list[Reply] | None:
        """Revoke task id(s) on every worker: they never start; ``terminate`` also stops
        the ones running (an async task is cancelled; a sync one stops at its next
        ``self.checkpoint()``)."""
        reply, timeout = kwargs.get("reply", False), kwargs.get("timeout", 1.0)
        return await self.abroadcast("revoke", self._revoke_args(task_id, terminate, signal, kwargs),
                                     destination, reply=reply, timeout=timeout,
                                     limit=kwargs.get("limit"), callback=kwargs.get("callback"))

    def revoke(self, task_id: str | Sequence[str], destination: Sequence[str] | None = None,
               terminate: bool = False, signal: str | None = "SIGTERM", **kwargs: Any) -> list[Reply] | None:
        return self._run(self.arevoke(task_id, destination, terminate, signal, **kwargs),
                         kwargs.get("timeout", 1.0))

    def terminate(self, task_id: str | Sequence[str], destination: Sequence[str] | None = None,
                  signal: str = "SIGTERM", **kwargs: Any) -> list[Reply] | None:
        return self.revoke(task_id, destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(self, task_name: str, rate_limit: str | int | float | None,
                   destination: Sequence[str] | None = None, **kwargs: Any) -> list[Reply] | None:
        """Change a task type's rate limit on the workers (``"10/s"``; None or 0: none)."""
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit},
                              destination, **kwargs)

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: Sequence[str] | None = None, **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("time_limit", {"task_name": task_name, "soft": soft, "hard": hard},
                              destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: Sequence[str] | None = None,
                  **kwargs: Any) -> list[Reply] | None:
        """Grow each worker's pool by ``n`` sync threads (``pool="loop"``: ``n`` more async
        tasks at once per loop worker)."""
        return self.broadcast("pool_grow", {"n": n, **_pool_kind(kwargs)}, destination,
                              **kwargs)

    def pool_shrink(self, n: int = 1, destination: Sequence[str] | None = None,
                    **kwargs: Any) -> list[Reply] | None:
        """Shrink each worker's pool by ``n`` (running tasks finish first)."""
        return self.broadcast("pool_shrink", {"n": n, **_pool_kind(kwargs)}, destination,
                              **kwargs)

    def autoscale(self, max: int, min: int, destination: Sequence[str] | None = None,
                  **kwargs: Any) -> list[Reply] | None:
        """Change the range of workers started with ``--autoscale``."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)

    async def aping(self, destination: Sequence[str] | None = None, timeout: float = 1.0,
                    **kwargs: Any) -> list[Reply]:
        return await self.abroadcast("ping", {}, destination, reply=True, timeout=timeout,
                                     **kwargs) or []

    def ping(self, destination: Sequence[str] | None = None, timeout: float = 1.0,
             **kwargs: Any) -> list[Reply]:
        return self.broadcast("ping", {}, destination, reply=True, timeout=timeout, **kwargs) or []

    def shutdown(self, destination: Sequence[str] | None = None, **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("shutdown", {}, destination, **kwargs)

    def add_consumer(self, queue: str, destination: Sequence[str] | None = None,
                     **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("add_consumer", {"queue": queue}, destination, **kwargs)

    def cancel_consumer(self, queue: str, destination: Sequence[str] | None = None,
                        **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    # Events: ask the workers to start or stop sending task events, or to beat now.
    def enable_events(self, destination: Sequence[str] | None = None,
                      **kwargs: Any) -> list[Reply] | None:
        """Ask the workers to start sending task events (``-E`` at run time)."""
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(self, destination: Sequence[str] | None = None,
                       **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("disable_events", {}, destination, **kwargs)

    def heartbeat(self, destination: Sequence[str] | None = None,
                  **kwargs: Any) -> list[Reply] | None:
        """Ask the workers to send a heartbeat event now."""
        return self.broadcast("heartbeat", {}, destination, **kwargs)

    # Our workers refuse pool_restart with the reason (they do not reload task modules);
    # upstream's obey it.
    def pool_restart(self, modules: Sequence[str] | None = None, reload: bool = False,
                     reloader: Any = None, destination: Sequence[str] | None = None,
                     **kwargs: Any) -> list[Reply] | None:
        return self.broadcast("pool_restart", {"modules": list(modules or []), "reload": reload,
                                               "reloader": reloader}, destination, **kwargs)

    def inspect(self, destination: Sequence[str] | None = None, timeout: float = 1.0,
                callback: Callable[[Reply], Any] | None = None, limit: int | None = None,
                pattern: str | None = None, matcher: str | None = None,
                connection: Any = None, app: Any = None) -> Inspect:
        """Celery's signature; a kombu ``connection`` is accepted and not used (this app's
        own broker connection is); ``app`` other than this one is refused."""
        if app is not None and app is not self.app:
            raise ValueError("inspect(app=...) must be this control's app; use that app's "
                             "app.control.inspect() instead")
        return Inspect(self, destination, timeout, callback, limit, pattern, matcher)


class Inspect:
    """``app.control.inspect()``: ask workers about themselves. Each method returns
    ``{node name: reply}``, or None when no worker replied (as Celery's do)."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float,
                 callback: Callable[[Reply], Any] | None, limit: int | None,
                 pattern: str | None, matcher: str | None) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    async def _arequest(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = await self.control.abroadcast(
            command, arguments, self.destination, reply=True, timeout=self.timeout,
            limit=self.limit, callback=self.callback, pattern=self.pattern, matcher=self.matcher)
        return flatten_replies(replies or []) or None

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        return self.control._run(self._arequest(command, **arguments), self.timeout)

    def ping(self) -> dict[str, Any] | None:
        return self._request("ping")

    async def aping(self) -> dict[str, Any] | None:
        return await self._arequest("ping")

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe) if safe is not None else self._request("active")

    def reserved(self) -> dict[str, Any] | None:
        return self._request("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._request("scheduled")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request("registered", taskinfoitems=list(taskinfoitems) or None)

    registered_tasks = registered

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        flat = [i for item in ids for i in ([item] if isinstance(item, str) else item)]
        return self._request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> dict[str, Any] | None:
        return self._request("report")

    def clock(self) -> dict[str, Any] | None:
        return self._request("clock")


def _pool_kind(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``pool`` argument of pool_grow/pool_shrink, taken out of ``kwargs`` when given."""
    kind = kwargs.pop("pool", None)
    return {} if kind is None else {"pool": kind}
