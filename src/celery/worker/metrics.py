"""A worker's Prometheus metrics (``celery worker --metrics-port``), served over HTTP.

Counters and histograms are fed by the consumer's task hooks (``WorkerEvents`` calls the
``WorkerMetrics`` methods below from the consumer's loop, where it would send task events);
gauges are read when a scraper asks (``_Gauges.collect``). Each worker has its own registry,
so that several workers in one process (tests, ``celery bench``) keep apart; every series
carries the worker's ``hostname`` as a label. docs/monitoring.md lists the metrics.

Threads: the HTTP server (prometheus-client's ``ThreadingWSGIServer``) answers each scrape
on a thread of its own, so a slow scraper holds up no one but itself. Counters and
histograms are prometheus-client's, each value behind its own lock: the consumer's loop
writes them, scrape threads read them. The children cache (``_children``) is the consumer
loop's alone. The gauges' sources (``_sources``, under ``_sources_lock``) are read on a
scrape thread in three ways: the consumer's counts on the consumer's own loop
(``call_soon_threadsafe`` and a ``concurrent.futures.Future``, waited for at most
``SNAPSHOT_TIMEOUT``), the sync executor's under its lock (``ThreadExecutor.utilisation``),
the loop lag under each ``LagProbe``'s lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .consumer import Consumer
    from .executor.loop import LoopExecutor
    from .executor.threads import ThreadExecutor
    from .request import Outcome, Request

__all__ = ["LagProbe", "WorkerMetrics", "check_port", "probe_port", "require_prometheus_client"]

logger = logging.getLogger("celery.worker.metrics")

#: What to install for ``--metrics-port``.
EXTRA_HINT = "pip install 'celery-asyncio[metrics]'"
#: How long a scrape waits for the consumer's loop to report its counts (seconds); a loop
#: that does not answer in time (busy, or blocked by a task) leaves those gauges out of
#: that scrape, and the loop lag gauge says why.
SNAPSHOT_TIMEOUT = 1.0
#: How often each probed event loop runs its lag probe (seconds).
LAG_INTERVAL = 0.25
#: Histogram buckets (seconds) for task runtime and queue wait.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0, float("inf"))
QUEUE_WAIT_HELP = (
    "Seconds from the worker receiving a task's message (or from its ETA, if later) to the "
    "task starting; protocol v2 messages carry no publish time, so time spent in the broker "
    "queue before this worker fetched the message is not included")


def require_prometheus_client(port: int) -> None:
    """Raise ImproperlyConfigured (one line, naming the extra) unless prometheus-client
    can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(
            f"--metrics-port/worker_metrics_port {port}: the Prometheus endpoint needs "
            f"prometheus-client, which is not installed: {EXTRA_HINT}") from None


def check_port(port: Any, what: str = "--metrics-port/worker_metrics_port") -> int:
    """The port as an int from 0 (any free port) to 65535; ImproperlyConfigured if not."""
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{what}: {port!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise ImproperlyConfigured(f"{what}: {number} is not a port number (0 to 65535)")
    return number


def _cannot_serve(host: str, port: int, why: object) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"--metrics-port {port}: cannot serve metrics on {host}:{port}: {why}")


def probe_port(host: str, port: int) -> None:
    """Check that ``host:port`` can be listened on now (bind, then let go):
    ImproperlyConfigured, in ``serve``'s words, if not. For a supervisor, whose processes
    each serve a port of their own: one line at once, rather than each process failing."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind((host, port))
    except OSError as exc:
        raise _cannot_serve(host, port, exc.strerror or exc) from None


class LagProbe:
    """How late callbacks run on one event loop: a timer due every ``LAG_INTERVAL`` on that
    loop records, when it runs, how long after its due time it did. The timer is armed and
    runs on that loop's thread; ``read`` (any thread) also counts a tick that is overdue now,
    so a loop blocked at this moment shows as lagging before the tick finally runs.
    ``_lock`` guards ``_due``, ``_late`` and ``_stopped``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = LAG_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self._lock = threading.Lock()
        self._due = 0.0  # time.monotonic() the pending tick is due; 0: none pending
        self._late = 0.0  # how late the last tick ran
        self._stopped = False
        self._handle: asyncio.TimerHandle | None = None  # the loop's thread only

    def start(self) -> None:
        """Arm the first tick; any thread (on the loop's own thread: before it next turns)."""
        try:
            self.loop.call_soon_threadsafe(self._arm)
        except RuntimeError:  # the loop is closed already
            pass

    def _arm(self) -> None:
        # time.monotonic, not loop.time(): uvloop's clock is the one cached at the start of
        # the loop's iteration, which would hide the lag this measures.
        with self._lock:
            if self._stopped:
                return
            self._due = time.monotonic() + self.interval
        self._handle = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._late = max(0.0, now - self._due)
            self._due = 0.0
        self._arm()

    def stop(self) -> None:
        """No more ticks; on the loop's thread (or once it no longer runs)."""
        with self._lock:
            self._stopped = True
            self._due = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def read(self) -> float:
        """Seconds: how late the last tick ran, or how overdue the pending one is now, the
        larger. Any thread."""
        now = time.monotonic()
        with self._lock:
            overdue = now - self._due if self._due else 0.0
            return max(self._late, overdue)


