"""What a worker does with canvas messages, ours against upstream Celery 5.7's.

``gen_fixtures.py canvas`` replayed each client capture of data/canvas_messages.json to an
upstream worker whose app routes every task it sends to a queue nobody consumes (``hold``),
so the canvas stops one step later; data/canvas_worker.json holds what that worker
published and the result and chord keys it left. Here the same messages, ids and all, go
to our worker with the same routing, and what it publishes and stores is compared, with
uuids the worker made renamed in order of first appearance and ``origin``, completion
times, TTLs and traceback text set aside.

Differences on purpose, asserted as such (``set_aside``):

* A chord sent as a chain step: upstream's worker puts ``"priority": null`` in the body's
  options (it passes ``priority=None`` along); ours leaves out an option that is None.
* A chord whose member failed: upstream stores the body's ChordError from the failing
  member's context, so the body's meta lists that member's children (the errback group it
  just sent) and a traceback of the ``raise ... from``; ours stores the body's own request
  (its ``group_id``, no children, no traceback). Upstream leaves the join's keys (``.j``,
  ``.d``, a claim token in ``.c``) to expire; ours drops them and marks the chord done, as
  after a body sent, so a late duplicate report is ignored.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery
from tests.conftest import flushed_redis_url

from ..integration.worker_harness import running_worker
from .canvas_tasks import register_canvas_tasks
from .test_golden_canvas import CASES, UUID, _renamed

REDIS_DB = 15
HOLD = "hold"
WORKER = {case["name"]: case for case in json.loads(
    (Path(__file__).parent / "data" / "canvas_worker.json").read_text())}


@pytest.fixture(scope="module")
def redis() -> Iterator[Any]:
    import valkey

    flushed_redis_url(REDIS_DB)
    client = valkey.Valkey(host="127.0.0.1", port=6379, db=REDIS_DB)
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker(redis: Any) -> Iterator[Celery]:
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    app = Celery("proj", broker=url, backend=url, set_as_current=False)
    app.conf.task_routes = {"*": {"queue": HOLD}}

    register_canvas_tasks(app)

    try:
        with running_worker(app, queues=["celery"], loop_workers=0, sync_workers=2,
                            hostname="ours-golden@test"):
            yield app
    finally:
        app.close()


def _ids(case: dict[str, Any]) -> list[str]:
    own = [case["result"], case["messages"], case["keys"]]
    return sorted(set(UUID.findall(json.dumps(own))))


def replay(redis: Any, case: dict[str, Any]) -> None:
    """The client capture back in Redis: its keys, then its messages in LRANGE order."""
    for key, item in case["keys"].items():
        if item["type"] == "string":
            redis.set(key, item["value"]["text"], px=item["pttl"] if item["pttl"] > 0 else None)
    for entry in reversed(case["messages"]):
        redis.lpush(entry["queue"], base64.b64decode(entry["raw_b64"]))


def _value(redis: Any, key: bytes, kind: str) -> Any:
    if kind == "string":
        value = redis.get(key)
        return None if value is None else {"text": value.decode()}
    if kind == "set":
        return sorted(m.decode() for m in redis.smembers(key))
    if kind == "zset":
        return [[m.decode(), s] for m, s in redis.zrange(key, 0, -1, withscores=True)]
    return kind


def snapshot(redis: Any, ids: list[str]) -> dict[str, Any]:
    """As gen_fixtures.worker_snapshot: the messages in HOLD, and the keys of ``ids`` and of
    the ids in those messages."""
    held = redis.lrange(HOLD, 0, -1)
    ids = sorted(set(ids) | {i for raw in held for i in UUID.findall(raw.decode())})
    keys = {}
    for key in sorted(redis.keys("celery-*")):
        name = key.decode()
        if any(i in name for i in ids):
            kind = redis.type(key).decode()
            value = _value(redis, key, kind)
            if kind != "none" and value is not None:  # else gone since KEYS (a join's clean-up)
                keys[name] = {"type": kind, "pttl": redis.pttl(key), "value": value}
    published = []
    for raw in held:
        envelope = json.loads(raw)
        envelope["_body_decoded"] = json.loads(base64.b64decode(envelope["body"]))
        published.append({"decoded": envelope})
    return {"published": published, "keys": keys}


def run_on_our_worker(redis: Any, name: str) -> dict[str, Any]:
    """Replay case ``name``; once our worker published as many messages and wrote every
    result upstream's did, wait until nothing changes for 0.2 s (a join's clean-up)."""
    upstream, case = WORKER[name], CASES[name]
    ids = _ids(case)
    metas = {k for k in upstream["keys"] if k.startswith("celery-task-meta-")}
    redis.delete(HOLD)
    replay(redis, case)
    deadline, last, now = time.monotonic() + 10, None, snapshot(redis, ids)
    while time.monotonic() < deadline:
        view = (now["published"], {k: v["value"] for k, v in now["keys"].items()})
        done = len(now["published"]) >= len(upstream["published"]) and metas <= set(now["keys"])
        if done and view == last:
            break
        last = view
        time.sleep(0.2)
        now = snapshot(redis, ids)
    return now


def _chords(case: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Ids of the replayed chord header members, and of their chords' bodies."""
    members, bodies = set(), set()
    for entry in case["messages"]:
        chord_body = json.loads(base64.b64decode(entry["decoded"]["body"]))[2].get("chord")
        if chord_body:
            members.add(entry["decoded"]["headers"]["id"])
            bodies.add(chord_body["options"]["task_id"])
    return members, bodies


