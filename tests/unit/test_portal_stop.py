"""Stopping the portal while other threads wait on it (app.close() under Flower's threads)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from celery.exceptions import CeleryError
from celery.utils.portal import Portal


def test_a_call_waiting_when_the_portal_stops_fails_at_once_with_a_clear_error() -> None:
    portal = Portal("test-portal")
    started = threading.Event()
    outcome: list[BaseException | object] = []

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    def caller() -> None:
        try:
            outcome.append(portal.call(forever()))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(5)
    begun = time.monotonic()
    portal.stop()
    thread.join(5)
    assert not thread.is_alive(), "the caller still waits on a stopped portal"
    assert time.monotonic() - begun < 4
    (error,) = outcome
    assert isinstance(error, CeleryError), repr(error)
    assert "test-portal was stopped" in str(error)


def test_the_portal_starts_again_after_a_stop() -> None:
    portal = Portal("test-portal-again")

    async def two() -> int:
        return 2

    assert portal.call(two()) == 2
    portal.stop()
    assert portal.call(two(), timeout=5) == 2
    portal.stop()


def test_a_cancelled_call_that_is_not_a_stop_stays_a_cancellation() -> None:
    portal = Portal("test-portal-cancel")

    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    import concurrent.futures

    with pytest.raises(concurrent.futures.CancelledError):
        portal.call(cancels_itself(), timeout=5)
    portal.stop()
