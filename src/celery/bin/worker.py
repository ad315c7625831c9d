"""``celery worker``: start a worker (event-loop threads for async tasks, threads for sync)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from ..utils.text import mask_url, pluralize
from .base import CLIContext, user_error
from .supervisor import (
    Supervisor,
    child_slot,
    expand_index,
    node_format,
    parent_command,
    process_name,
    resolve_processes,
    watch_supervisor,
)
from .worker_metrics import metrics_line, metrics_options, probe_metrics_ports

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["worker"]

logger = logging.getLogger("celery.worker")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: ``-P`` values we accept; ``None`` is the default. Everything runs on asyncio + threads.
POOLS = ("asyncio", "threads")


def _loglevel(ctx: click.Context, param: click.Parameter, value: str) -> int:
    name = value.upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LOG_LEVELS:
        raise click.BadParameter(
            f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    return getattr(logging, name)


#: ``-l/--loglevel`` and ``-f/--logfile``: the worker's, and beat's (bin/beat.py).
loglevel_option = click.option(
    "-l",
    "--loglevel",
    default="WARNING",
    show_default=True,
    callback=_loglevel,
    metavar="LEVEL",
    help=f"One of {', '.join(LOG_LEVELS)} (any case).",
)
logfile_option = click.option(
    "-f", "--logfile", type=click.Path(dir_okay=False), help="Log here instead of stderr."
)


def _pool(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value.lower() not in POOLS:
        raise click.BadParameter(
            f"pool {value!r} is not supported: celery-asyncio only has the asyncio pool "
            f"(event-loop threads for async def tasks, threads for def tasks); "
            f"use --loop-workers/--loop-concurrency/--sync-workers to size it"
        )
    return value


def _queues(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str] | None:
    names = [q.strip() for item in value for q in item.split(",") if q.strip()]
    return names or None


def _count(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    # Zero loop (or sync) workers is a valid choice for apps with only def (or async) tasks.
    least = 1 if param.name == "loop_concurrency" else 0
    if value is not None and value < least:
        raise click.BadParameter(f"must be at least {least}")
    return value


def _autoscale(ctx: click.Context, param: click.Parameter, value: str | None
               ) -> tuple[int, int] | None:
    """``MAX,MIN`` (or ``MAX``: min 0) as ``(max, min)``; given the other way round, the
    larger is max, as in Celery."""
    if value is None:
        return None
    parts = value.split(",")
    try:
        numbers = sorted((int(p) for p in parts), reverse=True)
    except ValueError:
        raise click.BadParameter(f"expected MAX,MIN whole numbers, not {value!r}") from None
    if len(numbers) > 2:
        raise click.BadParameter(f"expected MAX,MIN (two numbers at most), not {value!r}")
    high, low = numbers[0], numbers[1] if len(numbers) == 2 else 0
    if low < 0 or high < 1:
        raise click.BadParameter(f"needs MAX >= 1 and MIN >= 0, not {value!r}")
    return high, low


def _processes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return resolve_processes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--loop-workers",
    type=int,
    callback=_count,
    help="Threads each running an event loop for async def tasks [worker_loop_workers].",
)
@click.option(
    "--loop-concurrency",
    type=int,
    callback=_count,
    help="Async tasks run at once on each loop [worker_loop_concurrency].",
)
@click.option(
    "--loop-inline/--no-loop-inline",
    default=None,
    help="Run async def tasks on the consumer's own event loop, not a loop worker thread "
    "(one loop worker; faster on GIL builds, but a task that blocks its loop holds up the "
    "consumer) [worker_loop_inline].",
)
@click.option(
    "--sync-workers",
    type=int,
    callback=_count,
    help="Threads running def tasks [worker_sync_workers, default: CPU count].",
)
@click.option(
    "-c",
    "--concurrency",
    type=int,
    callback=_count,
    help="Celery's option: same as --sync-workers.",
)
@click.option(
    "--autoscale",
    callback=_autoscale,
    metavar="MAX,MIN",
    help="Grow the sync threads (def tasks) up to MAX while tasks wait, and shrink them "
    "back to MIN when idle (after AUTOSCALE_KEEPALIVE seconds, 30); starts with MIN and "
    "replaces --sync-workers.",
)
@click.option(
    "-Q",
    "--queues",
    multiple=True,
    callback=_queues,
    metavar="QUEUE[,QUEUE]",
    help="Queues to consume from, comma separated [task_default_queue].",
)
@click.option(
    "-n",
    "--hostname",
    metavar="NAME",
    help="Node name; %h, %n, %d expand to host name, name, domain [celery@%h].",
)
@loglevel_option
@logfile_option
@click.option(
    "--prefetch-multiplier",
    type=int,
    callback=_count,
    help="Messages reserved per concurrency slot [worker_prefetch_multiplier].",
)
@click.option(
    "-P",
    "--pool",
    callback=_pool,
    metavar="asyncio",
    help="Accepted for compatibility; only 'asyncio' (or 'threads') is supported.",
)
@click.option(
    "--max-tasks-per-child",
    type=int,
    callback=_count,
    help="Replace the worker process after it ran this many tasks [worker_max_tasks_per_child].",
)
@click.option(
    "--max-memory-per-child",
    type=int,
    callback=_count,
    metavar="KIB",
    help="Replace the worker process once its resident memory passes this many KiB "
         "[worker_max_memory_per_child].",
)
@click.option(
    "-S",
    "--statedb",
    type=click.Path(dir_okay=False),
    help="Keep revoked task ids in this file across restarts [worker_state_db].",
)
@click.option("-E", "--task-events", "--events", "task_events", is_flag=True, default=None,
              help="Send task events, for monitors such as Flower and celery events "
                   "[worker_send_task_events].")
@click.option("--without-heartbeat", is_flag=True,
              help="Send no worker-online/heartbeat/offline events.")
@click.option("--heartbeat-interval", type=float, metavar="SECONDS",
              help="Seconds between two worker heartbeats [2].")
@click.option("--without-gossip", is_flag=True,
              help="Accepted for compatibility: this worker never gossips (it does not "
                   "follow other workers' events).")
@click.option("--without-mingle", is_flag=True,
              help="Accepted for compatibility: this worker never mingles (it does not ask "
                   "other workers for revoked ids at start; --statedb keeps its own).")
@click.option(
    "-B",
    "--beat",
    "embed_beat",
    is_flag=True,
    help="Also run beat in this worker (in its first process with --processes); several "
    "may run: one sends.",
)
@click.option(
    "-s",
    "--schedule-filename",
    "--schedule",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="With -B: beat's state file [beat_schedule_filename].",
)
@click.option(
    "--scheduler",
    metavar="MODULE:CLASS",
    help="With -B: beat's scheduler class [beat_scheduler].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics on this port (with --processes N, process i serves "
    "PORT+i-1; 0: any free port, logged); needs the 'metrics' extra [worker_metrics_port, "
    "default: off].",
)
@click.option(
    "--metrics-host",
    metavar="HOST",
    help="Address the metrics endpoint listens on [worker_metrics_host, default 127.0.0.1].",
)
@click.option(
    "-X",
    "--exclude-queues",
    multiple=True,
    callback=_queues,
    metavar="QUEUE[,QUEUE]",
    help="Queues not to consume, of those the worker would (-Q, else task_queues, else "
    "the default queue).",
)
@click.option("--purge", "--discard", "purge", is_flag=True,
              help="Delete every waiting message of the queues this worker consumes, "
                   "then start.")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Hard time limit of each task [task_time_limit].")
@click.option("--soft-time-limit", type=float, metavar="SECONDS",
              help="Soft time limit of each task [task_soft_time_limit].")
@click.option("--pidfile", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the worker's pid to FILE, refused when a running process holds "
                   "it, removed at exit (%n, %h, %i expand as in --logfile).")
@click.option("-D", "--detach", is_flag=True,
              help="Run in the background, in a session of its own: the command returns "
                   "once the worker started; its output goes to --logfile (else nowhere). "
                   "Under systemd, do not detach (examples/deploy/).")
@click.option("-O", "optimization", type=click.Choice(["default", "fair"],
                                                       case_sensitive=False),
              help="Accepted for compatibility: tasks always go to the first free worker "
                   "slot, which is what -O fair asks of Celery's prefork pool.")
@click.option(
    "--processes",
    callback=_processes,
    metavar="N|auto",
    help="Worker processes, each with its own loop and sync workers, restarted if they die; "
    "'auto': the CPU count on GIL builds, 1 on free-threaded ones [worker_processes, "
    "default 1].",
)
@click.pass_obj
def worker(
    obj: CLIContext,
    loop_workers: int | None,
    loop_concurrency: int | None,
    loop_inline: bool | None,
    sync_workers: int | None,
    concurrency: int | None,
    autoscale: tuple[int, int] | None,
    queues: list[str] | None,
    hostname: str | None,
    loglevel: int,
    logfile: str | None,
    prefetch_multiplier: int | None,
    pool: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    statedb: str | None,
    task_events: bool | None,
    without_heartbeat: bool,
    heartbeat_interval: float | None,
    without_gossip: bool,
    without_mingle: bool,
    embed_beat: bool,
    schedule_filename: str | None,
    scheduler: str | None,
    exclude_queues: list[str] | None,
    purge: bool,
    time_limit: float | None,
    soft_time_limit: float | None,
    pidfile: str | None,
    detach: bool,
    optimization: str | None,
    processes: int | None,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Start a worker."""
    if sync_workers is not None and concurrency is not None and sync_workers != concurrency:
        raise click.UsageError("--concurrency is another name for --sync-workers; give only one")
    # SIGHUP restarts a running worker (Worker._on_hup, the supervisor's _on_hup); until
    # their handlers are in place, one must not end the starting process (its default
    # action). Ignored dispositions pass to the processes the supervisor starts: the same.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    app = obj.app
    conf = app.conf
    if detach:
        from ..worker.worker import expand_hostname

        nodename = expand_hostname(process_name(hostname or "celery@%h", 0))
        sys.exit(detach_worker(obj, logfile, node_format(pidfile, nodename) if pidfile else None))
    if time_limit is not None:
        conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        conf.task_soft_time_limit = soft_time_limit
    slot = child_slot()
    if slot is None and processes is None:
        try:
            processes = resolve_processes(conf.worker_processes)
        except ValueError as exc:
            raise user_error(f"worker_processes: {exc}") from None
    number = slot.number if slot else 0
    setup_logging(app, loglevel, expand_index(logfile, number) if logfile else None)
    from ..worker.worker import Worker, default_queues, expand_hostname

    sync = sync_workers if sync_workers is not None else concurrency
    if sync is None:
        sync = conf.worker_sync_workers
    if sync is None:
        sync = conf.worker_concurrency or os.cpu_count() or 1
    template = hostname or "celery@%h"
    if exclude_queues:
        queues = [q for q in queues or default_queues(conf) if q not in exclude_queues]
        if not queues:
            raise click.UsageError("-X/--exclude-queues leaves no queue to consume")
    options: dict[str, Any] = {
        "hostname": expand_hostname(process_name(template, number)),
        "queues": queues,
        "loop_workers": conf.worker_loop_workers if loop_workers is None else loop_workers,
        "loop_concurrency": (
            conf.worker_loop_concurrency if loop_concurrency is None else loop_concurrency
        ),
        "loop_inline": conf.worker_loop_inline if loop_inline is None else loop_inline,
        "sync_workers": sync,
        "prefetch_multiplier": prefetch_multiplier,
        "task_events": task_events,
        "heartbeat": not without_heartbeat,
        "heartbeat_interval": heartbeat_interval,
        "autoscale": autoscale,
        **metrics_options(conf, metrics_port, metrics_host, slot, processes),
    }
    state_db = statedb or conf.worker_state_db or None
    # Built in the supervisor too: a bad size or setting fails here, once, on one line.
    instance = Worker(app, **options, max_tasks_per_child=max_tasks_per_child,
                      max_memory_per_child=max_memory_per_child,
                      state_db=expand_index(state_db, number) if state_db else None)
    if slot is None:
        take_pidfile(pidfile, options["hostname"])
        if purge:
            purge_queues(app, instance.queues)
        recycling = bool(instance.max_tasks_per_child or instance.max_memory_per_child)
        total = processes or 1
        if total > 1 or recycling:
            names = [expand_hostname(process_name(template, i if total > 1 else 0))
                     for i in range(1, total + 1)]
            probe_metrics_ports(options, total)
            if not obj.quiet:
                click.echo(banner(app, instance, options, loglevel, names))
            sys.exit(supervise(obj, total, names))
        if not obj.quiet:
            click.echo(banner(app, instance, options, loglevel))
    else:
        ready = watch_supervisor(instance.stop)
        if ready is not None:
            instance.ready_callback = ready
    tune_gc(conf.worker_gc_threshold)
    if (schedule_filename or scheduler) and not embed_beat:
        raise click.UsageError("--schedule-filename and --scheduler are beat's options: add -B")
    beat = None
    if embed_beat and number <= 1:  # with --processes, the first process runs beat
        from ..beat import EmbeddedService

        beat = EmbeddedService(app, schedule_filename=schedule_filename, scheduler_cls=scheduler)
        beat.start()
    try:
        code = instance.run()
    finally:
        if beat is not None:
            beat.stop()
    if instance.restart and slot is None:
        restart_command()  # SIGHUP: this same command again, in this process
    sys.exit(code)


