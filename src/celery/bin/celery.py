"""The ``celery`` command group and its entry point, ``main``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import VERSION_BANNER
from ..app.base import Celery
from .base import CeleryGroup, CLIContext
from .beat import beat
from .bench import bench
from .call import call
from .capacity import capacity
from .control import control, inspect, status
from .events import events
from .multi import multi
from .purge import purge
from .result import result
from .shell import report, shell
from .worker import worker

__all__ = ["celery", "main"]


def _chdir(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Runs while parsing, before any command loads the app, so imports see the new cwd.
    if value:
        try:
            os.chdir(value)
        except OSError as exc:
            raise click.BadParameter(f"cannot change to {value!r}: {exc.strerror}") from exc
    return value


@click.group(cls=CeleryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="APP",
    metavar="MODULE",
    help="The application: 'module', 'module:attr' or 'module.attr'.",
)
@click.option(
    "-b",
    "--broker",
    envvar="BROKER_URL",
    metavar="URL",
    help="Broker URL (overrides the app's broker_url).",
)
@click.option(
    "--result-backend",
    envvar="RESULT_BACKEND",
    metavar="URL",
    help="Result backend URL (overrides the app's result_backend).",
)
@click.option("--loader", envvar="LOADER", hidden=True, help="Accepted for compatibility; ignored.")
@click.option(
    "--config",
    envvar="CONFIG_MODULE",
    metavar="MODULE",
    help="Module to read settings from (app.config_from_object).",
)
@click.option(
    "--workdir",
    callback=_chdir,
    is_eager=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Change to this directory first.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print less.")
@click.option("--no-color", is_flag=True, help="Accepted for compatibility (no colors are used).")
@click.version_option(VERSION_BANNER, "--version", message="%(version)s")
@click.pass_context
def celery(
    ctx: click.Context,
    app_spec: str | None,
    broker: str | None,
    result_backend: str | None,
    loader: str | None,
    config: str | None,
    workdir: str | None,
    quiet: bool,
    no_color: bool,
) -> None:
    """Celery command entry point (celery-asyncio)."""
    # main(app=...) hands its app over as ctx.obj.
    preset = ctx.obj if isinstance(ctx.obj, Celery) else None
    obj = CLIContext(
        app=preset,
        app_spec=app_spec,
        broker=broker,
        result_backend=result_backend,
        config=config,
        quiet=quiet,
    )
    ctx.obj = obj
    ctx.call_on_close(obj.close)


for _command in (worker, beat, call, result, purge, status, inspect, control, bench, capacity,
                 events, multi, shell, report):
    celery.add_command(_command)


#: The arguments of this process's ``celery`` command (``main`` sets it).
MAIN_ARGV: list[str] | None = None
#: The directory the command started in, before ``--workdir``: where a worker process the
#: supervisor starts runs the same arguments again.
MAIN_CWD: str | None = None


def main(argv: Sequence[str] | None = None, app: Celery | None = None) -> Any:
    """Run the ``celery`` command line (``argv`` defaults to ``sys.argv[1:]``).

    With ``app``, that application is used instead of one found through ``-A``.
    Exits the process, as command-line programs do.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    global MAIN_ARGV, MAIN_CWD
    MAIN_ARGV = list(args)  # set once, before any thread starts: what a recycled worker reruns
    MAIN_CWD = os.getcwd()
    return celery.main(args=args, prog_name="celery", obj=app)


if __name__ == "__main__":  # pragma: no cover
    main()