def _headers(headers: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """``headers`` but ``origin``; a chord body's parent (and root, which is the parent's)
    is whichever header member completed the chord: a race, on either side."""
    out = {k: v for k, v in headers.items() if k != "origin"}
    members, bodies = _chords(case)
    if out["id"] in bodies:
        for key in ("parent_id", "root_id"):
            assert out[key] in members, (key, out)
            out[key] = "<the header member that completed the chord>"
    return out


def comparable(capture: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """The parts compared: published messages (no ``origin``), result metas (no completion
    time; a traceback's last line only) and group keys (TTL as expiring or not). The ids of
    the replayed messages stay as they are; those the worker made are renamed."""
    published = []
    for entry in capture["published"]:
        envelope = entry["decoded"]
        published.append({"headers": _headers(envelope["headers"], case),
                          "header_order": list(envelope["headers"]),
                          "properties": envelope["properties"],
                          "body": envelope["_body_decoded"]})
    keys = {}
    for name, item in capture["keys"].items():
        value = item["value"]
        if name.startswith("celery-task-meta-"):
            value = json.loads(value["text"])
            value.pop("date_done", None)
            if value.get("traceback"):
                value["traceback"] = value["traceback"].strip().splitlines()[-1]
        keys[name] = {"type": item["type"], "expires": item["pttl"] > 0, "value": value}
    return _renamed({"published": published, "keys": keys}, {i: i for i in _ids(case)})


def _null_priority_in_chord_bodies(case: dict[str, Any], ours: dict[str, Any],
                                   theirs: dict[str, Any]) -> None:
    for mine, other in zip(ours["published"], theirs["published"], strict=True):
        for message in (mine, other):
            assert message["body"][2]["chord"] is not None
        assert other["body"][2]["chord"]["options"].pop("priority", "absent") is None
        assert "priority" not in mine["body"][2]["chord"]["options"]


def _failed_join(case: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    body_id, group_id = case["result"][0][0], case["result"][0][1][0][0]
    meta = f"celery-task-meta-{body_id}"
    mine, other = ours["keys"][meta]["value"], theirs["keys"][meta]["value"]
    (errbacks,) = {m["headers"]["group"] for m in theirs["published"]}
    assert other.pop("children")[0][0][0] == errbacks and mine.pop("children") == []
    assert mine.pop("group_id") == group_id and "group_id" not in other
    assert other.pop("traceback").startswith("celery.exceptions.ChordError: Dependency ")
    assert mine.pop("traceback") is None
    key = f"celery-taskset-meta-{group_id}"
    assert re.fullmatch(r"[0-9a-f]{32}", theirs["keys"].pop(f"{key}.c")["value"]["text"])
    assert ours["keys"].pop(f"{key}.c")["value"]["text"] == "done"
    for suffix in (".d", ".j"):
        assert f"{key}{suffix}" in theirs["keys"] and f"{key}{suffix}" not in ours["keys"]
        del theirs["keys"][f"{key}{suffix}"]


#: The differences on purpose (module docstring): each asserts its difference, then takes
#: it out of both captures.
SET_ASIDE = {"chain_group_middle": _null_priority_in_chord_bodies,
             "chord_in_chain": _null_priority_in_chord_bodies,
             "chord_failing_member": _failed_join}


@pytest.mark.parametrize("name", sorted(WORKER))
def test_our_worker_does_what_upstream_worker_does(worker, redis, name):
    ours = run_on_our_worker(redis, name)
    mine, theirs = comparable(ours, CASES[name]), comparable(WORKER[name], CASES[name])
    if name in SET_ASIDE:
        SET_ASIDE[name](CASES[name], mine, theirs)
    assert mine == theirs