@dataclass
class _Sources:
    """What the gauges read: set by ``attach`` on the consumer's loop."""

    consumer: Consumer
    loop: asyncio.AbstractEventLoop
    sync_exec: ThreadExecutor
    probes: list[tuple[str, LagProbe]]


class WorkerMetrics:
    """One worker's metrics and their HTTP endpoint.

    ``serve``/``close`` from the thread that runs the worker; ``attach``/``detach`` and the
    task hooks (``received``, ``task``, ``outcome``, ``unknown``) on the consumer's loop.
    """

    def __init__(self, hostname: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.hostname = hostname
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("hostname", "name")

        def counter(what: str, help: str) -> Any:  # noqa: A002
            return Counter(f"celery_tasks_{what}", help, labels, registry=self.registry)

        self._received = counter("received", "Task messages this worker received, by task")
        self._succeeded = counter("succeeded", "Tasks that succeeded, by task")
        self._failed = counter("failed", "Tasks that failed (raised, or hit their hard time "
                                         "limit), by task")
        self._retried = counter("retried", "Task runs that ended by asking for a retry, by task")
        self._rejected = counter("rejected", "Tasks that raised Reject (requeued or dropped), "
                                             "by task")
        self._revoked = counter("revoked", "Tasks revoked (discarded before starting, expired, "
                                           "or terminated), by task")
        self._unregistered = Counter(
            "celery_tasks_unregistered", "Task messages naming a task this worker does not "
            "register (rejected)", ("hostname",), registry=self.registry)
        self._runtime = Histogram(
            "celery_task_runtime_seconds", "Seconds a task ran, by task (every run that ended "
            "with SUCCESS, FAILURE, RETRY, REJECTED or IGNORED)", labels,
            registry=self.registry, buckets=BUCKETS)
        self._wait = Histogram("celery_task_queue_wait_seconds", QUEUE_WAIT_HELP, labels,
                               registry=self.registry, buckets=BUCKETS)
        #: The counter each final state adds to (IGNORED and REVOKED: none; revoked tasks
        #: are counted when revoked, by ``task``).
        self._by_state = {states.SUCCESS: self._succeeded, states.FAILURE: self._failed,
                          states.RETRY: self._retried, states.REJECTED: self._rejected}
        #: (metric, task name) -> the labelled child: ``labels()`` costs a lock and a tuple
        #: per call. The consumer's loop only.
        self._children: dict[tuple[int, str], Any] = {}
        self._sources: _Sources | None = None
        self._sources_lock = threading.Lock()
        self.registry.register(_Gauges(self))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # -- the endpoint (the worker's thread) --------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port; ``address`` says which) and answer
        scrapes from a thread. ImproperlyConfigured, on one line, if it cannot."""
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise _cannot_serve(host, port, exc.strerror or exc) from None
        except (OverflowError, ValueError) as exc:  # a port out of range, a bad address
            raise _cannot_serve(host, port, exc) from None
        thread.name = "metrics-http"
        self._server, self._thread = server, thread
        self.address = (host, server.server_address[1])
        logger.info("%s: Prometheus metrics on http://%s:%d/metrics", self.hostname, host,
                    self.address[1])

    def close(self) -> None:
        """Stop answering scrapes (a scrape under way finishes on its own thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- the gauges' sources (the consumer's loop) -----------------------------------------

    def attach(self, consumer: Consumer, loop_exec: LoopExecutor, sync_exec: ThreadExecutor
               ) -> None:
        """Read gauges from these from now on, and start the lag probes: one on the
        consumer's loop (``loop="consumer"``) and one on each loop worker's (``loop="0"``,
        ...; with ``--loop-inline``, loop worker 0 is the consumer's loop, probed once)."""
        loop = asyncio.get_running_loop()
        own = LagProbe(loop)
        own.start()
        probes = [("consumer", own)]
        for index, worker_loop in enumerate(loop_exec.loops):
            probe = own
            if worker_loop is not loop:
                probe = LagProbe(worker_loop)
                probe.start()  # before or after the loop worker's thread starts: either works
            probes.append((str(index), probe))
        with self._sources_lock:
            self._sources = _Sources(consumer, loop, sync_exec, probes)

    def detach(self) -> None:
        """Gauges read nothing from the worker any more (it is stopping)."""
        with self._sources_lock:
            sources, self._sources = self._sources, None
        if sources is not None:
            sources.probes[0][1].stop()  # ours; the loop workers' end with their loops

    def sources(self) -> _Sources | None:
        with self._sources_lock:
            return self._sources

    # -- task hooks (the consumer's loop; WorkerEvents calls them) ---------------------------

    def _child(self, metric: Any, name: str) -> Any:
        key = (id(metric), name)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.hostname, name)
        return child

    def received(self, req: Request) -> None:
        req.received_at = time.monotonic()
        self._child(self._received, req.name).inc()

    def task(self, type: str, req: Request) -> None:  # noqa: A002 - the event's type
        if type == "task-started":
            waited = time.monotonic() - req.received_at
            eta = req.header_time("eta")
            if eta is not None:  # held for its ETA: the wait starts at the ETA
                waited = min(waited, max(0.0, (req.started_at or time.time()) - eta))
            self._child(self._wait, req.name).observe(waited)
        elif type == "task-revoked":
            self._child(self._revoked, req.name).inc()

    def outcome(self, outcome: Outcome) -> None:
        state, name = outcome.state, outcome.request.name
        counter = self._by_state.get(state)
        if counter is not None:
            self._child(counter, name).inc()
        if state != states.REVOKED:
            self._child(self._runtime, name).observe(outcome.runtime)

    def unknown(self, name: str) -> None:
        """A message for a task not registered here (``name`` is not a label: any sender
        could make the series grow without bound)."""
        self._unregistered.labels(self.hostname).inc()