def restart_command() -> None:
    """Replace this process with the same ``celery`` command (SIGHUP's restart, as Celery's
    worker: same pid, so a pidfile and a supervisor such as systemd keep following it)."""
    from . import celery as celery_command

    argv = celery_command.MAIN_ARGV
    if argv is None:
        logger.error("worker: cannot restart: not started from the celery command line")
        return
    logger.warning("worker: restarting: %s", " ".join(parent_command(argv)))
    logging.shutdown()
    if celery_command.MAIN_CWD:
        os.chdir(celery_command.MAIN_CWD)
    command = parent_command(argv)
    os.execv(command[0], command)


def take_pidfile(path: str | None, nodename: str) -> None:
    """``--pidfile``: written now (``node_format``), removed when the process exits
    (atexit: a kill -9 leaves it behind, and the next start replaces it)."""
    if not path:
        return
    import atexit

    from .pidfile import Pidfile, PidfileError

    lock = Pidfile(node_format(path, nodename))
    try:
        lock.acquire()
    except PidfileError as exc:
        raise user_error(str(exc)) from None
    atexit.register(lock.release)


def purge_queues(app: Celery, queues: list[str]) -> None:
    """``--purge``: empty the queues this worker is about to consume, saying how much went."""
    transport = app.transport
    count = sum(app.portal.call(transport.purge(name)) for name in queues)
    click.echo(f"Purged {count} {pluralize(count, 'message')} from {len(queues)} "
               f"{pluralize(len(queues), 'queue')} ({', '.join(queues)}).")


