"""What sql_tables.py writes and reads without a database: upstream's pickled GroupResult,
the restricted unpickler of old rows, and date_done's conversions."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

pytest.importorskip("sqlalchemy")

from celery import Celery  # noqa: E402
from celery.backends.sql_tables import (  # noqa: E402
    Tables,
    dump_group,
    from_db_time,
    load_group,
    load_pickled,
    to_db_time,
)
from celery.exceptions import DecodeError  # noqa: E402
from celery.result import AsyncResult, GroupResult  # noqa: E402

# GroupResult.as_tuple(): ((id, parent's as_tuple()), [members' as_tuple()]); a result's
# is ((id, parent's), None).
A = (("a", None), None)
NESTED = (("g1", None), [A, (("g2", (("p", None), None)), [(("b", None), None), (("c", A), None)])])


def test_a_group_pickle_round_trips_and_builds_result_objects():
    raw = dump_group(NESTED)
    assert load_group(raw, "g1") == NESTED
    # The pickle names celery.result.GroupResult/AsyncResult with upstream's constructor
    # arguments; our classes share them, so a full unpickle builds the same tree.
    app = Celery("pickled-group", set_as_current=True)
    try:
        tree = pickle.loads(raw)  # noqa: S301 - our own bytes
        assert isinstance(tree, GroupResult) and tree.id == "g1"
        first, inner = tree.results
        assert isinstance(first, AsyncResult) and first.id == "a"
        assert isinstance(inner, GroupResult) and [r.id for r in inner.results] == ["b", "c"]
        assert inner.parent.id == "p" and inner.results[1].parent.id == "a"
        assert tree.as_tuple() == NESTED
    finally:
        app.close()


def test_an_upstream_style_group_pickle_with_a_backend_is_read_without_running_it():
    # Upstream pickles AsyncResult(id, backend, None, None, parent), the backend as
    # unpickle_backend(cls, args, kwargs): none of it may run here.
    raw = (b"\x80\x02ccelery.result\nGroupResult\n(X\x02\x00\x00\x00g1](ccelery.result\n"
           b"AsyncResult\n(X\x01\x00\x00\x00accelery.backends.base\nunpickle_backend\n"
           b"(ccelery.backends.database\nDatabaseBackend\n)}X\x05\x00\x00\x00dburiX\x04\x00"
           b"\x00\x00x://stRNNNtRetR.")
    assert load_group(raw, "g1") == (("g1", None), [(("a", None), None)])


def test_old_pickled_results_are_read_restrictedly():
    value = {"n": [1, 2.5], "t": (1, "x"), "when": dt.datetime(2024, 1, 2, 3, 4, 5)}
    assert load_pickled(pickle.dumps(value, 4), False, "task x") == value
    error = load_pickled(pickle.dumps(KeyError("k"), 4), False, "task x")
    assert isinstance(error, KeyError) and error.args == ("k",)
    evil = b"\x80\x04cos\nsystem\n(X\x04\x00\x00\x00trueR."
    with pytest.raises(DecodeError, match="os.system is not allowed"):
        load_pickled(evil, False, "task x")
    with pytest.raises(DecodeError, match="task x"):
        load_pickled(b"\x80\x04not a pickle", True, "task x")


def test_date_done_is_stored_as_naive_utc():
    aware = "2024-05-06T07:08:09.123456+02:00"
    stored = to_db_time(aware)
    assert stored == dt.datetime(2024, 5, 6, 5, 8, 9, 123456) and stored.tzinfo is None
    assert from_db_time(stored) == "2024-05-06T05:08:09.123456+00:00"
    assert to_db_time(None) is None and from_db_time(None) is None


def test_table_names_and_schemas_as_configured():
    tables = Tables({"task": "my_tasks"}, {"task": "s1", "group": "s2"})
    assert tables.task.fullname == "s1.my_tasks"
    assert tables.group.fullname == "s2.celery_tasksetmeta"
    present = {"task_id", "status", "result", "date_done", "traceback", "name"}
    assert [c.name for c in tables.task_columns(True, present)] == [
        "task_id", "status", "result", "date_done", "traceback", "name"]
    assert "name" not in [c.name for c in tables.task_columns(False, present)]
