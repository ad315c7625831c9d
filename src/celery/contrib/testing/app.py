"""An app configured for tests, and making it the default app for a while."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ... import _state
from ...app.base import Celery

__all__ = ["DEFAULT_TEST_CONFIG", "Trap", "TestApp", "setup_default_app"]

#: Settings of a test app, as Celery's: in-process broker and results, no logging set-up.
DEFAULT_TEST_CONFIG: dict[str, Any] = {
    "worker_hijack_root_logger": False,
    "accept_content": ["json"],
    "enable_utc": True,
    "timezone": "UTC",
    "broker_url": "memory://",
    "result_backend": "cache+memory://",
}


class Trap:
    """Stands for the default app while a test must not use it (``use_trap=True``): any
    use raises, naming the fixture to depend on instead."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"Test depends on the current app (it read app.{name}): use the "
                           "celery_app fixture, or depend on depends_on_current_app")


def TestApp(name: str | None = None, config: Mapping[str, Any] | None = None,  # noqa: N802
            enable_logging: bool = False, set_as_current: bool = False, log: Any = None,
            backend: str | None = None, broker: str | None = None, **kwargs: Any) -> Celery:
    """A Celery app with ``DEFAULT_TEST_CONFIG`` updated by ``config`` (Celery's name is a
    function too). ``enable_logging`` and ``log`` are accepted for Celery's signature: this
    package sets up no logging for apps, so there is nothing to turn on or off (a warning
    says so when they ask for something)."""
    if enable_logging or log is not None:
        logging.getLogger(__name__).warning(
            "TestApp(enable_logging=..., log=...) has no effect: celery-asyncio sets up no "
            "logging for an app (configure the logging module in your tests instead)")
    settings = dict(DEFAULT_TEST_CONFIG, **(config or {}))
    if broker:
        settings["broker_url"] = broker
    if backend:
        settings["result_backend"] = backend
    return Celery(name or "celery.tests", set_as_current=set_as_current, **settings, **kwargs)


@contextmanager
def setup_default_app(app: Celery, use_trap: bool = False) -> Iterator[None]:
    """Make ``app`` the default app inside the block (a ``Trap`` with ``use_trap``), and
    put back the one before afterwards. Not for tests run in parallel threads: the default
    app is one per process."""
    before = _state.swap_default_app(Trap() if use_trap else app)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _state.swap_default_app(before)