class _Gauges:
    """The gauges, read when a scraper asks (on its thread): prefetch window use, tasks
    active, loop lag, sync-thread utilisation."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # unchecked: the series come and go with the worker's state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        sources = self.metrics.sources()
        if sources is None:
            return
        host = self.metrics.hostname

        def gauge(name: str, help: str, value: float | None = None, **labels: str) -> Any:  # noqa: A002
            family = GaugeMetricFamily(name, help, labels=["hostname", *labels])
            if value is not None:
                family.add_metric([host, *labels.values()], value)
            return family

        counts = _consumer_counts(sources)
        if counts is not None:
            inflight, reserved, window, held, active = counts
            yield gauge("celery_worker_prefetch_window", "Messages this worker may hold at "
                        "once (prefetch multiplier x concurrency)", window)
            yield gauge("celery_worker_prefetch_inflight", "Requests accepted and not "
                        "finished (waiting for a slot or running)", inflight)
            yield gauge("celery_worker_prefetch_reserved", "Messages fetched whose ack, "
                        "requeue or reject the broker has not confirmed", reserved)
            yield gauge("celery_worker_prefetch_use_ratio", "max(inflight, reserved) / window: "
                        "1 means the worker fetches nothing more until a task ends",
                        max(inflight, reserved) / window if window else 0.0)
            yield gauge("celery_worker_tasks_scheduled", "Tasks held here until their ETA",
                        held)
            family = gauge("celery_worker_tasks_active", "Tasks running now, by kind "
                           "(async: loop workers; sync: sync threads)", kind="")
            family.samples.clear()
            for kind, number in active.items():
                family.add_metric([host, kind], number)
            yield family
        lag = GaugeMetricFamily(
            "celery_worker_loop_lag_seconds", f"How late a callback due every {LAG_INTERVAL:g} "
            "s ran on each event loop (the consumer's, each loop worker's), or how overdue "
            "the pending one is now, the larger", labels=["hostname", "loop"])
        for name, probe in sources.probes:
            lag.add_metric([host, name], probe.read())
        yield lag
        busy, threads = sources.sync_exec.utilisation()
        yield gauge("celery_worker_sync_threads", "Sync worker threads (for def tasks)", threads)
        yield gauge("celery_worker_sync_threads_busy", "Sync worker threads running a task now",
                    busy)
        yield gauge("celery_worker_sync_utilisation_ratio", "Busy sync threads / sync threads",
                    busy / threads if threads else 0.0)


def _consumer_counts(sources: _Sources) -> tuple[int, int, int, int, dict[str, int]] | None:
    """The consumer's counts, read on its own loop: (inflight, reserved, window, held for
    their ETA, running by kind). None if its loop does not answer within SNAPSHOT_TIMEOUT,
    or is gone. Called on a scrape thread."""
    consumer = sources.consumer
    answer: concurrent.futures.Future[tuple[int, int, int, int, dict[str, int]]] = (
        concurrent.futures.Future())

    def read() -> None:  # on the consumer's loop
        if answer.set_running_or_notify_cancel():  # False: the scrape gave up waiting
            answer.set_result((consumer.inflight, consumer.reserved, consumer.window,
                               consumer.eta_held,
                               {kind: len(lane.running) - len(lane.unstarted)  # started
                                for kind, lane in (("async", consumer.lanes[True]),
                                                   ("sync", consumer.lanes[False]))}))

    try:
        sources.loop.call_soon_threadsafe(read)
        return answer.result(SNAPSHOT_TIMEOUT)
    except RuntimeError:  # the loop is closed: the worker has stopped
        return None
    except concurrent.futures.TimeoutError:
        answer.cancel()
        logger.debug("metrics: the consumer's loop did not answer within %ss", SNAPSHOT_TIMEOUT)
        return None
