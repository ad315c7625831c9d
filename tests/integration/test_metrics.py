"""The worker's Prometheus endpoint (worker/metrics.py, ``--metrics-port``): real workers
(in a thread, and ``celery worker`` processes) on Redis, scraped over HTTP with urllib."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery import Celery
from celery.exceptions import Reject
from tests.conftest import IN_CI, flushed_redis_url

from .outcome_tasks import register_outcome_tasks
from .worker_harness import CommandProcess, running_worker

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    if IN_CI:  # CI installs the 'metrics' extra (ci/setup.sh, ci/ft-test.sh): never skip there
        raise RuntimeError("prometheus-client is not installed, and CI=true: install "
                           "celery-asyncio[metrics]") from None
    pytest.skip("prometheus-client is not installed (the 'metrics' extra)",
                allow_module_level=True)

REDIS_DB = 9
HOST = "metrics@test"

pytestmark = pytest.mark.redis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def url() -> str:
    return flushed_redis_url(REDIS_DB)


def make_app(url: str, **conf: Any) -> Celery:
    app = Celery("metrics", broker=url, backend=url, set_as_current=False, **conf)

    register_outcome_tasks(app, "metrics")

    @app.task(name="metrics.refuse")
    def refuse() -> None:
        raise Reject("not this one", requeue=False)

    @app.task(name="metrics.nap")
    async def nap(seconds: float) -> None:
        await asyncio.sleep(seconds)

    @app.task(name="metrics.hog")
    async def hog(seconds: float) -> None:
        time.sleep(seconds)  # blocks its loop worker's event loop: what the lag gauge shows

    @app.task(name="metrics.sleep")
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    return app


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = make_app(url)
    yield app
    app.close()


def scrape(port: int, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    labels.setdefault("hostname", HOST)
    return samples.get((metric, frozenset(labels.items())))


def until(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def port_of(worker: Any) -> int:
    assert worker.metrics is not None and worker.metrics.address is not None
    return worker.metrics.address[1]


def free_ports(count: int) -> int:
    """A first port of ``count`` consecutive ones that were free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            held = []
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return first
    raise AssertionError("no free ports")


# -- counts match what ran ---------------------------------------------------------------------


def test_counters_and_histograms_match_a_mixed_run(app):
    """A few hundred tasks of mixed outcomes (success sync and async, failure, retry);
    scraped during the run (sane, never more than what ran) and after (exact)."""
    plan = {"metrics.add": 150, "metrics.aadd": 80, "metrics.boom": 40, "metrics.again": 40}
    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1, sync_workers=2,
                        prefetch_multiplier=2) as worker:
        port = port_of(worker)
        results = []
        for name, count in plan.items():
            args = (1, 2) if name.endswith("add") else ()
            results += [app.send_task(name, args) for _ in range(count)]
        during = scrape(port)  # mid-run (or just after: a fast machine)
        received = value(during, "celery_tasks_received_total", name="metrics.add") or 0
        assert 0 <= received <= 150
        use = value(during, "celery_worker_prefetch_use_ratio")
        assert use is not None and 0 <= use <= 1
        for r in results:
            r.get(timeout=30, propagate=False)

        def settled() -> Samples | None:
            s = scrape(port)
            ok = value(s, "celery_tasks_succeeded_total", name="metrics.again") == 40 and \
                value(s, "celery_tasks_failed_total", name="metrics.boom") == 40 and \
                value(s, "celery_tasks_succeeded_total", name="metrics.add") == 150 and \
                value(s, "celery_tasks_succeeded_total", name="metrics.aadd") == 80
            return s if ok else None

        samples = until(settled)
        assert samples, scrape(port)
        window = worker.window
    runs = {"metrics.add": 150, "metrics.aadd": 80, "metrics.boom": 40, "metrics.again": 80}
    for name, count in runs.items():
        assert value(samples, "celery_tasks_received_total", name=name) == count, name
        assert value(samples, "celery_task_runtime_seconds_count", name=name) == count, name
        assert value(samples, "celery_task_queue_wait_seconds_count", name=name) == count, name
        assert value(samples, "celery_task_runtime_seconds_bucket", name=name, le="+Inf") == count
    assert value(samples, "celery_tasks_retried_total", name="metrics.again") == 40
    assert value(samples, "celery_tasks_failed_total", name="metrics.add") is None
    assert value(samples, "celery_tasks_failed_total", name="metrics.boom") == 40
    # Gauges, read at scrape time: an idle worker once everything ran.
    assert value(samples, "celery_worker_prefetch_window") == window == 2 * (100 + 2)
    assert value(samples, "celery_worker_prefetch_inflight") == 0
    assert value(samples, "celery_worker_tasks_active", kind="sync") == 0
    assert value(samples, "celery_worker_tasks_active", kind="async") == 0
    assert value(samples, "celery_worker_sync_threads") == 2
    assert value(samples, "celery_worker_sync_threads_busy") == 0
    for loop in ("consumer", "0"):
        lag = value(samples, "celery_worker_loop_lag_seconds", loop=loop)
        assert lag is not None and 0 <= lag < 1, (loop, lag)


