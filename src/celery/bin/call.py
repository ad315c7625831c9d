"""``celery call``: send a task by name and print its id."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from .base import CLIContext, user_error

__all__ = ["call"]


def _json(kind: type, what: str) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise user_error(f"{param.opts[-1]}: not valid JSON ({exc}): {value!r}") from exc
        if not isinstance(parsed, kind):
            raise user_error(f"{param.opts[-1]}: expected a JSON {what}, got {value!r}")
        return parsed

    return parse


def parse_datetime(value: str, option: str) -> dt.datetime:
    """An ISO 8601 date-time; a naive one is taken as UTC (Celery's default timezone)."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise user_error(f"{option}: not an ISO 8601 date-time: {value!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _eta(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    return None if value is None else parse_datetime(value, "--eta")


def _expires(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return parse_datetime(value, "--expires")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.option(
    "-a",
    "--args",
    callback=_json(list, "array"),
    metavar="JSON",
    help="Positional arguments as a JSON array, e.g. '[2, 2]'.",
)
@click.option(
    "-k",
    "--kwargs",
    callback=_json(dict, "object"),
    metavar="JSON",
    help="Keyword arguments as a JSON object, e.g. '{\"x\": 1}'.",
)
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--eta", callback=_eta, metavar="ISO8601", help="Run no earlier than this time.")
@click.option(
    "--expires",
    callback=_expires,
    metavar="SECONDS|ISO8601",
    help="Discard the task if it has not started by then.",
)
@click.option("--queue", help="Queue to send to (default: the app's routing).")
@click.option("--exchange", help="Exchange to send to (AMQP brokers).")
@click.option("--routing-key", help="Routing key (default: the queue name).")
@click.option("--priority", type=int, help="Message priority.")
@click.option("--serializer", help="Serializer for the arguments (json, msgpack, pickle...).")
@click.pass_obj
def call(
    obj: CLIContext,
    name: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    **options: Any,
) -> None:
    """Send the task NAME to the broker and print its id."""
    app = obj.app
    sent = app.send_task(
        name,
        args=args or [],
        kwargs=kwargs or {},
        **{key: value for key, value in options.items() if value is not None},
    )
    # The id is the command's output, so it is printed even with --quiet.
    click.echo(sent.id)
