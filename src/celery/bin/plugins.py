"""Commands other packages add to ``celery`` through the ``celery.commands`` entry points.

Celery's plugin mechanism, kept: a distribution declares, for example,
``[project.entry-points."celery.commands"] flower = "flower.command:flower"`` and
``celery flower`` runs that click command. Entry points are read when the ``celery`` group
lists or looks up a command it does not have itself, and a plugin module is imported only
when its command is needed (``celery worker`` never imports Flower). A plugin that cannot
be imported, or is not a click command, becomes a stand-in command that fails with one
``Error:`` line naming the plugin and the reason; the rest of the CLI keeps working.
Our own commands win over a plugin of the same name.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

import click

__all__ = ["ENTRY_POINT_GROUP", "load_plugin", "plugin_entry_points"]

logger = logging.getLogger("celery.bin.plugins")

#: The entry-point group Celery reads command plugins from.
ENTRY_POINT_GROUP = "celery.commands"


def plugin_entry_points() -> dict[str, EntryPoint]:
    """The ``celery.commands`` entry points installed, by command name (the first wins
    when two distributions declare the same name)."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def load_plugin(entry_point: EntryPoint) -> click.Command:
    """Import the plugin's command; a stand-in that fails with one line if that fails."""
    try:
        command = entry_point.load()
    except Exception as exc:
        return _broken(entry_point, f"importing it raised {type(exc).__name__}: {exc}")
    if not isinstance(command, click.Command):
        return _broken(entry_point, f"it is a {type(command).__name__}, not a click command")
    return command


def _broken(entry_point: EntryPoint, reason: str) -> click.Command:
    reason = " ".join(reason.split())
    message = (f"the {entry_point.name!r} command (plugin {entry_point.value}) "
               f"could not be loaded: {reason}")
    logger.debug("celery plugin: %s", message)

    def fail(**_: Any) -> NoReturn:
        raise click.ClickException(message)

    return click.Command(
        entry_point.name,
        callback=fail,
        help=f"(plugin {entry_point.value}: could not be loaded: {reason})",
        short_help="(plugin could not be loaded; run it for the reason)",
        # Whatever the plugin's own options are, the user gets the reason, not a usage error.
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
