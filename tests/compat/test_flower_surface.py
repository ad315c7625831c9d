"""What Flower 2.2 imports and calls from ``celery``, checked without Flower installed.

The names are those Flower 2.2.0's modules import from ``celery`` at import time; a missing
one stops ``celery flower`` before it starts. The calls are those its web pages and API make
on the app (tests/integration/test_flower_browser.py runs the real Flower).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery import Celery
from celery.exceptions import CeleryError, ConnectionLost, ImproperlyConfigured

#: (module, name) pairs imported by flower 2.2.0 (command.py, events.py, api/tasks.py,
#: utils/blocking.py, utils/template.py, views/auth.py, __main__.py).
FLOWER_IMPORTS = [
    ("celery", "Celery"),
    ("celery", "current_app"),
    ("celery", "states"),
    ("celery.bin.base", "CeleryCommand"),
    ("celery.bin.celery", "celery"),
    ("celery.bin.celery", "main"),
    ("celery.events", "EventReceiver"),
    ("celery.events.state", "State"),
    ("celery.result", "AsyncResult"),
    ("celery.backends.base", "DisabledBackend"),
    ("celery.contrib.abortable", "AbortableAsyncResult"),
    ("celery.exceptions", "TimeoutError"),
    ("celery.exceptions", "BackendError"),
    ("celery.utils.imports", "instantiate"),
]


@pytest.mark.parametrize(("module", "name"), FLOWER_IMPORTS)
def test_every_name_flower_imports_exists(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_backend_errors_sit_in_our_tree() -> None:
    from celery.exceptions import BackendError, BackendGetMetaError, BackendStoreError

    assert issubclass(BackendGetMetaError, BackendError)
    assert issubclass(BackendStoreError, BackendError)
    assert issubclass(BackendError, CeleryError)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    app = Celery("flowersurface", broker="memory://flower-surface",
                 backend=f"db+sqlite:///{tmp_path}/results.db", set_as_current=False)
    yield app
    app.close()


def test_loader_imports_the_include_modules_and_finalizes(app: Celery, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flower_surface_tasks.py").write_text(
        "from celery import shared_task\n\n@shared_task(name='surface.ping')\n"
        "def ping():\n    return 'pong'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app.conf.include = ("flower_surface_tasks",)
    try:
        modules = app.loader.import_default_modules()
        assert [m.__name__ for m in modules] == ["flower_surface_tasks"]
        assert "surface.ping" in app.tasks
    finally:
        sys.modules.pop("flower_surface_tasks", None)


@pytest.mark.parametrize(("url", "driver_type"), [
    ("redis://localhost:6379/0", "redis"), ("rediss://localhost:6380/0", "redis"),
    ("amqp://guest@localhost//", "amqp"), ("amqps://localhost//", "amqp"),
    ("sqlite:///broker.db", "sqlite"), ("memory://x", "memory"),
])
def test_connection_names_its_transport_as_kombu_does(url: str, driver_type: str) -> None:
    app = Celery("conn", broker=url, set_as_current=False)
    with app.connection() as conn:
        assert conn.transport.driver_type == driver_type
        assert conn.transport.driver_name == url.split(":", 1)[0]
        assert ConnectionLost in conn.recoverable_connection_errors
        assert ConnectionLost in conn.connection_errors


def test_broker_use_ssl_is_refused_not_ignored() -> None:
    app = Celery("tls", broker="redis://localhost:6379/0", set_as_current=False)
    assert app.conf.broker_use_ssl is None  # Flower reads it
    app.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}
    with pytest.raises(ImproperlyConfigured, match="rediss://"):
        app.transport  # noqa: B018


def test_instantiate_and_symbol_by_name() -> None:
    from celery.utils.imports import instantiate, symbol_by_name

    assert symbol_by_name("collections:OrderedDict") is importlib.import_module(
        "collections").OrderedDict
    assert symbol_by_name("os.path.join") is importlib.import_module("os.path").join
    assert instantiate("fractions:Fraction", 3, 4) == 0.75
    with pytest.raises(ImportError):
        symbol_by_name("surely_not_a_module_anywhere:X")
    assert symbol_by_name("collections:NoSuchThing", default=dict) is dict
    with pytest.raises(ValueError, match="does not name an object"):
        symbol_by_name("justaname")


def test_abortable_result_and_task(app: Celery) -> None:
    from celery.contrib.abortable import ABORTED, AbortableAsyncResult, AbortableTask

    @app.task(bind=True, base=AbortableTask, name="surface.job")
    def job(self):
        return "aborted" if self.is_aborted() else "ran"

    result = AbortableAsyncResult("job-1", app=app)
    assert not result.is_aborted()
    result.abort()
    assert result.state == ABORTED and result.is_aborted()
    assert job.AsyncResult("job-1").is_aborted()
    assert job.is_aborted(task_id="job-1")
    assert not job.is_aborted(task_id="job-2")
    assert job.apply(task_id="job-1").get() == "aborted"
    assert job.apply(task_id="job-3").get() == "ran"


def test_bugreport_names_our_package_and_masks_passwords() -> None:
    import celery

    app = Celery("report", broker="redis://:secret@localhost:6379/0", set_as_current=False)
    report = app.bugreport()
    assert celery.VERSION_BANNER in report
    assert "broker:redis://:**@localhost:6379/0" in report and "secret" not in report
    assert "results:disabled" in report