def test_rejected_revoked_and_unregistered_are_counted(app):
    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1,
                        sync_workers=1) as worker:
        port = port_of(worker)
        for _ in range(3):
            app.send_task("metrics.refuse")
        past = datetime.now(UTC) - timedelta(minutes=1)
        expired = [app.send_task("metrics.add", (1, 1), expires=past) for _ in range(2)]
        running = app.send_task("metrics.nap", (30,))
        assert until(lambda: value(scrape(port), "celery_worker_tasks_active", kind="async") == 1)
        app.control.revoke(running.id, terminate=True)
        app.send_task("metrics.nowhere")
        for r in expired:
            assert r.get(timeout=10, propagate=False) is not None

        def counted() -> Samples | None:
            s = scrape(port)
            return s if (value(s, "celery_tasks_rejected_total", name="metrics.refuse") == 3
                         and value(s, "celery_tasks_revoked_total", name="metrics.add") == 2
                         and value(s, "celery_tasks_revoked_total", name="metrics.nap") == 1
                         and value(s, "celery_tasks_unregistered_total") == 1) else None

        samples = until(counted)
        assert samples, scrape(port)
    assert value(samples, "celery_tasks_received_total", name="metrics.add") == 2
    assert value(samples, "celery_task_runtime_seconds_count", name="metrics.add") is None
    assert value(samples, "celery_task_runtime_seconds_count", name="metrics.refuse") == 3


def test_gauges_show_busy_threads_and_a_blocked_loop(app):
    """Sync utilisation while def tasks sleep; the lag of a loop worker whose event loop an
    async task blocks; the prefetch counts while the window is full."""
    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1, sync_workers=2,
                        prefetch_multiplier=1) as worker:
        port = port_of(worker)
        sleeps = [app.send_task("metrics.sleep", (1.5,)) for _ in range(4)]
        hog = app.send_task("metrics.hog", (1.5,))

        def busy() -> Samples | None:
            s = scrape(port)
            return s if (value(s, "celery_worker_sync_threads_busy") == 2
                         and (value(s, "celery_worker_loop_lag_seconds", loop="0") or 0) > 0.5
                         ) else None

        samples = until(busy, seconds=10)
        assert samples, scrape(port)
        assert value(samples, "celery_worker_sync_utilisation_ratio") == 1.0
        assert value(samples, "celery_worker_tasks_active", kind="sync") == 2
        assert value(samples, "celery_worker_tasks_active", kind="async") == 1
        assert value(samples, "celery_worker_prefetch_inflight") == 5
        # The consumer's loop is not the one blocked: its own lag stays small.
        assert value(samples, "celery_worker_loop_lag_seconds", loop="consumer") < 0.5
        for r in [*sleeps, hog]:
            r.get(timeout=20)


def test_a_scrape_answers_while_the_consumer_loop_is_blocked(app):
    """Inline, an async task that blocks holds up the consumer's own loop: a scrape still
    answers, within about SNAPSHOT_TIMEOUT, without the consumer's counts, and shows the lag."""
    from celery.worker.metrics import SNAPSHOT_TIMEOUT

    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1, loop_inline=True,
                        sync_workers=1) as worker:
        port = port_of(worker)
        hog = app.send_task("metrics.hog", (3.0,))
        assert until(lambda: (value(scrape(port), "celery_worker_loop_lag_seconds",
                                    loop="consumer") or 0) > 0.3, seconds=5)
        started = time.monotonic()
        samples = scrape(port)
        took = time.monotonic() - started
        assert took < SNAPSHOT_TIMEOUT + 1.0, took
        assert value(samples, "celery_worker_prefetch_inflight") is None  # not answered
        lag = value(samples, "celery_worker_loop_lag_seconds", loop="consumer")
        assert lag is not None and lag > 0.5
        # Inline: loop worker 0 is the consumer's loop, probed once.
        assert value(samples, "celery_worker_loop_lag_seconds", loop="0") == pytest.approx(lag, abs=0.1)
        hog.get(timeout=10)
        assert until(lambda: value(scrape(port), "celery_worker_prefetch_inflight") == 0)


