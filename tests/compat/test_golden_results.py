"""Result metas written by an upstream Celery 5.7 worker (data/results.json): we read them,
and the metas we write are byte-identical apart from the completion time."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from celery import Celery
from celery.app.task import Context
from celery.backends.base import ResultBackend

DATA = json.loads((Path(__file__).parent / "data" / "results.json").read_text())
RESULTS = {entry["name"]: entry for entry in DATA["results"]}


def stored(name: str, index: int = 0) -> bytes:
    return base64.b64decode(RESULTS[name]["values"][index]["raw_b64"])


@pytest.fixture(scope="module")
def backend():
    app = Celery("proj", set_as_current=False)
    yield ResultBackend(app.conf)
    app.close()


@pytest.fixture(scope="module")
def extended_backend():
    app = Celery("proj", set_as_current=False, result_extended=True)
    yield ResultBackend(app.conf)
    app.close()


def test_key_names_match(backend):
    for entry in RESULTS.values():
        assert backend.get_key_for_task(entry["task_id"]) == entry["key"]


def test_upstream_success_and_failure_metas_decode(backend):
    meta = backend.meta_from_payload("x", stored("int"))
    assert meta["status"] == "SUCCESS" and meta["result"] == 4
    meta = backend.meta_from_payload("x", stored("dict_datetime"))
    assert meta["result"]["when"] == dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    meta = backend.meta_from_payload("x", stored("value_error"))
    assert isinstance(meta["result"], ValueError) and meta["result"].args == ("boom",)
    assert "ValueError: boom" in meta["traceback"]
    # a class we cannot import becomes a stand-in with the same name and arguments
    meta = backend.meta_from_payload("x", stored("custom_exception"))
    assert type(meta["result"]).__name__ == "CustomError"
    assert isinstance(meta["result"], Exception) and meta["result"].args == ("custom", 42)
    meta = backend.meta_from_payload("x", stored("progress", 0))
    assert meta["status"] == "PROGRESS" and meta["result"] == {"i": 1}


def _same_time(ours: dict, upstream: dict) -> dict:
    ours["date_done"] = upstream["date_done"]
    return ours


@pytest.mark.parametrize(("name", "state", "value"), [
    ("int", "SUCCESS", 4),
    ("dict_datetime", "SUCCESS", {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 1, 2, 3, 4, 5), "n": 1, "l": [1, "a", None]}),
    ("value_error", "FAILURE", ValueError("boom")),
])
def test_we_write_what_upstream_writes(backend, name, state, value):
    entry = RESULTS[name]
    upstream = json.loads(stored(name))
    meta = backend.prepare_meta(entry["task_id"], state, value, upstream["traceback"], Context())
    payload = backend.encode(_same_time(meta, upstream))
    assert payload == stored(name)


def test_extended_meta_matches_upstream(extended_backend):
    entry = RESULTS["int_result_extended"]
    upstream = json.loads(stored("int_result_extended"))
    req = Context(task="proj.tasks.add", args=[2, 2], kwargs={}, hostname="compat@gen-host",
                  retries=0, delivery_info={"exchange": "", "routing_key": "celery"})
    meta = extended_backend.prepare_meta(entry["task_id"], "SUCCESS", 4, None, req)
    assert extended_backend.encode(_same_time(meta, upstream)) == stored("int_result_extended")


def test_children_are_stored_as_upstream_tuples(backend):
    entry = RESULTS["chain_parent"]
    upstream = json.loads(stored("chain_parent"))
    child_id = upstream["children"][0][0][0]
    req = Context()
    req.children.append(((child_id, None), None))
    meta = backend.prepare_meta(entry["task_id"], "SUCCESS", 2, None, req)
    assert backend.encode(_same_time(meta, upstream)) == stored("chain_parent")