def detach_worker(obj: CLIContext, logfile: str | None, pidfile: str | None) -> int:
    """``--detach``: run this same command without it, in a new session with no terminal
    (stdin from /dev/null, output to ``--logfile`` or nowhere), and return once it started:
    with ``pidfile`` (expanded), once it wrote its pid there (past every check at start; up to
    ``DETACH_WAIT``), else after ``DETACH_SETTLE``; an error if it exited before."""
    import subprocess
    import time

    from . import celery as celery_command

    argv = celery_command.MAIN_ARGV
    if argv is None:
        raise user_error("--detach runs the same command again in a new process: use it "
                         "from the celery command line")
    args = [a for a in argv if a not in ("-D", "--detach")]
    log = open(expand_index(logfile, 0), "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115
    try:
        child = subprocess.Popen(parent_command(args), cwd=celery_command.MAIN_CWD,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    finally:
        if logfile:
            log.close()  # type: ignore[union-attr]
    from .pidfile import PidfileError, read_pid

    def pid_written() -> bool:
        try:
            return read_pid(pidfile) == child.pid if pidfile else False
        except PidfileError:
            return False

    deadline = time.monotonic() + (DETACH_WAIT if pidfile else DETACH_SETTLE)
    while time.monotonic() < deadline and not pid_written():
        code = child.poll()
        if code is not None:
            where = f"; see {logfile}" if logfile else " (add --logfile to see why)"
            raise user_error(f"The detached worker exited at once with status {code}{where}")
        time.sleep(0.05)
    obj.echo(f"Worker started in the background (pid {child.pid}).")
    return 0


#: How long ``--detach`` watches the worker it started before it returns (seconds)
#: without ``--pidfile``; with one, how long it waits at most for the pid to be written.
DETACH_SETTLE = 1.0
DETACH_WAIT = 30.0


def supervise(obj: CLIContext, total: int, names: list[str]) -> int:
    """Run ``total`` processes of this same ``celery ... worker`` command, and keep them
    running until a signal stops them (bin/supervisor.py); the exit status.

    The supervisor itself connects to nothing: each process is a whole worker with its own
    connections, loop and sync workers, and node name (``names``).
    """
    from ..worker.worker import RECYCLE_EXIT_CODE
    from . import celery as celery_command

    argv = celery_command.MAIN_ARGV
    if obj.app_spec is None or argv is None:
        raise user_error("--processes, --max-tasks-per-child and --max-memory-per-child run "
                         "the same command again in new processes: give the app with -A")
    # Fail here, once, on a broker URL no worker could use (this makes no connection).
    obj.app.transport  # noqa: B018
    supervisor = Supervisor(parent_command(argv), total, names, cwd=celery_command.MAIN_CWD,
                            recycle_code=RECYCLE_EXIT_CODE)
    code = supervisor.run()
    if supervisor.failure:
        raise user_error(supervisor.failure)
    return code


def tune_gc(threshold: int | None) -> None:
    """Make the cyclic garbage collector cheaper for a worker process (the CLI's own process).

    Everything alive once the app is loaded (modules, tasks, settings) is frozen out of the
    collector's sight (``gc.freeze()``), and a young-generation collection runs after
    ``threshold`` net container allocations instead of Python's 700. With 700, a worker with
    a hundred tasks in flight traverses them and their coroutines, futures and dicts every
    few tasks: about 9 µs of CPU per 10 ms ``async def`` task on a 2-core machine, 0.3 s per
    30,000 tasks (docs/performance.md). Garbage cycles are still collected, a little later.
    ``worker_gc_threshold = None`` (or 0) leaves the collector as Python set it.
    """
    import gc

    if not threshold or threshold <= gc.get_threshold()[0]:
        return
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(int(threshold), older, oldest)


def _setup_task_logger(app: Celery, level: int, logfile: str | None) -> None:
    """Task loggers (``get_task_logger``) write in ``worker_task_log_format``, with the
    running task's name and id; not also through the root logger's handler."""
    from .. import signals
    from ..utils.log import TaskFormatter, task_logger

    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler())
    handler.setFormatter(TaskFormatter(app.conf.worker_task_log_format))
    for old in task_logger.handlers[:]:
        task_logger.removeHandler(old)
    task_logger.addHandler(handler)
    task_logger.setLevel(level)
    task_logger.propagate = False
    signals.after_setup_task_logger.send(sender=None, logger=task_logger, loglevel=level,
                                         logfile=logfile, format=app.conf.worker_task_log_format,
                                         colorize=False)


def setup_logging(app: Celery, level: int, logfile: str | None) -> None:
    """Send the root logger to stderr (or ``logfile``) in ``worker_log_format`` at ``level``.

    As in Celery: if a receiver is connected to ``setup_logging``, it configures logging and
    we do nothing more; otherwise ``after_setup_logger`` is sent once our handler is in place.
    """
    from .. import signals

    fmt = app.conf.worker_log_format
    if signals.setup_logging.send(sender=None, loglevel=level, logfile=logfile, format=fmt,
                                  colorize=False):
        return
    try:
        handler: logging.Handler = (
            logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler()
        )
    except OSError as exc:
        raise user_error(f"cannot open log file {logfile!r}: {exc.strerror}") from exc
    handler.setFormatter(logging.Formatter(app.conf.worker_log_format))
    root = logging.getLogger()
    if app.conf.worker_hijack_root_logger:
        for old in root.handlers[:]:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _setup_task_logger(app, level, logfile)
    signals.after_setup_logger.send(sender=None, logger=root, loglevel=level, logfile=logfile,
                                    format=fmt, colorize=False)


def banner(app: Celery, instance: Any, options: dict[str, Any], loglevel: int,
           names: list[str] | None = None) -> str:
    """The few lines a worker prints when it starts: who, where, how many, what (``names``:
    the node names of the processes a supervisor runs, when it runs several)."""
    conf = app.conf
    show_internal = loglevel <= logging.DEBUG
    tasks = sorted(name for name in app.tasks if show_internal or not name.startswith("celery."))
    queues = getattr(instance, "queues", None) or options["queues"] or [conf.task_default_queue]
    loops, syncs = options["loop_workers"], options["sync_workers"]
    scaled = options.get("autoscale")
    sync_text = (f"{scaled[1]}..{scaled[0]} sync workers (autoscale)" if scaled
                 else f"{syncs} sync {pluralize(syncs, 'worker')}")
    concurrency = (
        f"{loops} loop {pluralize(loops, 'worker')}"
        f"{' (inline)' if options.get('loop_inline') else ''} × {options['loop_concurrency']}"
        f" + {sync_text}"
    )
    from .. import VERSION_BANNER

    if names and len(names) > 1:
        concurrency = f"{len(names)} processes × ({concurrency})"
    lines = [
        f"{', '.join(names or [getattr(instance, 'hostname', options['hostname'])])}"
        f" v{VERSION_BANNER}",
        f"  app:         {app.main or '__main__'}:{id(app):#x}",
        f"  transport:   {mask_url(app.broker_url)}",
        f"  results:     {mask_url(conf.result_backend) or 'disabled'}",
        f"  concurrency: {concurrency}",
        f"  queues:      {', '.join(queues)}",
        "  task events: " + ("ON" if getattr(instance, "task_events", False)
                             else "OFF (enable -E to monitor tasks in this worker)"),
        *metrics_line(options, len(names or ())),
        "",
        "[tasks]",
        *(f"  . {name}" for name in tasks),
    ]
    if not tasks:
        lines.append("  (none registered)")
    return "\n".join(lines) + "\n"
