"""Worker processes of one ``celery worker`` command: start them, restart one that dies, pass
signals on (``--processes N``, and the recycling of ``--max-tasks-per-child``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils import gil

__all__ = [
    "CHILD_ENV",
    "ChildSlot",
    "Supervisor",
    "child_slot",
    "expand_index",
    "process_name",
    "resolve_processes",
    "watch_supervisor",
]

logger = logging.getLogger("celery.worker.supervisor")

#: Set by the supervisor in each worker process it starts: ``"<index>/<total>"`` (index 1 to
#: total). A process with it set is one worker; it never supervises others.
CHILD_ENV = "CELERY_ASYNCIO_WORKER_PROCESS"
#: The file descriptor of the worker process's end of a socket pair shared with its
#: supervisor: the worker writes one byte once it consumes, and reads end-of-file when the
#: supervisor is gone (it then stops as in a warm shutdown).
LINK_FD_ENV = "CELERY_ASYNCIO_SUPERVISOR_FD"
#: What the worker writes on the link once it is ready.
READY = b"R"

#: The first wait before a process that died is started again (seconds); it doubles with
#: each death, up to RESTART_DELAY_MAX, and starts over once a process ran RESET_AFTER.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
RESET_AFTER = 60.0
#: A process that exits before it is ready this many times in a row is not started again:
#: the supervisor stops the others and exits with an error (bad settings, a missing module).
START_ATTEMPTS = 3


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    counter: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if counter is not None:  # Python 3.13+
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_processes(value: object) -> int:
    """``--processes``/``worker_processes``: a whole number from 1, or ``"auto"`` (the CPU
    count on a GIL build, 1 on a free-threaded one, whose threads already use every core).

    Raises:
        ValueError: with a message that fits on one line.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 1 if gil.FREE_THREADED else cpu_count()
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{value!r} is not a number of processes; "
                         f"give a whole number from 1, or 'auto'") from None
    if number < 1:
        raise ValueError(f"{number} processes: give a whole number from 1, or 'auto'")
    return number


@dataclass(frozen=True)
class ChildSlot:
    """Which of the supervisor's worker processes this one is."""

    index: int  #: 1 to total
    total: int

    @property
    def number(self) -> int:
        """What ``%i`` stands for: the index, or 0 when there is one process only."""
        return self.index if self.total > 1 else 0


def child_slot(environ: dict[str, str] | None = None) -> ChildSlot | None:
    """This process's slot when a supervisor started it, else None."""
    text = (os.environ if environ is None else environ).get(CHILD_ENV)
    if not text:
        return None
    index, _, total = text.partition("/")
    return ChildSlot(int(index), int(total))


def expand_index(text: str, number: int) -> str:
    """``%i`` becomes the process index (0 for a lone process), ``%I`` ``-<index>`` (empty
    for a lone process), as in Celery's file names; ``%%`` stays for the next expansion and
    other ``%`` sequences are left alone."""
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair == "%i":
            out.append(str(number))
        elif pair == "%I":
            out.append(f"-{number}" if number else "")
        elif pair == "%%":
            out.append(pair)
        else:
            out.append(text[i])
            i += 1
            continue
        i += 2
    return "".join(out)


def node_format(text: str, nodename: str, number: int = 0) -> str:
    """A file name for node ``nodename`` (``name@host``), as Celery expands ``--pidfile``
    and ``--logfile``: ``%p`` the whole node name, ``%n`` its name, ``%h`` its host, ``%d``
    the host's domain, ``%i``/``%I`` the process index (``expand_index``), ``%%`` a %."""
    name, _, host = nodename.partition("@")
    values = {"p": nodename, "n": name, "h": host, "d": host.partition(".")[2],
              "i": str(number), "I": f"-{number}" if number else "", "%": "%"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text) and text[i + 1] in values:
            out.append(values[text[i + 1]])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def process_name(template: str, number: int) -> str:
    """The node name template (``-n``, before ``%h``/``%n``/``%d``) of process ``number``:
    with ``%i``/``%I`` in it they are expanded; without them, process 2 of ``celery@%h`` is
    ``celery-2@%h`` (a lone process keeps the name)."""
    if "%i" in template or "%I" in template or not number:
        return expand_index(template, number)
    name, at, host = template.rpartition("@")
    if not at:
        return f"celery-{number}@{template}"  # as "celery@" is put in front of a bare name
    return f"{name}-{number}@{host}"


