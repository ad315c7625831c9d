"""``celery inspect``, ``celery control`` and ``celery status``: remote control from the
command line, with Celery's actions, arguments, options and output."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from typing import Any

import click

from ..exceptions import CeleryError, ConnectionLost
from ..utils.text import mask_url
from .base import CLIContext, user_error

__all__ = ["control", "inspect", "status"]

NO_REPLIES = "No nodes replied within time constraint"


def _nothing(args: tuple[str, ...]) -> dict[str, Any]:
    if args:
        raise click.UsageError(f"this action takes no arguments (got {' '.join(args)})")
    return {}


def _ids(name: str) -> Callable[[tuple[str, ...]], dict[str, Any]]:
    def convert(args: tuple[str, ...]) -> dict[str, Any]:
        if not args:
            raise click.UsageError("give at least one task id")
        return {name: list(args)}
    return convert


def _terminate(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) < 2:
        raise click.UsageError("usage: terminate SIGNAL ID [ID...]")
    return {"signal": args[0], "task_id": list(args[1:])}


def _rate_limit(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) != 2:
        raise click.UsageError("usage: rate_limit TASK_NAME RATE (e.g. 10/s, 100/m, 0 for none)")
    return {"task_name": args[0], "rate_limit": args[1]}


def _time_limit(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) not in (2, 3):
        raise click.UsageError("usage: time_limit TASK_NAME SOFT_SECONDS [HARD_SECONDS]")
    try:
        limits = [float(a) for a in args[1:]]
    except ValueError:
        raise click.UsageError("time limits are numbers of seconds") from None
    return {"task_name": args[0], "soft": limits[0], "hard": limits[1] if len(limits) > 1 else None}


def _queue(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) != 1:
        raise click.UsageError("usage: add_consumer|cancel_consumer QUEUE")
    return {"queue": args[0]}


def _pool(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) > 2 or (len(args) == 2 and args[1] not in ("threads", "loop")):
        raise click.UsageError("usage: pool_grow|pool_shrink [N=1] [threads|loop]")
    try:
        arguments: dict[str, Any] = {"n": int(args[0]) if args else 1}
    except ValueError:
        raise click.UsageError(f"N is a whole number, not {args[0]!r}") from None
    if len(args) == 2:
        arguments["pool"] = args[1]
    return arguments


def _autoscale(args: tuple[str, ...]) -> dict[str, Any]:
    if len(args) not in (1, 2):
        raise click.UsageError("usage: autoscale MAX [MIN]")
    try:
        numbers = [int(a) for a in args]
    except ValueError:
        raise click.UsageError("MAX and MIN are whole numbers") from None
    return {"max": numbers[0], "min": numbers[1] if len(numbers) > 1 else None}


#: Action name -> how its command-line arguments become the command's arguments.
INSPECT_ACTIONS: dict[str, Callable[[tuple[str, ...]], dict[str, Any]]] = {
    "ping": _nothing, "stats": _nothing, "active": _nothing, "reserved": _nothing,
    "scheduled": _nothing, "revoked": _nothing, "registered": _nothing,
    "active_queues": _nothing, "conf": _nothing, "report": _nothing, "clock": _nothing,
    "query_task": _ids("ids"),
}
CONTROL_ACTIONS: dict[str, Callable[[tuple[str, ...]], dict[str, Any]]] = {
    "revoke": _ids("task_id"), "terminate": _terminate, "rate_limit": _rate_limit,
    "time_limit": _time_limit, "shutdown": _nothing, "add_consumer": _queue,
    "cancel_consumer": _queue, "pool_grow": _pool, "pool_shrink": _pool,
    "autoscale": _autoscale,
}


def _destination(value: str | None) -> list[str] | None:
    return [d.strip() for d in value.split(",") if d.strip()] if value else None


def broadcast(obj: CLIContext, action: str, arguments: dict[str, Any], timeout: float,
              destination: list[str] | None, reply: bool = True) -> list[dict[str, Any]]:
    """Send one command; the replies. One-line errors for a broker that is down or that
    cannot carry remote control."""
    app = obj.app
    try:
        replies = app.control.broadcast(action, arguments, destination=destination, reply=reply,
                                        timeout=timeout)
    except ConnectionLost as exc:
        raise user_error(f"broker {mask_url(app.broker_url)}: unreachable ({exc})") from exc
    except concurrent.futures.TimeoutError as exc:
        raise user_error(f"broker {mask_url(app.broker_url)}: no answer") from exc
    except CeleryError as exc:
        raise user_error(str(exc)) from exc
    return replies or []


def show(replies: list[dict[str, Any]], as_json: bool, quiet: bool) -> None:
    """Print replies as Celery does: ``->  node: OK`` and the reply indented, or JSON."""
    nodes: dict[str, Any] = {}
    for reply in replies:
        nodes.update(reply)
    if as_json:
        click.echo(json.dumps(nodes, default=repr))
        return
    for node, value in nodes.items():
        failed = isinstance(value, dict) and "error" in value and len(value) == 1
        click.echo(f"->  {node}: {'ERROR' if failed else 'OK'}")
        if quiet:
            continue
        if isinstance(value, dict) and len(value) == 1 and ("ok" in value or "error" in value):
            text = str(next(iter(value.values())))
        elif isinstance(value, list):
            text = "\n".join(f"* {json.dumps(v, default=repr) if not isinstance(v, str) else v}"
                             for v in value) or "- empty -"
        else:
            text = json.dumps(value, indent=4, default=repr)
        for line in text.splitlines():
            click.echo(f"    {line}")


def _remote_command(actions: dict[str, Any] | None) -> Callable[[Callable[..., None]], Any]:
    """The click command of a remote-control CLI function: an ACTION and its ARGS when
    ``actions`` is given, and the options ``-t/--timeout``, ``-d/--destination``, ``-j/--json``."""
    def decorate(fn: Callable[..., None]) -> Any:
        for option in (
            click.option("-j", "--json", "as_json", is_flag=True, help="Print replies as JSON."),
            click.option("-d", "--destination", metavar="NODE[,NODE]",
                         help="Only these workers (node names, comma separated)."),
            click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                         help="Seconds to wait for replies."),
        ):
            fn = option(fn)
        if actions is not None:
            fn = click.argument("args", nargs=-1)(fn)
            fn = click.argument("action", type=click.Choice(sorted(actions)))(fn)
        return click.command(context_settings={"help_option_names": ["-h", "--help"]})(
            click.pass_obj(fn))
    return decorate


@_remote_command(INSPECT_ACTIONS)
def inspect(obj: CLIContext, action: str, args: tuple[str, ...], timeout: float,
            destination: str | None, as_json: bool) -> None:
    """Ask the workers about themselves (ping, stats, active, reserved, scheduled, revoked,
    registered, active_queues, query_task ID..., conf, report, clock)."""
    arguments = INSPECT_ACTIONS[action](args)
    replies = broadcast(obj, action, arguments, timeout, _destination(destination))
    if not replies:
        raise user_error(NO_REPLIES)
    show(replies, as_json, obj.quiet)
    if not as_json:
        obj.echo(f"{len(replies)} {'node' if len(replies) == 1 else 'nodes'} online.")


@_remote_command(CONTROL_ACTIONS)
def control(obj: CLIContext, action: str, args: tuple[str, ...], timeout: float,
            destination: str | None, as_json: bool) -> None:
    """Tell the workers to do something: revoke ID..., terminate SIGNAL ID..., rate_limit
    TASK RATE, time_limit TASK SOFT [HARD], add_consumer QUEUE, cancel_consumer QUEUE,
    shutdown."""
    arguments = CONTROL_ACTIONS[action](args)
    wants_reply = action != "shutdown"  # a worker that shuts down does not answer
    replies = broadcast(obj, action, arguments, timeout, _destination(destination), wants_reply)
    if not wants_reply:
        obj.echo("shutdown sent")
        return
    if not replies:
        raise user_error(NO_REPLIES)
    show(replies, as_json, obj.quiet)


@_remote_command(None)
def status(obj: CLIContext, timeout: float, destination: str | None, as_json: bool) -> None:
    """List the workers that answer a ping (exit 1 if none does, or the broker is down)."""
    app = obj.app
    url = mask_url(app.broker_url)
    wait = max(timeout, float(app.conf.broker_connection_timeout or 4) + 1)
    try:
        app.portal.call(app.transport.ping(), timeout=wait)
    except ConnectionLost as exc:
        raise user_error(f"broker {url}: unreachable ({exc})") from exc
    except concurrent.futures.TimeoutError as exc:
        raise user_error(f"broker {url}: unreachable (no answer within {wait:g} s)") from exc
    replies = broadcast(obj, "ping", {}, timeout, _destination(destination))
    if not replies:
        raise user_error(f"{NO_REPLIES} (broker {url} is reachable)")
    show(replies, as_json, quiet=True)
    if not as_json:
        obj.echo(f"\n{len(replies)} {'node' if len(replies) == 1 else 'nodes'} online.")
