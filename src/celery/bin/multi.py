"""``celery multi start|stop|stopwait|restart|kill|show|names NODES [worker options]``:
several detached workers on this machine, each with its pidfile and logfile, as Celery's.

``NODES`` is a count (``3``: ``celery1`` .. ``celery3``) or names (``w1 w2``); each runs
``celery worker -n NAME@%h --detach --pidfile=... --logfile=...`` plus the options given.
``--pidfile`` (default ``%n.pid``) and ``--logfile`` (default ``%n%I.log``) expand ``%n``
(the node's name), ``%h`` (its host), ``%p`` (the whole node name), ``%d`` and ``%i``/``%I``
(``supervisor.node_format``); stop and friends find the workers through those pidfiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import click

from .base import user_error
from .pidfile import PidfileError, pid_alive, read_pid
from .supervisor import node_format

__all__ = ["multi"]

ACTIONS = ("start", "stop", "stopwait", "restart", "kill", "show", "names")
#: Options of the ``celery`` command itself, with a value: they go before ``worker``.
_GLOBAL = ("-A", "--app", "-b", "--broker", "--result-backend", "--config", "--workdir")


class Node:
    def __init__(self, name: str, pidfile: str, logfile: str, argv: list[str]) -> None:
        from ..worker.worker import expand_hostname

        self.name = name
        self.nodename = expand_hostname(f"{name}@%h")
        self.pidfile = os.path.abspath(node_format(pidfile, self.nodename))
        self.logfile = os.path.abspath(node_format(logfile, self.nodename))
        self.argv = argv

    def command(self, globals_: list[str]) -> list[str]:
        return [sys.executable, "-m", "celery", *globals_, "worker", "-n", self.nodename,
                "--detach", f"--pidfile={self.pidfile}", f"--logfile={self.logfile}",
                *self.argv]

    def pid(self) -> int | None:
        try:
            return read_pid(self.pidfile)
        except PidfileError:
            return None


def _take(args: list[str], names: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split ``args`` into the options ``names`` (each ``-x V`` or ``--x=V``), as
    ``(flag, value)`` in order, and the rest."""
    taken: list[tuple[str, str]] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in names:
            if not eq:
                if i + 1 >= len(args):
                    raise click.UsageError(f"{flag} needs a value")
                i += 1
                value = args[i]
            taken.append((flag, value))
        else:
            rest.append(args[i])
        i += 1
    return taken, rest


def parse(args: list[str]) -> tuple[list[Node], list[str]]:
    """The nodes of ``NODES [options]`` and the ``celery`` options that go before
    ``worker``."""
    names: list[str] = []
    while args and not args[0].startswith("-"):
        names.append(args.pop(0))
    if len(names) == 1 and names[0].isdigit():
        names = [f"celery{i}" for i in range(1, int(names[0]) + 1)]
    if not names:
        raise click.UsageError("Name the workers: a count (celery multi start 3) or names "
                               "(celery multi start w1 w2)")
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and ":" in flag:
            raise click.UsageError(f"{flag}: options for one node (-c:w1 4) are not "
                                   "supported; run celery multi once per set of options")
    globals_, args = _take(args, _GLOBAL)
    pidfiles, args = _take(args, ("--pidfile",))
    logfiles, args = _take(args, ("-f", "--logfile"))
    for option in ("-n", "--hostname", "-D", "--detach"):
        if option in [a.split("=", 1)[0] for a in args]:
            raise click.UsageError(f"{option} is set by celery multi for each node")
    pidfile = pidfiles[-1][1] if pidfiles else "%n.pid"
    logfile = logfiles[-1][1] if logfiles else "%n%I.log"
    nodes = [Node(n, pidfile, logfile, args) for n in names]
    return nodes, [token for pair in globals_ for token in pair]


def _global_args(ctx: click.Context) -> list[str]:
    """The ``celery`` group's own options given before ``multi`` (-A, -b, ...)."""
    obj = ctx.obj
    out: list[str] = []
    for flag, value in (("-A", obj.app_spec), ("-b", obj.broker),
                        ("--result-backend", obj.result_backend), ("--config", obj.config)):
        if value:
            out += [flag, value]
    return out


def _start(node: Node, globals_: list[str]) -> bool:
    for path in (node.pidfile, node.logfile):  # as Celery's: their folders are made
        os.makedirs(os.path.dirname(path), exist_ok=True)
    pid = node.pid()
    if pid is not None and pid_alive(pid):
        click.echo(f"> {node.nodename}: already running (pid {pid})")
        return True
    done = subprocess.run(node.command(globals_), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        click.echo(f"> {node.nodename}: FAILED ({reason[-1] if reason else done.returncode})")
        return False
    click.echo(f"> {node.nodename}: OK (pidfile {node.pidfile})")
    return True


def _signal(node: Node, sig: signal.Signals) -> int | None:
    """Send ``sig`` to the node's worker; its pid, or None if it does not run."""
    pid = node.pid()
    if pid is None:
        click.echo(f"> {node.nodename}: not running (no pidfile {node.pidfile})")
        return None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        click.echo(f"> {node.nodename}: not running (stale pidfile removed)")
        try:
            os.unlink(node.pidfile)
        except FileNotFoundError:
            pass
        return None
    click.echo(f"> {node.nodename}: {sig.name} sent to pid {pid}")
    return pid


def _wait_gone(pids: dict[str, int]) -> None:
    while pids:
        for name, pid in list(pids.items()):
            if not pid_alive(pid):
                click.echo(f"> {name}: stopped")
                del pids[name]
        time.sleep(0.1)


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "ignore_unknown_options": True,
                                 "allow_extra_args": True})
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def multi(ctx: click.Context, action: str, args: tuple[str, ...]) -> None:
    """Start, stop or restart several detached workers (NODES: a count or names; the
    other options go to each worker)."""
    nodes, globals_ = parse(list(args))
    globals_ = _global_args(ctx) + globals_
    if action == "names":
        for node in nodes:
            click.echo(node.nodename)
        return
    if action == "show":
        for node in nodes:
            click.echo(" ".join(node.command(globals_)))
        return
    if action in ("stop", "stopwait", "restart", "kill"):
        sig = signal.SIGKILL if action == "kill" else signal.SIGTERM
        pids = {n.nodename: pid for n in nodes if (pid := _signal(n, sig)) is not None}
        if action == "kill":
            for node in nodes:
                try:
                    os.unlink(node.pidfile)
                except FileNotFoundError:
                    pass
        if action in ("stopwait", "restart"):
            _wait_gone(pids)
        if action != "restart":
            return
    failed = [n.nodename for n in nodes if not _start(n, globals_)]
    if failed:
        raise user_error(f"{len(failed)} of {len(nodes)} workers did not start: "
                         f"{', '.join(failed)}")
