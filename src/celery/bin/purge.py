"""``celery purge``: delete every waiting message from the app's task queues."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from ..utils.text import pluralize
from .base import CLIContext

__all__ = ["known_queues", "purge"]


def _split(values: Iterable[str]) -> list[str]:
    return [q.strip() for item in values for q in item.split(",") if q.strip()]


def known_queues(conf: Any) -> list[str]:
    """Names of the queues the app declares (``task_queues``) plus its default queue."""
    names: list[str] = []
    declared = conf.task_queues or ()
    if isinstance(declared, dict):
        declared = declared.keys()
    for queue in declared:
        name = queue if isinstance(queue, str) else getattr(queue, "name", None)
        if name and name not in names:
            names.append(name)
    if conf.task_default_queue not in names:
        names.append(conf.task_default_queue)
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "-Q",
    "--queues",
    multiple=True,
    metavar="QUEUE[,QUEUE]",
    help="Purge only these queues (comma separated).",
)
@click.option(
    "-X",
    "--exclude-queues",
    multiple=True,
    metavar="QUEUE[,QUEUE]",
    help="Do not purge these queues (comma separated).",
)
@click.pass_obj
def purge(
    obj: CLIContext, force: bool, queues: tuple[str, ...], exclude_queues: tuple[str, ...]
) -> None:
    """Delete all waiting task messages. There is no undo."""
    app = obj.app
    names = _split(queues) or known_queues(app.conf)
    excluded = set(_split(exclude_queues))
    names = [name for name in names if name not in excluded]
    if not names:
        click.echo("No queues to purge.")
        return
    if not force:
        listing = ", ".join(names)
        click.confirm(
            f"This deletes every waiting message in {len(names)} "
            f"{pluralize(len(names), 'queue')} ({listing}); there is no undo. Continue?",
            abort=True,
        )
    transport = app.transport
    count = sum(app.portal.call(transport.purge(name)) for name in names)
    queue_word = pluralize(len(names), "queue")
    if count:
        click.echo(
            f"Purged {count} {pluralize(count, 'message')} from "
            f"{len(names)} known task {queue_word}."
        )
    else:
        click.echo(f"No messages purged from {len(names)} {queue_word}.")
