"""``celery result``: wait for a task's result and print it."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import states
from ..exceptions import TimeoutError as CeleryTimeoutError
from .base import CLIContext, user_error

__all__ = ["result"]


def render(value: Any) -> str:
    """Strings as they are, JSON-able values as JSON, anything else as its repr."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task_id")
@click.option("-t", "--task", metavar="NAME", help="Name of the task (accepted; not needed).")
@click.option("--traceback", is_flag=True, help="Print the traceback of a failed task instead.")
@click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="Give up after this many seconds [wait forever].",
)
@click.pass_obj
def result(
    obj: CLIContext, task_id: str, task: str | None, traceback: bool, timeout: float | None
) -> None:
    """Wait for the result of TASK_ID and print it."""
    app = obj.app
    handle = app.AsyncResult(task_id, task_name=task)
    try:
        value = handle.get(timeout=timeout, propagate=False)
    except NotImplementedError as exc:  # DisabledBackend: nothing to read from
        raise user_error(str(exc)) from exc
    except CeleryTimeoutError as exc:
        raise user_error(
            f"task {task_id} is not ready after {timeout:g} s (state {handle.state})"
        ) from exc
    state = handle.state
    if traceback:
        click.echo(handle.traceback or "")
        return
    if state in states.PROPAGATE_STATES:
        reason = (
            f"{type(value).__name__}: {value}"
            if isinstance(value, BaseException)
            else render(value)
        )
        raise user_error(f"task {task_id} ended in state {state}: {reason}")
    click.echo(render(value))
