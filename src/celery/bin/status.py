"""``celery status``: is the broker reachable? (Listing workers needs remote control.)"""

from __future__ import annotations

import concurrent.futures

import click

from ..exceptions import ConnectionLost
from ..utils.text import mask_url
from .base import CLIContext, user_error

__all__ = ["status"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-t",
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="How long to wait for the broker [broker_connection_timeout + 1].",
)
@click.pass_obj
def status(obj: CLIContext, timeout: float | None) -> None:
    """Check that the broker answers (exit 0) or not (exit 1)."""
    app = obj.app
    url = mask_url(app.broker_url)
    transport = app.transport
    wait = timeout if timeout is not None else float(app.conf.broker_connection_timeout or 4) + 1
    try:
        app.portal.call(transport.ping(), timeout=wait)
    except ConnectionLost as exc:
        raise user_error(f"broker {url}: unreachable ({exc})") from exc
    except concurrent.futures.TimeoutError as exc:
        raise user_error(f"broker {url}: unreachable (no answer within {wait:g} s)") from exc
    click.echo(f"broker {url}: reachable")
    obj.echo("Listing worker nodes needs remote control, which is not implemented yet.")
