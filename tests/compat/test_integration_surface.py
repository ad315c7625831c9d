"""What libraries written for Celery import from it and test (OpenTelemetry's and Sentry's
Celery integrations, version gates): the paths exist and behave as Celery's."""

from __future__ import annotations

import celery
from celery import Celery, Task
from celery.app import trace


def test_version_is_the_celery_release_followed_and_ours_is_apart() -> None:
    assert celery.__version__ == "5.5.0"
    assert celery.VERSION == celery.version_info == (5, 5, 0, "", "")
    assert celery.VERSION >= (4, 4, 7) and celery.VERSION.major == 5
    assert celery.VERSION_BANNER == f"{celery.__asyncio_version__} (celery-asyncio)"


def test_celery_registry_tasks_is_the_current_apps_registry() -> None:
    from celery import registry
    from celery._state import get_current_app, set_default_app

    previous = get_current_app()
    app = Celery("surface", broker="memory://")
    try:
        app.set_default()

        @app.task(name="surface.add")
        def add(x: int, y: int) -> int:
            return x + y

        assert registry.tasks is app.tasks
        assert registry.tasks.get("surface.add") is add
    finally:
        set_default_app(previous)
        app.close()


def test_task_has_custom_looks_below_celerys_task_only() -> None:
    class Plain(Task):  # type: ignore[type-arg]
        pass

    class Custom(Plain):
        def __call__(self, *args: object, **kwargs: object) -> object:
            return super().__call__(*args, **kwargs)

    assert trace.task_has_custom(Custom(), "__call__")
    assert not trace.task_has_custom(Plain(), "__call__")
    assert not trace.task_has_custom(Plain(), "apply_async")  # Celery's own, not custom


def test_our_tracer_runs_only_the_execution_it_is_handed() -> None:
    app = Celery("surface", broker="memory://")
    try:
        @app.task(name="surface.noop")
        def noop() -> None:
            return None

        traced = trace.build_tracer("surface.noop", noop, hostname="h", store_errors=False)
        assert trace.hooked_tracer(noop) is None  # not replaced: the worker calls no tracer
        assert trace.run_traced(traced, "id-1", (), {}, None, lambda: "ran") == "ran"
        try:
            traced("id-1", (), {})
        except RuntimeError as exc:
            assert "only inside the worker's execution" in str(exc)
        else:
            raise AssertionError("a tracer called outside an execution ran something")
    finally:
        app.close()
