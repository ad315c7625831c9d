"""The worker's periodic duties (restoring dead workers' messages, promoting due ETA
messages, checking memory): each runs at once, then every interval, until the worker stops.

A duty that fails is logged and runs again at its next turn: whatever it raised (a broker
outage, a message it could not handle, a bug) never ends it, and so never silently ends the
worker's restores. A broker outage (``ConnectionLost``) is logged once as a warning, then
at debug level until the duty works again; any other error is logged with its traceback the
first time, then in one line each time it repeats, and once more when the duty recovers.

Runs on the consumer's event loop. A duty is never cancelled: it ends at its next turn
after the stop event is set (a restore cut off half-way would hold kombu's ``unacked_mutex``
until the lock expires), so the consumer waits for it, bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import ConnectionLost

__all__ = ["RESTORE_INTERVAL_MAX", "RESTORE_INTERVAL_MIN", "every", "restore_interval"]

logger = logging.getLogger("celery.worker.duties")

#: Bounds of the restore interval, whatever the visibility timeout (seconds).
RESTORE_INTERVAL_MIN = 1.0
RESTORE_INTERVAL_MAX = 60.0


def restore_interval(visibility_timeout: Any) -> float:
    """How often to look for reservations past the visibility timeout: a quarter of it, so
    that a dead worker's message comes back at most 1.25 timeouts after it was taken,
    between RESTORE_INTERVAL_MIN and RESTORE_INTERVAL_MAX (also when the broker has none)."""
    try:
        quarter = float(visibility_timeout) / 4
    except (TypeError, ValueError):
        return RESTORE_INTERVAL_MAX
    if quarter != quarter:  # NaN
        return RESTORE_INTERVAL_MAX
    return min(max(quarter, RESTORE_INTERVAL_MIN), RESTORE_INTERVAL_MAX)


async def every(interval: float, op: Callable[[], Awaitable[Any]], what: str,
                stopped: asyncio.Event) -> None:
    """Run ``op`` now and every ``interval`` seconds until ``stopped`` is set; log what it
    raises (see the module docstring) and go on. Consumer loop."""
    failing = ""  # the last failure's text while the duty keeps failing
    while not stopped.is_set():
        try:
            await op()
        except ConnectionLost as exc:
            if not failing:
                logger.warning("%s: broker unreachable (%s); trying again every %.1f s",
                               what, exc, interval)
            else:
                logger.debug("%s failed again: %s", what, exc)
            failing = str(exc) or "broker unreachable"
        except Exception as exc:
            if not failing:
                logger.exception("%s failed; trying again in %.1f s", what, interval)
            else:
                logger.error("%s failed again: %r; trying again in %.1f s", what, exc, interval)
            failing = repr(exc)
        else:
            if failing:
                logger.info("%s works again", what)
                failing = ""
        try:
            await asyncio.wait_for(stopped.wait(), interval)
        except TimeoutError:
            pass
