"""Celery's pytest fixtures: ``celery_app`` and ``celery_worker`` per test, their session-wide
``celery_session_app`` and ``celery_session_worker``, and the fixtures that configure them
(``celery_config``, ``celery_parameters``, ``celery_includes``, ``celery_worker_pool``,
``celery_worker_parameters``, ``celery_enable_logging``, ``celery_class_tasks``,
``use_celery_app_trap``), plus the ``@pytest.mark.celery(**settings)`` marker.

Registered as the pytest plugin ``celery`` (an entry point), so the fixtures are there in
any test run once this package is installed. The app defaults to the in-process ``memory://``
broker and ``cache+memory://`` backend, and the worker runs in a thread of the test process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from .testing.app import TestApp, setup_default_app

__all__ = [
    "celery_app", "celery_class_tasks", "celery_config", "celery_enable_logging",
    "celery_includes", "celery_parameters", "celery_session_app", "celery_session_worker",
    "celery_worker", "celery_worker_parameters", "celery_worker_pool",
    "depends_on_current_app", "use_celery_app_trap",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "celery(**overrides): override celery configuration for a test case")


@contextmanager
def _create_app(request: pytest.FixtureRequest, config: Mapping[str, Any],
                parameters: Mapping[str, Any], enable_logging: bool,
                use_trap: bool) -> Iterator[Any]:
    mark = request.node.get_closest_marker("celery")
    settings = dict(config, **(mark.kwargs if mark else {}))
    app = TestApp(config=settings, enable_logging=enable_logging, set_as_current=False,
                  **parameters)
    try:
        with setup_default_app(app, use_trap=use_trap):
            yield app
    finally:
        app.close()


def _import_includes(includes: Sequence[str]) -> None:
    import importlib

    for module in includes:
        importlib.import_module(module)


@pytest.fixture(scope="session")
def use_celery_app_trap() -> bool:
    """Override to return True: any use of the default app (not ``celery_app``) raises."""
    return False


@pytest.fixture(scope="session")
def celery_enable_logging() -> bool:
    """Override to return True to keep logging as the app would set it up."""
    return False


@pytest.fixture(scope="session")
def celery_includes() -> Sequence[str]:
    """Override with the modules of tasks the worker fixtures import first."""
    return ()


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    """Override to choose the worker fixtures' pool (``"solo"`` or ``"threads"``)."""
    return "solo"


@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    """Override with the settings of the fixtures' app."""
    return {}


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    """Override with more arguments for the fixtures' ``Celery(...)``."""
    return {}


@pytest.fixture(scope="session")
def celery_worker_parameters() -> Mapping[str, Any]:
    """Override with more arguments for the worker fixtures' ``start_worker``."""
    return {}


@pytest.fixture(scope="session")
def celery_class_tasks() -> Sequence[Any]:
    """Override with task classes to register on the session app."""
    return []


@pytest.fixture(scope="session")
def celery_session_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
                       celery_parameters: Mapping[str, Any], celery_enable_logging: bool,
                       use_celery_app_trap: bool) -> Iterator[Any]:
    """An app for the whole session (the default app too, unless the trap is on)."""
    with _create_app(request, celery_config, celery_parameters, celery_enable_logging,
                     use_celery_app_trap) as app:
        if not use_celery_app_trap:
            app.set_default()
        yield app


@pytest.fixture(scope="session")
def celery_session_worker(celery_session_app: Any, celery_includes: Sequence[str],
                          celery_class_tasks: Sequence[Any], celery_worker_pool: str,
                          celery_worker_parameters: Mapping[str, Any]) -> Iterator[Any]:
    """A worker of ``celery_session_app`` that runs for the whole session."""
    from .testing import tasks  # noqa: F401 - celery.ping, for the ping check
    from .testing.worker import start_worker

    _import_includes(celery_includes)
    for task in celery_class_tasks:
        celery_session_app.register_task(task)
    with start_worker(celery_session_app, pool=celery_worker_pool,
                      **celery_worker_parameters) as worker:
        yield worker


@pytest.fixture
def celery_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
               celery_parameters: Mapping[str, Any], celery_enable_logging: bool,
               use_celery_app_trap: bool) -> Iterator[Any]:
    """An app for this test: ``celery_config`` updated by ``@pytest.mark.celery(...)``."""
    with _create_app(request, celery_config, celery_parameters, celery_enable_logging,
                     use_celery_app_trap) as app:
        yield app


@pytest.fixture
def celery_worker(celery_app: Any, celery_includes: Sequence[str], celery_worker_pool: str,
                  celery_worker_parameters: Mapping[str, Any]) -> Iterator[Any]:
    """A worker of ``celery_app`` in a thread, stopped when the test returns."""
    from .testing import tasks  # noqa: F401 - celery.ping, for the ping check
    from .testing.worker import start_worker

    _import_includes(celery_includes)
    with start_worker(celery_app, pool=celery_worker_pool,
                      **celery_worker_parameters) as worker:
        yield worker


@pytest.fixture
def depends_on_current_app(celery_app: Any) -> None:
    """Make ``celery_app`` the current app for this test."""
    celery_app.set_current()
