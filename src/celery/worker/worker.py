"""Worker: wires transport, consumer, executors and tracer, and handles signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import signals
from ..exceptions import ConnectionLost, ImproperlyConfigured
from ..messaging.serialization import accept_set
from ..utils import gil
from ..utils.text import mask_url
from .consumer import Consumer
from .control import ControlServer
from .events import WorkerEvents
from .executor.loop import LoopExecutor, new_event_loop
from .executor.threads import ThreadExecutor
from .metrics import WorkerMetrics, check_port, require_prometheus_client
from .pool import MAX_THREADS, UNLIMITED_WINDOW, Kind, Pool, prefetch_window
from .tracer import Tracer

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["UNLIMITED_WINDOW", "Worker", "expand_hostname"]

logger = logging.getLogger("celery.worker")

#: Seconds the demand must stay below the pool's size before ``--autoscale`` shrinks it
#: (upstream Celery's ``AUTOSCALE_KEEPALIVE`` environment variable, same default).
AUTOSCALE_KEEPALIVE_DEFAULT = 30.0


def expand_hostname(name: str | None, host: str | None = None) -> str:
    """Expand ``%h`` (host), ``%n`` (host's name part), ``%d`` (domain) and ``%%``; a name
    without ``@`` gets ``celery@`` in front, as in Celery."""
    host = host or socket.gethostname()
    name = name or "celery@%h"
    if "@" not in name:
        name = f"celery@{name}"
    short, _, domain = host.partition(".")
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "%" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"h": host, "n": short, "d": domain, "%": "%"}.get(nxt, c + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class Worker:
    """A worker process: consume ``queues`` and run tasks on loop and sync workers.

    ``run()`` must be called from the main thread (it installs signal handlers); ``stop()``
    may be called from any thread.
    """

    def __init__(self, app: Celery, *, hostname: str | None = None, queues: Sequence[str] | None = None,
                 loop_workers: int | None = None, loop_concurrency: int | None = None,
                 loop_inline: bool | None = None,
                 sync_workers: int | None = None, prefetch_multiplier: int | None = None,
                 ready_callback: Callable[[], Any] | None = None,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 state_db: str | None = None, task_events: bool | None = None,
                 heartbeat: bool = True, heartbeat_interval: float | None = None,
                 autoscale: tuple[int, int] | None = None,
                 metrics_port: int | None = None, metrics_host: str | None = None) -> None:
        conf = app.conf
        self.app = app
        self.hostname = hostname or expand_hostname(None)
        self.queues = list(queues or default_queues(conf))
        self.loop_workers = _count(loop_workers, conf.worker_loop_workers, 1, "loop_workers")
        self.loop_concurrency = _count(loop_concurrency, conf.worker_loop_concurrency, 100,
                                       "loop_concurrency", minimum=1)
        #: Async tasks on the consumer's own loop (executor/loop.py): one loop worker only.
        self.loop_inline = bool(conf.worker_loop_inline if loop_inline is None else loop_inline)
        if self.loop_inline and self.loop_workers != 1:
            raise ImproperlyConfigured(
                f"loop_inline runs async tasks on the consumer's own event loop: it needs "
                f"exactly one loop worker, not {self.loop_workers}")
        default_sync = conf.worker_sync_workers or conf.worker_concurrency or os.cpu_count() or 1
        #: ``(max, min)`` sync threads (``--autoscale``): the worker starts with min.
        self.autoscale = _autoscale(autoscale)
        if self.autoscale is not None:
            sync_workers = self.autoscale[1]
        self.sync_workers = _count(sync_workers, default_sync, 1, "sync_workers")
        threads = self.autoscale[0] if self.autoscale else self.sync_workers  # at most
        if self.loop_workers + threads == 0:
            raise ImproperlyConfigured("A worker needs at least one loop worker or one sync worker")
        self.multiplier = _count(prefetch_multiplier, conf.worker_prefetch_multiplier, 4,
                                 "prefetch_multiplier")
        self.window = prefetch_window(self.multiplier,
                                      self.loop_workers * self.loop_concurrency + threads)
        self.autoscale_keepalive = _keepalive()
        #: The executors' sizes while running (``pool_grow``, ``autoscale``; worker/pool.py).
        self.pool: Pool | None = None
        self.ready_callback = ready_callback
        self.max_tasks_per_child = _count(max_tasks_per_child, conf.worker_max_tasks_per_child, 0,
                                          "max_tasks_per_child") or None
        self.max_memory_per_child = _count(max_memory_per_child, conf.worker_max_memory_per_child,
                                           0, "max_memory_per_child") or None
        #: File keeping revoked task ids across restarts (``--statedb``), or None.
        self.state_db = state_db or conf.worker_state_db or None
        #: Task events (``-E``, ``worker_send_task_events``), and worker heartbeats unless
        #: ``--without-heartbeat`` (worker/events.py).
        self.task_events = bool(conf.worker_send_task_events if task_events is None
                                else task_events)
        self.heartbeat = heartbeat
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ImproperlyConfigured(
                f"heartbeat_interval must be more than 0 seconds, got {heartbeat_interval}")
        self.heartbeat_interval = heartbeat_interval
        #: The Prometheus endpoint's port (``--metrics-port``; 0: any free one), or None.
        port = conf.worker_metrics_port if metrics_port is None else metrics_port
        self.metrics_port = None if port is None else check_port(port)
        self.metrics_host = metrics_host or conf.worker_metrics_host or "127.0.0.1"
        if self.metrics_port is not None:  # fail here, in a supervisor too, not in a child
            require_prometheus_client(self.metrics_port)
        #: The worker's metrics while ``run`` runs with a metrics port (worker/metrics.py).
        self.metrics: WorkerMetrics | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._signals = 0
        #: SIGHUP asked for a restart: ``run`` then returns RECYCLE_EXIT_CODE after a warm
        #: shutdown, and the command starts the worker again (bin/worker.py).
        self.restart = False
        #: Signal handlers from before run(), restored when it returns (main thread only).
        self._saved_signals: dict[signal.Signals, Any] = {}
        # Guards _loop/_consumer/_stop_requested between run() and stop() from other threads.
        self._lock = threading.Lock()
        self._stop_requested = False

    @property
    def concurrency_text(self) -> str:
        inline = " (inline)" if self.loop_inline else ""
        sync = (f"autoscaled {self.autoscale[1]}..{self.autoscale[0]}" if self.autoscale
                else str(self.sync_workers))
        return (f"{self.loop_workers} loop workers{inline} × {self.loop_concurrency} + "
                f"{sync} sync workers")

    # -- running -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until a signal or ``stop()``; returns the process exit code."""
        if self.metrics_port is not None:  # before connecting: a port in use fails at once
            self.metrics = WorkerMetrics(self.hostname)
            self.metrics.serve(self.metrics_host, self.metrics_port)
        # Before the loop runs, as Celery's (sync) start: handlers may use libraries that
        # refuse to run inside an event loop (Django's ORM raises SynchronousOnlyOperation).
        self.app.finalize()
        signals.worker_init.send(sender=self)
        signals.worker_process_init.send(sender=self)
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main())
        finally:
            if self.metrics is not None:
                self.metrics.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
            self._restore_signals()

    async def _main(self) -> int:
        app = self.app
        transport = app.transport
        backend = app.backend
        await self._connect(transport)
        await _check_backend(backend)
        tracer = Tracer(backend, self.hostname, accept_set(app.conf.accept_content), transport,
                        track_started=bool(app.conf.task_track_started), app=app)
        loop = asyncio.get_running_loop()
        # The consumer's outbox exists only once the consumer does; executors get a
        # forwarding callable so they can be built first.
        consumer_box: list[Consumer] = []

        def on_done(outcome: Any, alone: bool = False) -> None:
            consumer = consumer_box[0]
            consumer.outbox.post(consumer.results.hand_over(outcome, alone))

        tracer.interim = on_done

        loop_exec = LoopExecutor(tracer, on_done, self.loop_workers, self.loop_concurrency,
                                 inline=self.loop_inline)
        sync_exec = ThreadExecutor(tracer, on_done, self.sync_workers)
        events = WorkerEvents(
            app, transport, self.hostname, tracer, lambda: consumer_box[0].event_counts(),
            task_events=self.task_events, heartbeat=self.heartbeat, freq=self.heartbeat_interval,
            metrics=self.metrics)
        consumer = Consumer(app, transport, self.queues, self.window, loop_exec, sync_exec,
                            self.hostname, on_ready=self._on_ready,
                            max_tasks=self.max_tasks_per_child,
                            max_memory_kb=self.max_memory_per_child, state_db=self.state_db,
                            events=events)
        consumer_box.append(consumer)
        if self.metrics is not None:
            self.metrics.attach(consumer, loop_exec, sync_exec)
        # Resizes what a plain pool_grow names: the threads, unless the worker was started
        # for async tasks only.
        kind: Kind = "loop" if self.sync_workers == 0 and not self.autoscale and self.loop_workers \
            else "threads"
        pool = Pool(consumer, loop_exec, sync_exec, loop_workers=self.loop_workers,
                    multiplier=self.multiplier, autoscale=self.autoscale,
                    keepalive=self.autoscale_keepalive, kind=kind)
        self.pool = pool
        control = ControlServer(self, consumer)
        with self._lock:
            self._loop, self._consumer = loop, consumer
            stop_now = self._stop_requested
        if stop_now:
            consumer.stop_fetching()
        await control.subscribe()  # before the consumer says it is ready
        self._install_signals(loop)
        loop_exec.start()
        sync_exec.start()
        serving = asyncio.create_task(control.run(), name="remote-control")
        scaling = asyncio.create_task(pool.run_autoscaler(), name="autoscaler")
        try:
            await consumer.run()
        finally:
            scaling.cancel()
            control.stop()
            serving.cancel()  # at its wait for commands, or mid-reply: either is safe
            await asyncio.gather(serving, scaling, return_exceptions=True)
            await control.close()
            await events.close()  # worker-offline, before the broker connection goes
            if self.metrics is not None:
                self.metrics.detach()
            if self._heartbeats is not None:
                await asyncio.gather(self._heartbeats, return_exceptions=True)
            self._remove_signals(loop)
            loop_exec.stop(5.0)
            sync_exec.stop(0.0 if self._signals > 1 else 5.0)
            await transport.aclose()
            await backend.aclose()
            with self._lock:
                self._loop = self._consumer = None
        logger.info("%s: shut down after %d tasks", self.hostname, consumer.processed)
        signals.worker_shutdown.send(sender=self)
        return RECYCLE_EXIT_CODE if consumer.recycle or self.restart else 0

    async def _connect(self, transport: Any) -> None:
        conf = self.app.conf
        retry = conf.broker_connection_retry_on_startup
        max_retries = conf.broker_connection_max_retries
        attempt, delay = 0, 0.5
        while True:
            try:
                await transport.ping()
                return
            except ConnectionLost as exc:
                attempt += 1
                if not retry or (max_retries is not None and attempt > max_retries) or self._stop_requested:
                    raise
                logger.error("Cannot connect to %s: %s. Trying again in %.1f seconds... (%d/%s)",
                             mask_url(transport.url), exc, delay, attempt, max_retries)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _on_ready(self) -> None:
        python, gil_warning = gil.describe()
        logger.info("%s: %s", self.hostname, python)
        if gil_warning:
            logger.warning("%s: %s", self.hostname, gil_warning)
        signals.worker_ready.send(sender=self)
        consumer = self._consumer
        if consumer is not None:  # worker-online, then a heartbeat every 2 s
            self._heartbeats = asyncio.get_running_loop().create_task(
                consumer.events.run(), name="worker-heartbeats")
        if self.ready_callback is not None:
            self.ready_callback()  # under a supervisor: the byte that says this one is ready
        # Last: whoever reads the log (a supervisor's test, an operator) may count on the
        # rest having happened once this line is out.
        logger.info("%s ready: consuming from %s with %s (prefetch window %d)",
                    self.hostname, ", ".join(self.queues), self.concurrency_text, self.window)

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a warm shutdown; safe from any thread."""
        with self._lock:
            self._stop_requested = True
            loop, consumer = self._loop, self._consumer
        if loop is not None and consumer is not None:
            loop.call_soon_threadsafe(consumer.stop_fetching)

    def _on_signal(self, signame: str) -> None:
        consumer = self._consumer
        self._signals += 1
        if consumer is None:
            return
        how = "Warm" if self._signals == 1 else "Cold"
        signals.worker_shutting_down.send(sender=self.hostname, sig=signame, how=how, exitcode=0)
        if self._signals == 1:
            logger.warning("worker: Warm shutdown (%s): finishing running tasks; "
                           "send the signal again to stop at once", signame)
            consumer.stop_fetching()
        else:
            logger.warning("worker: Cold shutdown (%s): cancelling running tasks and requeueing "
                           "their messages", signame)
            consumer.cold_stop()

    def _on_hup(self) -> None:
        """SIGHUP: restart, as Celery's worker does (a warm shutdown, then the same command
        starts again: bin/worker.py). A second one while stopping is logged and ignored."""
        consumer = self._consumer
        if consumer is None or self.restart or self._signals:
            logger.warning("worker: SIGHUP ignored: already stopping")
            return
        self.restart = True
        logger.warning("worker: SIGHUP: restarting: finishing running tasks, then starting "
                       "again")
        consumer.stop_fetching()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved_signals[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        self._saved_signals[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop stops serving signals; until ``run`` returns (connections closing), one
        more is logged and ignored: the shutdown is under way, and the default action would
        end the process by the signal instead of its exit status. Main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            signal.signal(sig, self._late_signal)

    def _late_signal(self, signum: int, frame: Any) -> None:
        logger.warning("worker: %s ignored: already shutting down", signal.Signals(signum).name)

    def _restore_signals(self) -> None:
        """The handlers from before ``run`` (main thread; nothing to do elsewhere)."""
        for sig, handler in self._saved_signals.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
        self._saved_signals.clear()


def default_queues(conf: Any) -> list[str]:
    """The queues a worker consumes without ``-Q``, as Celery's: every queue of
    ``task_queues`` (a list of queues or names, or a mapping by name), else the default
    queue."""
    declared = conf.task_queues or ()
    if isinstance(declared, dict):
        declared = declared.keys()
    names: list[str] = []
    for queue in declared:
        name = queue if isinstance(queue, str) else getattr(queue, "name", None)
        if name and name not in names:
            names.append(name)
    return names or [conf.task_default_queue]


#: How long the check of the result backend at start may take (seconds).
BACKEND_CHECK_TIMEOUT = 5.0


async def _check_backend(backend: Any) -> None:
    """Warn when the result backend cannot be reached at start: the worker runs anyway (the
    broker is up), and keeps the results for the backend until it comes (flusher.py)."""
    try:
        async with asyncio.timeout(BACKEND_CHECK_TIMEOUT):
            await backend.ping()
    except (ConnectionLost, TimeoutError) as exc:
        logger.warning("The result backend %s cannot be reached (%s): tasks run, and their "
                       "results wait in this worker (up to a bound, then it stops fetching) "
                       "until it can", mask_url(str(backend.url or "")),
                       exc or f"no answer within {BACKEND_CHECK_TIMEOUT:.0f} s")


#: The exit status of a worker process that stopped to be replaced (max tasks or memory per
#: child); the ``celery worker`` supervisor then starts a fresh one.
RECYCLE_EXIT_CODE = 75


def _autoscale(value: Any) -> tuple[int, int] | None:
    """``(max, min)`` checked (None: no autoscaling)."""
    if value is None:
        return None
    try:
        high, low = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"autoscale must be (max, min) whole numbers, not {value!r}") \
            from None
    if low < 0 or not 1 <= high <= MAX_THREADS or low > high:
        raise ImproperlyConfigured(f"autoscale needs 1 <= max <= {MAX_THREADS} and "
                                   f"0 <= min <= max, not max={high} min={low}")
    return high, low


def _keepalive() -> float:
    text = os.environ.get("AUTOSCALE_KEEPALIVE")
    try:
        value = float(text) if text else AUTOSCALE_KEEPALIVE_DEFAULT
    except ValueError:
        raise ImproperlyConfigured(f"AUTOSCALE_KEEPALIVE must be a number of seconds, not "
                                   f"{text!r}") from None
    if value <= 0:
        raise ImproperlyConfigured(f"AUTOSCALE_KEEPALIVE must be positive, not {text!r}")
    return value


def _count(value: int | None, default: int | None, fallback: int, name: str, minimum: int = 0) -> int:
    chosen = value if value is not None else default if default is not None else fallback
    try:
        number = int(chosen)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be a whole number, not {chosen!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number



#: Celery's pools by name: how many sync threads each gives (None: ``concurrency``).
_POOLS = {"solo": 1, "threads": None, "thread": None}
#: Pools this package does not have: threads run their tasks instead (a warning says so).
_OTHER_POOLS = ("prefork", "processes", "eventlet", "gevent", "custom")
#: WorkController arguments that have no effect here (a warning each, when given).
_NO_EFFECT = ("logfile", "without_mingle", "without_gossip", "optimization", "beat",
              "pidfile", "statedb_path", "schedule_filename", "scheduler")


class AppWorker(Worker):
    """``app.Worker``: a worker of one app taking Celery's ``WorkController`` arguments
    (``concurrency``, ``pool``, ``loglevel``, ``queues``, ``without_heartbeat``,
    ``send_events``, ...) as well as this package's, started with ``start()``."""

    app_bound: Celery  # set on the subclass app.Worker makes

    def __init__(self, app: Celery | None = None, hostname: str | None = None,
                 **kwargs: Any) -> None:
        app = app or self.app_bound
        concurrency = kwargs.pop("concurrency", None)
        pool = kwargs.pop("pool", None) or kwargs.pop("pool_cls", None)
        if isinstance(pool, str) and pool.lower() in _OTHER_POOLS:
            logger.warning("Worker(pool=%r): there is no such pool here; %s sync threads run "
                           "def tasks (and loop workers async def ones)", pool,
                           concurrency or "the default number of")
        elif pool is not None:
            if not isinstance(pool, str) or pool.lower() not in _POOLS:
                raise ImproperlyConfigured(f"Unknown worker pool {pool!r}: use 'solo' or "
                                           "'threads' (or sync_workers=N)")
            concurrency = _POOLS[pool.lower()] or concurrency
        if concurrency is not None:
            kwargs.setdefault("sync_workers", int(concurrency))
        loglevel = kwargs.pop("loglevel", None)
        if loglevel is not None:
            logging.getLogger("celery").setLevel(
                loglevel.upper() if isinstance(loglevel, str) else loglevel)
        if "queues" in kwargs and isinstance(kwargs["queues"], str):
            kwargs["queues"] = [q.strip() for q in kwargs["queues"].split(",") if q.strip()]
        if kwargs.pop("without_heartbeat", False):
            kwargs["heartbeat"] = False
        if "send_events" in kwargs:
            kwargs["task_events"] = bool(kwargs.pop("send_events"))
        for name in _NO_EFFECT:
            if name in kwargs and kwargs.pop(name) not in (None, False):
                logger.warning("Worker(%s=...) has no effect here (docs/cli.md lists what "
                               "the worker takes)", name)
        super().__init__(app, hostname=hostname, **kwargs)

    def start(self) -> int:
        """Run until stopped (Celery's name for ``run``)."""
        return self.run()
