"""``celery beat``: send periodic tasks (celery/beat/). Several may run: one sends."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .base import CLIContext, user_error
from .worker import logfile_option, loglevel_option, setup_logging

__all__ = ["beat"]


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be more than 0 seconds")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-s",
    "--schedule",
    "schedule_filename",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The state file: when each entry last ran (SQLite) [beat_schedule_filename, "
         "default celerybeat-schedule].",
)
@click.option(
    "-S",
    "--scheduler",
    metavar="MODULE:CLASS",
    help="Scheduler class [beat_scheduler, default celery.beat:PersistentScheduler].",
)
@click.option(
    "--max-interval",
    type=float,
    callback=_positive,
    metavar="SECONDS",
    help="Most seconds between two looks at the schedule [beat_max_loop_interval, 300].",
)
@loglevel_option
@logfile_option
@click.pass_obj
def beat(obj: CLIContext, schedule_filename: str | None, scheduler: str | None,
         max_interval: float | None, loglevel: int, logfile: str | None) -> None:
    """Start beat: send the periodic tasks of beat_schedule and add_periodic_task."""
    from ..beat import Service

    app = obj.app
    setup_logging(app, loglevel, logfile)
    service = Service(app, max_interval=max_interval, schedule_filename=schedule_filename,
                      scheduler_cls=scheduler)
    if not obj.quiet:
        click.echo(banner(app, service))

    def on_signal(signum: int, frame: Any) -> None:
        service.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        service.start()
    except Exception as exc:
        from ..exceptions import CeleryError

        if isinstance(exc, CeleryError | ImportError):
            text = str(exc)
            raise user_error(text if text.startswith("beat:") else f"beat: {text}") from exc
        raise
    sys.exit(0)


def banner(app: Any, service: Any) -> str:
    from ..utils.text import mask_url

    return "\n".join([
        "celery beat (celery-asyncio) is starting.",
        f". broker -> {mask_url(app.broker_url)}",
        f". scheduler -> {service.scheduler_cls if isinstance(service.scheduler_cls, str) else service.scheduler_cls.__name__}",
        f". db -> {service.schedule_filename}",
        f". maxinterval -> {service.max_interval or app.conf.beat_max_loop_interval or 300}s",
    ])