def watch_supervisor(on_gone: Callable[[], Any]) -> Callable[[], None] | None:
    """In a worker process a supervisor started: return the function that tells it this
    worker is ready, and start a daemon thread that calls ``on_gone`` (from that thread) if
    the supervisor goes away (end-of-file on the link). None when not started so.

    The link socket is used by two threads at once, which the OS allows: the watching thread
    only reads, the caller of the returned function (the consumer's loop) only writes.
    """
    fd = os.environ.get(LINK_FD_ENV)
    if not fd:
        return None
    link = socket.socket(fileno=int(fd))
    ppid = os.getppid()

    def watch() -> None:
        try:
            data = link.recv(1)
        except ConnectionError:
            # A supervisor that dies before reading our ready byte resets the link instead
            # of closing it: gone all the same.
            data = b""
        except OSError as exc:
            logger.error("Cannot watch the supervisor (pid %d): %s; no longer watching it",
                         ppid, exc)
            return
        if data:
            logger.error("Unexpected data from the supervisor (pid %d): %r; no longer "
                         "watching it", ppid, data)
            return
        logger.warning("The supervisor (pid %d) is gone: warm shutdown", ppid)
        on_gone()

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()

    def ready() -> None:
        try:
            link.sendall(READY)
        except OSError as exc:  # the supervisor died meanwhile: the watcher stops us
            logger.warning("Cannot tell the supervisor (pid %d) this worker is ready: %s",
                           ppid, exc)

    return ready


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Runs ``total`` worker processes of one command line until they stop.

    Each process gets ``CHILD_ENV`` (its slot) and one end of a socket pair (``LINK_FD_ENV``)
    and runs in its own session, so a Ctrl-C in the terminal reaches it once, through us.
    Everything here runs on the supervisor's one event loop, in its main thread.
    """

    def __init__(self, command: Sequence[str], total: int, names: Sequence[str], *,
                 cwd: str | None = None, recycle_code: int) -> None:
        self.command = list(command)
        self.total = total
        self.names = list(names)  #: node name of each process, index 1 at 0
        self.cwd = cwd
        self.recycle_code = recycle_code
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._forwarded: list[signal.Signals] = []
        self._stop: asyncio.Event | None = None
        #: Why the supervisor gave up (a process that could not start), or None.
        self.failure: str | None = None

    def run(self) -> int:
        """Start the processes and wait until all have stopped (main thread only); the
        exit status: 0 after a clean stop, 1 when one could not start (``failure`` says
        why), else the first unexpected status of a process."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            codes = await asyncio.gather(*(self._slot(i) for i in range(1, self.total + 1)))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if self.failure:
            return 1
        return next((code for code in codes if code), 0)

    def _on_signal(self, sig: signal.Signals) -> None:
        live = sum(p.returncode is None for p in self._children.values())
        logger.warning("supervisor: %s: passing it on to %d worker %s", sig.name, live,
                       "process" if live == 1 else "processes")
        self._pass_on(sig)

    def _on_hup(self) -> None:
        """SIGHUP: each worker process restarts (it finishes its tasks and exits as recycled;
        ``_slot`` starts it again); the supervisor keeps running."""
        assert self._stop is not None
        if self._stop.is_set():  # a SIGTERM came first (both pending: either order)
            logger.warning("supervisor: SIGHUP ignored: already stopping")
            return
        live = [p for p in self._children.values() if p.returncode is None]
        logger.warning("supervisor: SIGHUP: restarting %d worker %s", len(live),
                       "process" if len(live) == 1 else "processes")
        for proc in live:
            self._send(proc, signal.SIGHUP)

    def _pass_on(self, sig: signal.Signals) -> None:
        """Stop: no process is started again, and each running one gets ``sig``."""
        assert self._stop is not None
        self._forwarded.append(sig)
        self._stop.set()
        for proc in list(self._children.values()):
            if proc.returncode is None:
                self._send(proc, sig)

    def _send(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        """Signal a child not yet known to have exited. Not ``proc.send_signal``: that is
        ``Popen.send_signal``, which first polls (``waitpid`` with WNOHANG) and so can reap a
        child that has just exited before asyncio's child watcher does; the watcher then
        logs "Unknown child process pid" and reports status 255 for it, which we took for a
        failed worker (seen when a stop came as a restarted child started). Once the watcher
        has reaped the child, its exit reaches ``returncode`` on this loop a moment later:
        in that moment ``os.kill`` may find no process (ignored)."""
        if proc.returncode is not None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:  # it exited: its wait() reports it
            pass

    def _give_up(self, name: str, code: int) -> None:
        assert self._stop is not None
        self.failure = (f"worker process {name} {_how(code)} before it was ready, "
                        f"{START_ATTEMPTS} times in a row; see its output above")
        logger.error("supervisor: %s; stopping the others", self.failure)
        if not self._stop.is_set():
            self._pass_on(signal.SIGTERM)  # a warm shutdown of the others

    async def _slot(self, index: int) -> int:
        """Keep process ``index`` running until a stop; its last exit status (0 if clean)."""
        assert self._stop is not None
        name = self.names[index - 1]
        delay, attempts = RESTART_DELAY, 0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            code, ready = await self._run_once(index)
            if self._stop.is_set():
                return self._stopped_status(code)
            if code == self.recycle_code:
                logger.warning("Worker process %s recycled; starting a new one", name)
                delay, attempts = RESTART_DELAY, 0
                continue
            if code == 0:  # a remote ``shutdown``: not ours to undo
                logger.warning("Worker process %s stopped by itself (remote shutdown); "
                               "not starting it again", name)
                return 0
            attempts = 0 if ready else attempts + 1
            if attempts >= START_ATTEMPTS:
                self._give_up(name, code)
                return code
            if loop.time() - started >= RESET_AFTER:
                delay = RESTART_DELAY
            logger.error("Worker process %s %s%s; starting it again in %.0f s", name,
                         _how(code), "" if ready else " before it was ready", delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass  # the wait is over: start it again
            delay = min(delay * 2, RESTART_DELAY_MAX)
        return 0

    def _stopped_status(self, code: int) -> int:
        """A process's status once we passed a stop on: clean if it ended normally, was
        recycled meanwhile, or died of the signal we passed on."""
        if code in (0, self.recycle_code) or (code < 0 and -code in self._forwarded):
            return 0
        return code if code > 0 else 128 - code

    async def _run_once(self, index: int) -> tuple[int, bool]:
        """Start process ``index`` and wait for it to exit: (exit status, was it ready)."""
        ours, theirs = socket.socketpair()
        env = {**os.environ, CHILD_ENV: f"{index}/{self.total}",
               LINK_FD_ENV: str(theirs.fileno())}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, env=env, cwd=self.cwd, pass_fds=(theirs.fileno(),),
                start_new_session=True)
        finally:
            theirs.close()
        self._children[index] = proc
        for sig in self._forwarded:  # a stop came while it was starting
            self._send(proc, sig)
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        ready = asyncio.create_task(loop.sock_recv(ours, 1))
        try:
            code = await proc.wait()
        finally:
            if not ready.done():
                ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
            was_ready = (not ready.cancelled() and ready.exception() is None
                         and ready.result() == READY) or _sent_ready(ours)
            ours.close()
            del self._children[index]
        return code, was_ready


def _sent_ready(link: socket.socket) -> bool:
    """Whether the ready byte waits unread on ``link`` (non-blocking): a process that died
    just after it said it was ready, before the reading task ran, was ready."""
    try:
        return link.recv(1) == READY
    except (BlockingIOError, ConnectionError):
        return False


def parent_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``celery`` with ``argv`` in a new process."""
    return [sys.executable, "-m", "celery", *argv]
