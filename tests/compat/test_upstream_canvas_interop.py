"""The canvas across implementations, live over Redis: upstream Celery 5.x's client with our
worker, our client with upstream's worker, and chords whose header both workers run.

Each side's worker listens on a queue of its own (``to-ours``, ``to-upstream``) and sends
its follow-ups there, so a canvas sent to one side runs there from end to end; both also
listen on ``interop-mixed``. The scenarios (interop/canvas_scenarios.py) are the same code
for both clients; the outcomes expected of them are here.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, chain, chord, group
from celery.exceptions import ChordError
from tests.conftest import flushed_redis_url, stop_process

from ..integration.worker_harness import running_worker
from .interop.canvas_scenarios import SCENARIOS
from .interop.canvasapp import make_app
from .test_upstream_interop import INTEROP_DIR, _env, _upstream_python

REDIS_DB = 12
HOLD_WAIT = 15.0


@pytest.fixture(scope="module")
def url() -> str:
    return flushed_redis_url(REDIS_DB)


@pytest.fixture(scope="module")
def redis(url: str) -> Iterator[Any]:
    import valkey

    client = valkey.Valkey.from_url(url)
    yield client
    client.close()


class UpstreamWorker:
    """``celery -A upcanvas worker`` of upstream Celery, and its output so far."""

    def __init__(self, python: Path, url: str) -> None:
        self.proc = subprocess.Popen(
            [str(python), "-m", "celery", "-A", "upcanvas", "worker", "-P", "threads", "-c", "2",
             "--prefetch-multiplier", "1", "-Q", "to-upstream,interop-mixed", "-l", "info",
             "-n", "upstream-canvas@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=INTEROP_DIR, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if " ready." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            stop_process(self.proc)
            raise AssertionError("upstream worker did not start:\n" + self.log())

    def log(self) -> str:
        return "".join(self.lines[-200:])


@pytest.fixture(scope="module")
def upstream_worker(url: str) -> Iterator[UpstreamWorker]:
    worker = UpstreamWorker(_upstream_python(), url)
    yield worker
    stop_process(worker.proc)


@pytest.fixture(scope="module")
def our_worker(url: str) -> Iterator[Celery]:
    app = make_app(url, "ours", "to-ours")
    try:
        with running_worker(app, queues=["to-ours", "interop-mixed"], loop_workers=1,
                            loop_concurrency=2, sync_workers=2, prefetch_multiplier=1,
                            hostname="ours-canvas@test"):
            yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def upstream_client_outcomes(url: str, our_worker: Celery,
                             upstream_worker: UpstreamWorker) -> dict[str, Any]:
    """Every scenario, sent by upstream Celery's client to our worker (one subprocess)."""
    proc = subprocess.run([str(_upstream_python()), str(INTEROP_DIR / "canvas_producer.py")],
                          cwd=INTEROP_DIR, env=_env(url), capture_output=True, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def our_client(url: str, our_worker: Celery, upstream_worker: UpstreamWorker) -> Iterator[Celery]:
    """Our client; its default queue is the upstream worker's."""
    app = make_app(url, "ours-client", "to-upstream")
    yield app
    app.close()


def expected(name: str, client: str, worker: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """What scenario ``name`` must return when ``client`` sent it and ``worker`` ran it
    ("ours"/"upstream")."""
    return {
        "chain_three": {"value": 7, "parents": [4, 2]},
        "group_four": {"value": [0, 2, 4, 6], "members": 4},
        "chord_sum": {"value": 12, "header": [0, 2, 4, 6]},
        # add(1, 1) -> header add(2, 10), add(2, 20) -> tsum -> add(34, 5)
        "chord_in_chain": {"value": 39},
        # the client decides the header order: upstream's reverses a nested group's members
        # (see test_golden_canvas.in_header_order), ours keeps them; either worker joins
        # in the order it is given
        "chord_nested_header": {"flat": {"value": [2, 6, 4] if client == "upstream" else [2, 4, 6]},
                                "shaped": {"value": [2, [5, 6]]}},
        "chord_failing_member": {
            "error": ["ChordError", [f"Dependency {outcome.get('failed_id')} raised ValueError('x')"]],
            "failed_id": outcome.get("failed_id"), "member": {"error": ["ValueError", ["x"]]}},
        "chunks_map_starmap": {"chunks": {"value": [[0, 2], [4, 6], [8, 10]]},
                               "map": {"value": [3, 7]}, "starmap": {"value": [3, 7]}},
        "link_callback": {"value": 4, "callback": {"value": 14}},
        # the old-style errback is sent as a task with the failed task's id; the new-style
        # one is called by the worker that ran the task, with its request and exception
        "link_error_old_and_new": {
            "error": ["ValueError", ["boom"]], "task_id": outcome.get("task_id"),
            "old": {"value": ["old", outcome.get("task_id"), worker]},
            "new": {"value": ["ValueError", ["boom"], worker]}},
        "chain_on_error": {"error": ["ValueError", [2]],
                           "new": {"value": ["ValueError", [2], worker]}},
        "replaced": {"chain": {"value": 12}, "group": {"value": [2, 3]},
                     "in_chain": {"value": 112}, "in_chord": {"value": [[2, 3], 4]}},
        "async_steps": {"chain": {"value": 4}, "chord": {"value": 6}},
        # the failing step's error is stored for the steps after it, so get() raises
        "chain_failing_step": {"error": ["ValueError", [2]],
                               "failed_step": {"error": ["ValueError", [2]]},
                               "first": {"value": 2}},
    }[name]


ONE_SIDE = sorted(set(SCENARIOS) - {"mixed_chord"})


@pytest.mark.parametrize("name", ONE_SIDE)
def test_upstream_client_canvas_runs_on_our_worker(name, upstream_client_outcomes):
    outcome = upstream_client_outcomes[name]
    assert outcome == expected(name, "upstream", "ours", outcome)


@pytest.mark.parametrize("name", sorted(set(ONE_SIDE) - {"async_steps"}))
def test_our_client_canvas_runs_on_upstream_worker(name, our_client, upstream_worker):
    outcome = SCENARIOS[name](our_client, "ours")
    assert outcome == expected(name, "ours", "upstream", outcome), upstream_worker.log()


def held(redis: Any, queue: str) -> list[dict[str, Any]]:
    """The messages sent to ``queue`` (which nobody consumes): waits for the first, then
    a while longer for any duplicate."""
    deadline = time.monotonic() + HOLD_WAIT
    while not redis.llen(queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    out = []
    for raw in redis.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
        out.append(envelope)
    return out


def _assert_body_sent_once(redis: Any, queue: str, body_id: str, values: list[Any]) -> Any:
    messages = held(redis, queue)
    assert len(messages) == 1, [m["headers"] for m in messages]
    (message,) = messages
    assert message["headers"]["id"] == body_id
    assert message["body"][0] == [values]
    return message


def test_mixed_chord_from_upstream_client(upstream_client_outcomes, redis):
    outcome = upstream_client_outcomes["mixed_chord"]
    values = outcome["header"]["value"]
    assert [i for i, _ in values] == list(range(16))
    assert {side for _, side in values} == {"ours", "upstream"}, values
    _assert_body_sent_once(redis, "interop-hold-upstream", outcome["body_id"], values)


def test_mixed_chord_from_our_client(our_client, redis, upstream_worker):
    outcome = SCENARIOS["mixed_chord"](our_client, "ours")
    values = outcome["header"]["value"]
    assert [i for i, _ in values] == list(range(16)), upstream_worker.log()
    assert {side for _, side in values} == {"ours", "upstream"}, values
    _assert_body_sent_once(redis, "interop-hold-ours", outcome["body_id"], values)


@pytest.mark.parametrize("last", ["ours", "upstream"])
def test_chord_split_across_workers_is_joined_by_the_last(our_client, redis, last):
    """Members 0 and 2 run on our worker, 1 and 3 upstream's; one member of the ``last``
    side sleeps, so that side's worker completes the chord, reading the other's parts."""
    whoami = our_client.tasks["interop.whoami"]
    side = ["ours", "upstream", "ours", "upstream"]
    slow = 2 if last == "ours" else 3
    header = [whoami.s(i, 1.5 if i == slow else 0.0).set(queue=f"to-{side[i]}")
              for i in range(4)]
    queue = f"interop-hold-split-{last}"
    res = chord(header, our_client.tasks["interop.echo"].s().set(queue=queue)).apply_async()
    values = res.parent.get(timeout=20)
    assert values == [[i, side[i]] for i in range(4)]
    message = _assert_body_sent_once(redis, queue, res.id, values)
    # the body is sent from the completing member's run, as its child
    assert message["headers"]["parent_id"] == res.parent.results[slow].id


@pytest.mark.parametrize("last", ["ours", "upstream"])
def test_failure_reported_by_one_side_fails_the_chord_joined_by_the_other(our_client, redis, last):
    """A member fails on the other side (its part in ``.j`` is an encoded exception); the
    ``last`` side's worker completes the header, decodes that part and fails the body with
    upstream's ChordError message instead of sending it."""
    other = "upstream" if last == "ours" else "ours"
    t = our_client.tasks
    queue = f"interop-hold-failed-{last}"
    header = [t["interop.fail"].s("x").set(queue=f"to-{other}"),
              t["interop.whoami"].s(1, 1.5).set(queue=f"to-{last}")]
    res = chord(header, t["interop.echo"].s().set(queue=queue)).apply_async()
    failed_id = res.parent.results[0].id
    with pytest.raises(ChordError) as raised:
        res.get(timeout=20, follow_parents=False)
    assert raised.value.args == (f"Dependency {failed_id} raised ValueError('x')",)
    assert res.parent.results[1].get(timeout=5) == [1, last]
    time.sleep(0.3)  # the joiner stores the body's failure instead of sending it
    assert redis.llen(queue) == 0 and res.state == "FAILURE"


@pytest.mark.parametrize("last", ["ours", "upstream"])
def test_saved_header_split_across_workers_keeps_its_shape(our_client, redis, last):
    """A header ending in a group (saved as a GroupResult, joined into its shape): members
    on both sides, the ``last`` side completes it (upstream's join reads the members'
    stored results, ours the parts in ``.j``)."""
    other = "upstream" if last == "ours" else "ours"
    whoami = our_client.tasks["interop.whoami"]
    nested = chain(whoami.si(1).set(queue=f"to-{other}"),
                   group(whoami.si(2).set(queue=f"to-{other}"),
                         whoami.si(3, 1.5).set(queue=f"to-{last}")))
    queue = f"interop-hold-saved-{last}"
    res = chord([whoami.si(0).set(queue=f"to-{other}"), nested],
                our_client.tasks["interop.echo"].s().set(queue=queue)).apply_async()
    values = [[0, other], [[2, other], [3, last]]]
    message = _assert_body_sent_once(redis, queue, res.id, values)
    assert message["headers"]["group"] == res.parent.id