def test_a_slow_scraper_does_not_stall_the_worker(app):
    """A client that connects and never finishes its request, and one that never reads its
    answer: tasks still run, and other scrapes are answered."""
    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1,
                        sync_workers=1) as worker:
        port = port_of(worker)
        stuck = socket.create_connection(("127.0.0.1", port))
        stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        mute = socket.create_connection(("127.0.0.1", port))
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        mute.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
        try:
            started = time.monotonic()
            results = [app.send_task("metrics.add", (i, i)) for i in range(100)]
            assert [r.get(timeout=15) for r in results] == [2 * i for i in range(100)]
            took = time.monotonic() - started
            samples = scrape(port, timeout=5)
            assert value(samples, "celery_tasks_succeeded_total", name="metrics.add") == 100 or \
                until(lambda: value(scrape(port), "celery_tasks_succeeded_total",
                                    name="metrics.add") == 100)
            assert took < 15
        finally:
            stuck.close()
            mute.close()


def test_metrics_off_cost_nothing_and_the_setting_turns_them_on(url):
    """Off by default: no endpoint and the consumer's hooks stay off (events off too).
    ``worker_metrics_port`` turns it on, with hooks on but no task events sent."""
    app = make_app(url)
    try:
        with running_worker(app, hostname=HOST, loop_workers=1, sync_workers=1) as worker:
            assert worker.metrics is None
            assert worker._consumer is not None
            assert worker._consumer.events.task_events is False
    finally:
        app.close()
    app = make_app(url, worker_metrics_port=0)
    try:
        with running_worker(app, hostname=HOST, loop_workers=1, sync_workers=1) as worker:
            events = worker._consumer.events
            assert events.task_events is True and events.sending is False
            assert app.send_task("metrics.add", (2, 3)).get(timeout=10) == 5
            assert until(lambda: value(scrape(port_of(worker)), "celery_tasks_succeeded_total",
                                       name="metrics.add") == 1)
    finally:
        app.close()


def test_two_workers_in_one_process_keep_their_own_registries(url):
    first, second = make_app(url), make_app(url)
    try:
        with running_worker(first, hostname="one@test", metrics_port=0, loop_workers=0,
                            sync_workers=1, queues=["q1"]) as w1, \
                running_worker(second, hostname="two@test", metrics_port=0, loop_workers=0,
                               sync_workers=1, queues=["q2"]) as w2:
            assert first.send_task("metrics.add", (1, 1), queue="q1").get(timeout=10) == 2
            s1 = until(lambda: (s := scrape(port_of(w1))) and value(
                s, "celery_tasks_succeeded_total", hostname="one@test", name="metrics.add") and s)
            s2 = scrape(port_of(w2))
    finally:
        first.close()
        second.close()
    assert value(s1, "celery_tasks_succeeded_total", hostname="one@test", name="metrics.add") == 1
    assert value(s2, "celery_tasks_succeeded_total", hostname="two@test", name="metrics.add") is None
    assert not any(dict(labels).get("hostname") == "one@test" for _, labels in s2)


# -- the command line --------------------------------------------------------------------------


APP_MODULE = """
from celery import Celery
app = Celery("mcli", broker="{url}", backend="{url}")

@app.task(name="mcli.add")
def add(x, y):
    return x + y
"""


def write_app(tmp_path: Any, url: str) -> None:
    (tmp_path / "mcli.py").write_text(textwrap.dedent(APP_MODULE.format(url=url)))


def run_cli(tmp_path: Any, *args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}\nfrom celery.bin.celery import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, "-A", "mcli", "-q", "worker", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_port_in_use_invalid_port_or_host_fail_with_one_line(url, tmp_path):
    write_app(tmp_path, url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error_line(run_cli(tmp_path, "--metrics-port", str(port)))
        assert line == (f"Error: --metrics-port {port}: cannot serve metrics on "
                        f"127.0.0.1:{port}: Address already in use"), line
    line = error_line(run_cli(tmp_path, "--metrics-port", "0", "--metrics-host", "no.such.host."))
    assert line.startswith("Error: --metrics-port 0: cannot serve metrics on no.such.host.:0:")
    proc = run_cli(tmp_path, "--metrics-port", "70000")
    assert proc.returncode == 2 and "'--metrics-port': 70000 is not in the range" in proc.stderr
    line = error_line(run_cli(tmp_path, prelude="import mcli; mcli.app.conf.worker_metrics_port = 'x'"))
    assert line == "Error: --metrics-port/worker_metrics_port: 'x' is not a port number", line


def test_cli_without_prometheus_client_names_the_extra(url, tmp_path):
    write_app(tmp_path, url)
    hide = "import sys; sys.modules['prometheus_client'] = None  # as if not installed"
    line = error_line(run_cli(tmp_path, "--metrics-port", "9808", prelude=hide))
    assert line == ("Error: --metrics-port/worker_metrics_port 9808: the Prometheus endpoint "
                    "needs prometheus-client, which is not installed: pip install "
                    "'celery-asyncio[metrics]'"), line
    # Without the option, the worker does not need it (it stops at once: no such broker).
    proc = run_cli(tmp_path, "--help", prelude=hide)
    assert proc.returncode == 0 and "--metrics-port" in proc.stdout


def test_cli_processes_each_serve_port_plus_index(url, tmp_path):
    """``--processes 2 --metrics-port P``: process 1 serves P, process 2 P+1, each its own
    worker's metrics (its node name in the hostname label)."""
    write_app(tmp_path, url)
    first = free_ports(2)
    proc = CommandProcess(
        [sys.executable, "-m", "celery", "-A", "mcli", "worker", "--processes", "2",
         "--metrics-port", str(first), "-n", "m@test", "--loop-workers", "0",
         "--sync-workers", "1", "-l", "info"], cwd=tmp_path)
    client = Celery("mcli", broker=url, backend=url, set_as_current=False)
    try:
        proc.wait_for_line("ready: consuming", count=2, timeout=60)
        results = [client.send_task("mcli.add", (i, 1)) for i in range(40)]
        assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(40)]

        def total() -> float:
            return sum(value(scrape(port), "celery_tasks_succeeded_total",
                             hostname=f"m-{i}@test", name="mcli.add") or 0
                       for i, port in ((1, first), (2, first + 1)))

        assert until(lambda: total() == 40), total()
        assert f"metrics:     http://127.0.0.1:{first}-{first + 1}/metrics" in proc.output
        assert proc.stop() == 0, proc.output
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
        client.close()


