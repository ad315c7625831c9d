"""Remote control, worker side: answer ``celery inspect``/``celery control`` and
``app.control`` commands (kombu's pidbox; the messages are in ``messaging/pidbox.py``).

The server subscribes to the broker's fanout exchange ``celery.pidbox`` and runs on the
consumer's event loop, so every handler reads and changes consumer state on the thread that
owns it (no locks). Handlers are Celery's, with its names, arguments and reply shapes
(``{"ok": ...}`` / ``{"error": ...}`` and the lists and dicts ``inspect`` shows). A command
that fails, or a malformed message, is logged and answered with ``{"error": ...}``; the worker
goes on. Commands the broker cannot carry (a transport without ``CAP_BROADCAST``) are not
served; the worker says so once at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal as signal_module
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import (
    CeleryError,
    ConnectionLost,
    ImproperlyConfigured,
    InvalidMessage,
    TaskRevokedError,
)
from ..messaging import pidbox
from .ratelimit import parse_rate

if TYPE_CHECKING:
    from .consumer import Consumer
    from .worker import Worker

__all__ = ["ControlServer"]

logger = logging.getLogger("celery.worker.control")

#: How long one wait for commands lasts (also how quickly a stop is seen).
POLL_TIMEOUT = 1.0
#: A handler returning this sends no reply (``shutdown``: the worker is going away).
NO_REPLY = object()


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


def signum_of(name: Any) -> int | None:
    """The number of a signal given by name (``"SIGTERM"``, ``"TERM"``) or number."""
    if name is None:
        return None
    if isinstance(name, int):
        return name
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    value = getattr(signal_module, text, None)
    return int(value) if value is not None else None


class ControlServer:
    """Serves remote control commands for one worker until ``stop``. Consumer loop only."""

    def __init__(self, worker: Worker, consumer: Consumer) -> None:
        self.worker = worker
        self.consumer = consumer
        self.app = consumer.app
        self.hostname = consumer.hostname
        self.transport: Any = consumer.transport
        self.exchange, self.reply_exchange = pidbox.exchanges(self.app.conf.control_exchange)
        self.clock = 0
        self._stopped = asyncio.Event()
        self._subscription: Any = None  # made by subscribe(), taken over by run()
        self.handlers: dict[str, Callable[..., Any]] = {
            name[len("do_"):]: getattr(self, name) for name in dir(self) if name.startswith("do_")
        }

    @property
    def supported(self) -> bool:
        return callable(getattr(self.transport, "fanout_subscribe", None))

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        """Close a subscription ``run`` never took over (it was cancelled first)."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.close()

    async def subscribe(self) -> None:
        """Subscribe now, before the worker says it is ready, so a command sent as soon as
        it is ready is received; on failure ``run`` keeps trying."""
        if not self.supported:
            return
        try:
            self._subscription = await self.transport.fanout_subscribe(self.exchange)
        except ConnectionLost as exc:
            logger.warning("Remote control: cannot subscribe yet (%s)", exc)

    async def run(self) -> None:
        """Receive and answer commands until ``stop``; subscribe again with backoff when the
        broker drops, or when anything else goes wrong (logged): one bad command, or a bug,
        never ends remote control."""
        if not self.supported:
            logger.warning("Remote control (inspect, control, revoke) is not available on "
                           "this broker (%s)", type(self.transport).__name__)
            return
        backoff = 0.1
        while not self._stopped.is_set():
            try:
                await self._serve()
                backoff = 0.1
            except ConnectionLost as exc:
                logger.warning("Remote control: broker unreachable (%s); subscribing again in "
                               "%.1fs", exc, backoff)
            except Exception:
                logger.exception("Remote control: unexpected error; subscribing again in %.1fs",
                                 backoff)
            else:
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _serve(self) -> None:
        """Subscribe (or take the subscription ``subscribe`` made) and serve until ``stop``."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            subscription = await self.transport.fanout_subscribe(self.exchange)
        try:
            while not self._stopped.is_set():
                for payload in await subscription.get(POLL_TIMEOUT):
                    await self.handle(payload)
        finally:
            await subscription.close()

    async def handle(self, payload: str) -> Any:
        """Decode, match and dispatch one broadcast; reply when asked to. Never raises: a
        command that cannot be read or run is logged and dropped (or answered with an
        error), and the next one is served."""
        try:
            return await self._handle(payload)
        except Exception:
            logger.exception("Remote control: dropping a command that could not be handled: "
                             "%.120r", payload)
            return None

    async def _handle(self, payload: str) -> Any:
        try:
            body, headers = pidbox.decode(payload)
        except CeleryError as exc:
            logger.error("Remote control: discarding a malformed command message: %s", exc)
            return None
        try:
            self.clock = max(self.clock, int(headers.get("clock") or 0)) + 1
        except (TypeError, ValueError, OverflowError):
            self.clock += 1
        try:
            for_us = pidbox.match_destination(body, self.hostname)
        except InvalidMessage as exc:
            logger.error("Remote control: discarding command %.80r: %s", body.get("method"), exc)
            return None
        if pidbox.expired(headers) or not for_us:
            return None
        method, arguments = body.get("method"), body.get("arguments") or {}
        reply = await self.dispatch(method, arguments)
        reply_to, ticket = body.get("reply_to"), body.get("ticket")
        if reply is not NO_REPLY and isinstance(reply_to, dict):
            await self._reply(reply, reply_to, ticket)
        return reply

    async def dispatch(self, method: Any, arguments: Any) -> Any:
        handler = self.handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            logger.error("Remote control: unknown command %r", method)
            return nok(f"unknown command {method!r}")
        if not isinstance(arguments, dict):
            logger.error("Remote control: command %s refused: its arguments are a %s, not a "
                         "mapping", method, type(arguments).__name__)
            return nok(f"arguments of {method} must be a mapping")
        try:
            result = handler(**arguments)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except Exception as exc:
            logger.exception("Remote control: command %s failed", method)
            return nok(repr(exc))

    async def _reply(self, reply: Any, reply_to: dict[str, Any], ticket: Any) -> None:
        exchange = str(reply_to.get("exchange") or self.reply_exchange)
        routing_key = str(reply_to.get("routing_key") or "")
        self.clock += 1
        headers = {"ticket": ticket, "clock": self.clock}
        try:
            payload = pidbox.encode({self.hostname: reply}, exchange, routing_key, headers)
            await self.transport.direct_publish(exchange, routing_key, payload)
        except (ConnectionLost, TypeError, ValueError) as exc:
            logger.warning("Remote control: could not send the reply to %s: %s", routing_key, exc)

    # -- commands (Celery's names and arguments) ------------------------------------------

    def do_ping(self, **_: Any) -> dict[str, Any]:
        return ok("pong")

    async def do_revoke(self, task_id: Any, terminate: bool = False, signal: Any = None,
                        **_: Any) -> dict[str, Any]:
        if isinstance(task_id, str):
            ids = [task_id]
        elif isinstance(task_id, list | tuple) and all(isinstance(i, str) for i in task_id):
            ids = list(task_id)
        else:
            logger.error("Remote control: revoke refused: task_id must be an id or a list of "
                         "ids, not %.80r", task_id)
            return nok("task_id must be a task id or a list of task ids")
        signum = signum_of(signal or "SIGTERM")
        running = {r.id for r in self.consumer.requests()["active"]}
        terminated = self.consumer.revoke(ids, terminate, signum)
        await self._mark_revoked([i for i in ids if i not in running])
        if terminate:
            return ok(f"terminate: {', '.join(terminated)}" if terminated else "terminate: tasks unknown")
        logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
        return ok(f"tasks {set(ids)} flagged as revoked")

    async def _mark_revoked(self, task_ids: list[str]) -> None:
        """Store REVOKED for ids still waiting somewhere (as Celery 5.7 does), so their
        state shows the revoke at once; never over a result or a state a worker set."""
        backend = self.app.backend
        if not task_ids or not callable(getattr(backend, "aget_task_meta", None)):
            return
        waiting = (states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED)
        for task_id in task_ids:
            try:
                meta = await backend.aget_task_meta(task_id)
                if meta.get("status") in waiting:
                    await backend.astore_result(task_id, TaskRevokedError("revoked"),
                                                states.REVOKED)
            except Exception as exc:  # no backend, or it is down: the revoke still holds
                logger.debug("Could not mark %s revoked in the backend: %s", task_id, exc)

    async def do_terminate(self, signal: Any, task_id: Any, **_: Any) -> dict[str, Any]:
        return await self.do_revoke(task_id, terminate=True, signal=signal)

    def do_rate_limit(self, task_name: str, rate_limit: Any, **_: Any) -> dict[str, Any]:
        try:
            parse_rate(rate_limit)
        except ImproperlyConfigured as exc:
            return nok(f"Invalid rate limit string: {exc}")
        task = self.app.tasks.get(task_name)
        if task is None:
            logger.error("Rate limit attempt for unknown task %s", task_name)
            return nok("unknown task")
        task.rate_limit = rate_limit
        self.consumer.reset_rate_limit(task_name)
        if not rate_limit:
            logger.info("Rate limits disabled for tasks of type %s", task_name)
            return ok("rate limit disabled successfully")
        logger.info("New rate limit for tasks of type %s: %s.", task_name, rate_limit)
        return ok("new rate limit set successfully")

    def do_time_limit(self, task_name: str | None = None, hard: Any = None, soft: Any = None,
                      **_: Any) -> dict[str, Any]:
        task = self.app.tasks.get(task_name or "")
        if task is None:
            logger.error("Change time limit attempt for unknown task %s", task_name)
            return nok("unknown task")
        task.soft_time_limit, task.time_limit = soft, hard
        logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
        return ok("time limits set successfully")

    # Pool commands: worker/pool.py resizes; a bad argument is a one-line error reply.
    def do_pool_grow(self, n: Any = 1, pool: Any = None, **_: Any) -> dict[str, Any]:
        return self._resize("pool_grow", n, pool)

    def do_pool_shrink(self, n: Any = 1, pool: Any = None, **_: Any) -> dict[str, Any]:
        return self._resize("pool_shrink", n, pool)

    def _resize(self, command: str, n: Any, pool: Any) -> dict[str, Any]:
        sizes = self.worker.pool
        if sizes is None:
            return nok("the pool is not running")
        try:
            grown = command == "pool_grow"
            kind = sizes.grow(n, pool) if grown else sizes.shrink(n, pool)
        except ValueError as exc:
            logger.error("Remote control: %s refused: %s", command, exc)
            return nok(str(exc))
        what = "loop concurrency" if kind == "loop" else "pool"
        return ok(f"{what} will {'grow' if grown else 'shrink'}")

    def do_autoscale(self, max: Any = None, min: Any = None, **_: Any) -> dict[str, Any]:
        sizes = self.worker.pool
        try:
            if sizes is None:
                raise ValueError("the pool is not running")
            high, low = sizes.update_autoscale(max, min)
        except ValueError as exc:
            logger.error("Remote control: autoscale refused: %s", exc)
            return nok(str(exc))
        return ok(f"autoscale now max={high} min={low}")

    def do_shutdown(self, msg: str = "Got shutdown from remote", **_: Any) -> Any:
        logger.warning(msg)
        self.worker.stop()
        return NO_REPLY

    # Event commands (worker/events.py), with Celery's replies. A receiver's wakeup
    # (``heartbeat``) asks for a heartbeat now; Flower polls ``enable_events``.
    def do_heartbeat(self, **_: Any) -> None:
        events = self.consumer.events
        if events.dispatcher.enabled:
            logger.debug("Heartbeat requested by remote.")
            events.worker("worker-heartbeat")

    def do_enable_events(self, **_: Any) -> dict[str, Any]:
        return self._switch_task_events(self.consumer.events.enable_tasks, "enabled")

    def do_disable_events(self, **_: Any) -> dict[str, Any]:
        return self._switch_task_events(self.consumer.events.disable_tasks, "disabled")

    def _switch_task_events(self, switch: Callable[[], bool], done: str) -> dict[str, Any]:
        if not self.consumer.events.available:
            return nok("event dispatcher unavailable")
        if switch():
            logger.info("Events of group {task} %s by remote.", done)
            return ok(f"task events {done}")
        return ok(f"task events already {done}")

    def do_clock(self, **_: Any) -> dict[str, Any]:
        return {"clock": self.clock}

    def do_stats(self, **_: Any) -> dict[str, Any]:
        consumer, worker = self.consumer, self.worker
        usage = resource.getrusage(resource.RUSAGE_SELF)
        url = self.app.broker_url
        sizes = worker.pool
        loop_concurrency = sizes.loop_concurrency if sizes else worker.loop_concurrency
        sync_workers = sizes.threads if sizes else worker.sync_workers
        autoscaler = sizes.info() if sizes else None
        stats = {
            "total": dict(consumer.total),
            "pid": os.getpid(),
            "clock": str(self.clock),
            "uptime": int(time.time() - consumer.started_at),
            "pool": {
                "implementation": "celery-asyncio:loop+threads",
                "max-concurrency": worker.loop_workers * loop_concurrency + sync_workers,
                "loop-workers": worker.loop_workers,
                "loop-concurrency": loop_concurrency,
                "sync-workers": sync_workers,
                "processes": [os.getpid()],
            },
            "broker": {"transport": url.split(":", 1)[0], "url": _masked(url)},
            "prefetch_count": consumer.window,
            "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime,
                       "maxrss": usage.ru_maxrss, "nvcsw": usage.ru_nvcsw,
                       "nivcsw": usage.ru_nivcsw},
        }
        if autoscaler is not None:  # as upstream: only with --autoscale
            stats["autoscaler"] = autoscaler
        return stats

    def do_active(self, safe: bool = False, **_: Any) -> list[dict[str, Any]]:
        return [req.info(bool(safe), self.hostname) for req in self.consumer.requests()["active"]]

    def do_reserved(self, **_: Any) -> list[dict[str, Any]]:
        return [req.info(False, self.hostname) for req in self.consumer.requests()["reserved"]]

    def do_scheduled(self, **_: Any) -> list[dict[str, Any]]:
        return [{"eta": req.headers.get("eta"), "priority": req.delivery.delivery_info.get("priority"),
                 "request": req.info(False, self.hostname)} for req in self.consumer.requests()["scheduled"]]

    def do_revoked(self, **_: Any) -> list[str]:
        return self.consumer.revoked.ids()

    def do_query_task(self, ids: Any = None, **_: Any) -> dict[str, Any]:
        wanted = {ids} if isinstance(ids, str) else set(ids or [])
        found: dict[str, Any] = {}
        for where, requests in self.consumer.requests().items():
            for req in requests:
                if req.id in wanted:
                    found[req.id] = [where, req.info(False, self.hostname)]
        return found

    def do_registered(self, taskinfoitems: Any = None, builtins: bool = False, **_: Any) -> list[str]:
        items = [i for i in (taskinfoitems or ("rate_limit",)) if isinstance(i, str)
                 and not i.startswith("_")]
        lines = []
        for name in sorted(self.app.tasks):
            if name.startswith("celery.") and not builtins:
                continue
            task = self.app.tasks[name]
            fields = [f"{i}={getattr(task, i)}" for i in items if getattr(task, i, None) is not None]
            lines.append(f"{name} [{' '.join(fields)}]" if fields else name)
        return lines

    def do_active_queues(self, **_: Any) -> list[dict[str, Any]]:
        return [queue_as_dict(q) for q in self.consumer.queues]

    async def do_add_consumer(self, queue: str, **_: Any) -> dict[str, Any]:
        if await self.consumer.add_queue(queue):
            logger.info("Started consuming from %s", queue)
            return ok(f"add consumer {queue}")
        return ok(f"already consuming from {queue!r}")

    def do_cancel_consumer(self, queue: str, **_: Any) -> dict[str, Any]:
        self.consumer.cancel_queue(queue)
        return ok(f"no longer consuming from {queue}")

    # Flower's "restart pool" button: refused with the reason, never acknowledged without
    # effect (pool_grow/pool_shrink/autoscale are served above: worker/pool.py).
    def do_pool_restart(self, **_: Any) -> dict[str, Any]:
        return nok("pool_restart is not supported: restart the worker (celery-asyncio "
                   "workers do not reload task modules)")

    def do_conf(self, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
        from ..app.config import DEFAULTS

        out: dict[str, Any] = {}
        for key, value in self.app.conf.items():
            if not with_defaults and DEFAULTS.get(key, object()) == value:
                continue
            out[key] = _masked(value) if "url" in key or "backend" in key else _jsonable(value)
        return out

    def do_report(self, **_: Any) -> dict[str, Any]:
        from .. import __asyncio_version__

        return ok(f"software -> celery-asyncio:{__asyncio_version__}\nbroker -> {_masked(self.app.broker_url)}")


def queue_as_dict(name: str) -> dict[str, Any]:
    """A queue we consume, with every key of kombu's ``Queue.as_dict(recurse=True)`` (what
    upstream's ``active_queues`` replies; Flower's worker page reads them all)."""
    exchange = {"name": name, "type": "direct", "arguments": None, "durable": True,
                "passive": False, "auto_delete": False, "delivery_mode": None,
                "no_declare": False}
    return {"name": name, "exchange": exchange, "routing_key": name, "queue_arguments": None,
            "binding_arguments": None, "consumer_arguments": None, "durable": True,
            "exclusive": False, "auto_delete": False, "no_ack": False, "alias": None,
            "bindings": [], "no_declare": None, "expires": None, "message_ttl": None,
            "max_length": None, "max_length_bytes": None, "max_priority": None}


def _masked(value: Any) -> Any:
    if not isinstance(value, str):
        return _jsonable(value)
    from ..utils.text import mask_url

    return mask_url(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
