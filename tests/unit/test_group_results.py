"""GroupResult and ResultSet, result tuples, joining rules, and the Celery helpers a task
author imports (current_app/current_task proxies, get_task_logger). No network: the
results live in a SQLite file or in memory."""

from __future__ import annotations

import logging
import uuid

import pytest

import celery
from celery import Celery, states
from celery.exceptions import TimeoutError
from celery.result import (
    AsyncResult,
    GroupResult,
    ResultSet,
    allow_join_result,
    result_from_tuple,
)
from celery.utils.log import TaskFormatter, get_task_logger, task_logger


@pytest.fixture
def app(tmp_path):
    app = Celery("results", broker="memory://results-unit", backend=f"db+sqlite:///{tmp_path}/r.db",
                 set_as_current=False)
    yield app
    app.close()


def stored(app, value, state=states.SUCCESS):
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, value, state)
    return app.AsyncResult(task_id)


def test_join_returns_values_in_order_and_reads_in_batches(app, monkeypatch):
    results = [stored(app, i) for i in range(40)]
    reads = []
    real = app.backend.get_many_meta
    monkeypatch.setattr(app.backend, "get_many_meta", lambda ids: reads.append(len(ids)) or real(ids))
    group = GroupResult("g1", results, app=app)
    assert group.join(timeout=5) == list(range(40))
    assert len(reads) <= 2  # batches of 16 then 32 (all ready): not one read per result


def test_join_raises_the_first_failure_in_order_and_honours_propagate(app):
    ok, bad = stored(app, 1), stored(app, KeyError("k"), states.FAILURE)
    group = GroupResult("g2", [ok, bad], app=app)
    with pytest.raises(KeyError):
        group.join(timeout=5)
    values = group.join(timeout=5, propagate=False)
    assert values[0] == 1 and isinstance(values[1], KeyError)
    assert group.failed() and not group.successful() and group.completed_count() == 1


def test_join_waits_then_times_out_for_the_whole_set(app):
    pending = app.AsyncResult(str(uuid.uuid4()))
    with pytest.raises(TimeoutError):
        ResultSet([stored(app, 1), pending], app=app).join(timeout=0.2)


def test_join_with_a_callback_calls_it_in_order(app):
    results = [stored(app, "a"), stored(app, "b")]
    seen = []
    assert GroupResult("g", results, app=app).join(callback=lambda i, v: seen.append((i, v))) == []
    assert seen == [(results[0].id, "a"), (results[1].id, "b")]


def test_nested_group_results_join_as_lists(app):
    inner = GroupResult("inner", [stored(app, 1), stored(app, 2)], app=app)
    outer = GroupResult("outer", [inner, stored(app, 3)], app=app)
    assert outer.join(timeout=5) == [[1, 2], 3]
    assert outer.ready()


async def test_ajoin_and_await(app):
    group = GroupResult("g", [stored(app, 5), stored(app, 6)], app=app)
    assert await group.ajoin(timeout=5) == [5, 6]
    assert await group == [5, 6]


def test_save_restore_delete(app):
    group = GroupResult(str(uuid.uuid4()), [stored(app, 1), stored(app, 2)], app=app)
    group.save()
    restored = GroupResult.restore(group.id, app=app)
    assert restored == group and restored.join(timeout=5) == [1, 2]
    group.delete()
    assert GroupResult.restore(group.id, app=app) is None


def test_result_tuples_round_trip_with_parents():
    app = Celery("tuples", broker="memory://", set_as_current=False)
    try:
        parent = AsyncResult("p", app=app)
        child = AsyncResult("c", app=app, parent=parent)
        group = GroupResult("g", [child, AsyncResult("d", app=app)], parent=parent, app=app)
        back = result_from_tuple(group.as_tuple(), app)
        assert isinstance(back, GroupResult) and back == group
        assert back.results[0].parent.id == "p"
        assert result_from_tuple(child.as_tuple(), app).parent.id == "p"
        assert result_from_tuple(child, app) is child
        assert child.as_list() == ["c", "p"]
    finally:
        app.close()


def test_result_set_membership():
    app = Celery("sets", broker="memory://", set_as_current=False)
    try:
        a, b = AsyncResult("a", app=app), AsyncResult("b", app=app)
        rs = ResultSet([a], app=app)
        rs.add(b)
        rs.add(b)
        assert list(rs) == [a, b] and len(rs) == 2 and rs[1] is b
        rs.discard("zz")
        rs.remove("a")
        assert rs.results == [b]
        with pytest.raises(KeyError):
            rs.remove("a")
    finally:
        app.close()


def test_get_inside_a_task_is_refused_unless_allowed(app):
    @app.task
    def inner():
        return stored(app, 7).get(timeout=1)

    @app.task
    def allowed():
        with allow_join_result():
            return stored(app, 8).get(timeout=1)

    from celery._state import Context, current_request, current_task_var

    token_t = current_task_var.set(inner)
    token_r = current_request.set(Context(id="x", is_eager=False))
    try:
        with pytest.raises(RuntimeError, match="Never call result.get"):
            inner.run()
        with pytest.raises(RuntimeError, match="Never call result.get"):
            GroupResult("g", [stored(app, 1)], app=app).join()
        assert allowed.run() == 8
    finally:
        current_request.reset(token_r)
        current_task_var.reset(token_t)


def test_current_app_and_task_are_resolved_when_used(app):
    from celery._state import Context, current_request, current_task_var

    @app.task
    def t():
        return None

    assert not celery.current_task
    token_t, token_r = current_task_var.set(t), current_request.set(Context(id="i"))
    try:
        assert celery.current_task.name == t.name
        assert celery.current_task.request.id == "i"
        assert celery.current_app.main == "results"  # the running task's app
    finally:
        current_request.reset(token_r)
        current_task_var.reset(token_t)


def test_get_task_logger_is_a_child_of_celery_task():
    logger = get_task_logger("my.tasks")
    assert logger.parent is task_logger and logger.name == "my.tasks"
    with pytest.raises(RuntimeError):
        get_task_logger("celery.task")
    record = logging.LogRecord("my.tasks", logging.INFO, __file__, 1, "hi", None, None)
    text = TaskFormatter("%(task_name)s[%(task_id)s] %(message)s").format(record)
    assert text == "???[???] hi"  # outside a task


def test_app_group_result_is_bound_to_the_app(app):
    group = app.GroupResult(str(uuid.uuid4()), [stored(app, 3)])
    assert group.app is app
    group.save()
    assert app.GroupResult.restore(group.id).join(timeout=5) == [3]