def test_cli_processes_with_a_port_in_use_fail_at_once_in_the_supervisor(url, tmp_path):
    write_app(tmp_path, url)
    first = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        started = time.monotonic()
        line = error_line(run_cli(tmp_path, "--processes", "2", "--metrics-port", str(first)))
        took = time.monotonic() - started
    assert line == (f"Error: --metrics-port {first + 1}: cannot serve metrics on "
                    f"127.0.0.1:{first + 1}: Address already in use"), line
    assert took < 10, took  # no process was started (each would fail 3 times, with backoff)


def test_scrapes_in_parallel_with_tasks(app):
    """Several scrapers hammering the endpoint while tasks run: every scrape answers and
    the counts only grow."""
    with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=1,
                        sync_workers=2) as worker:
        port = port_of(worker)
        errors: list[BaseException] = []
        seen: list[float] = []
        stop = threading.Event()

        def scraper() -> None:
            last = 0.0
            try:
                while not stop.is_set():
                    got = value(scrape(port), "celery_tasks_succeeded_total",
                                name="metrics.aadd") or 0
                    assert got >= last
                    last = got
                    seen.append(got)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=scraper) for _ in range(3)]
        for t in threads:
            t.start()
        results = [app.send_task("metrics.aadd", (i, 0)) for i in range(200)]
        assert [r.get(timeout=30) for r in results] == list(range(200))
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[0]
    assert len(seen) >= 3


def test_task_events_switch_on_and_off_while_metrics_keep_counting(app):
    """Metrics turn the consumer's hooks on, not task events: ``enable_events`` still
    enables them (not "already enabled"), ``disable_events`` stops them, and the metrics
    count throughout."""
    from tests.integration.test_events_receive import Capture

    capture = Capture(app, wakeup=False)  # subscribed when made
    try:
        with running_worker(app, hostname=HOST, metrics_port=0, loop_workers=0,
                            sync_workers=1) as worker:
            port = port_of(worker)
            before = app.send_task("metrics.add", (1, 1))
            assert before.get(timeout=10) == 2
            # A lone task's result is written on its executor thread, and its outcome
            # (with its event, if events are on then) reaches the consumer's loop after:
            # events switched on in between would send this task's. Switched once it is in.
            consumer = worker._consumer
            assert consumer is not None
            assert until(lambda: consumer.processed == 1, seconds=10)
            reply = app.control.broadcast("enable_events", reply=True, timeout=10.0, limit=1)
            assert reply == [{HOST: {"ok": "task events enabled"}}]
            on = app.send_task("metrics.add", (2, 2))
            assert on.get(timeout=10) == 4
            assert until(lambda: any(e.get("uuid") == on.id and e["type"] == "task-succeeded"
                                     for e in list(capture.events)), seconds=10)
            reply = app.control.broadcast("disable_events", reply=True, timeout=10.0, limit=1)
            assert reply == [{HOST: {"ok": "task events disabled"}}]
            after = app.send_task("metrics.add", (3, 3))
            assert after.get(timeout=10) == 6
            assert until(lambda: value(scrape(port), "celery_tasks_succeeded_total",
                                       name="metrics.add") == 3)
            time.sleep(0.5)
    finally:
        capture.stop()
    with capture.lock:
        uuids = {e.get("uuid") for e in capture.events}
    assert on.id in uuids and before.id not in uuids and after.id not in uuids
