"""``celery events --dump``: print every event the cluster publishes, one line each.

Upstream's ``celery events`` without ``--dump`` starts a curses monitor, and ``--camera``
takes snapshots; neither exists here, so the command asks for ``--dump``.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import click

from .base import CLIContext, user_error

__all__ = ["events"]

#: Seconds between attempts to subscribe again after the broker connection was lost.
RECONNECT_INTERVAL = 1.0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "--dump", is_flag=True,
              help="Print each event as a line of text until SIGINT/SIGTERM (required: "
                   "the curses monitor is not implemented).")
@click.pass_obj
def events(obj: CLIContext, dump: bool) -> None:
    """Watch the events workers and clients publish (upstream workers started with -E;
    our worker sends none yet)."""
    if not dump:
        raise user_error("only 'celery events --dump' is supported here "
                         "(the curses monitor and cameras are not implemented)")
    from ..events.dumper import Dumper
    from ..exceptions import CeleryError, ConnectionLost

    app = obj.app
    dumper = Dumper(out=sys.stdout)
    receiver = app.events.Receiver(None, handlers={"*": dumper.on_event})

    def on_signal(signum: int, frame: Any) -> None:
        receiver.should_stop = True  # the capture ends within its poll interval

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    dumper.say("-> evdump: starting capture...")
    while not receiver.should_stop:
        try:
            receiver.capture(limit=None, timeout=None, wakeup=True)
        except ConnectionLost as exc:
            dumper.say(f"-> Connection lost, attempting reconnect ({exc})")
            time.sleep(RECONNECT_INTERVAL)
        except CeleryError as exc:
            raise user_error(f"events: {exc}") from exc
    sys.exit(0)
