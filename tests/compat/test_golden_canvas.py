"""Canvas golden messages: what upstream Celery 5.7 put in Redis for chains, groups, chords,
callbacks, chunks and map/starmap (data/canvas_messages.json, made by ``gen_fixtures.py
canvas``), read by us, and made by our client for the same canvases.

Ids are random on both sides, so messages are compared once every uuid has been renamed in
order of first appearance (the result's ``as_tuple()`` first, then the messages and keys):
two captures match only if each id plays the same part in both. ``origin`` (host and pid)
and TTLs to the minute are the only other things set aside.

Three differences are on purpose, and asserted as such:

* A chord sent as a chain step (``chain(a, chord(...), b)``) carries its frozen header as
  a list of members; upstream wraps the same members in a ``celery.group`` dict whose only
  options are the group id (also the chord's own ``task_id``) and null root/parent ids.
  Both read either form (upstream's ``chord.from_dict`` unwraps the group as ours does).
* We store a chord's size (``.s``) before publishing any member of its header, in the same
  pipelined batch; upstream stores it just before publishing the last member. Either way
  no member can report before the size is known.
* A group nested in a chord header keeps its members' order in ours; upstream's reverses
  them (``in_header_order``).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, Signature, _state, chain, chord, group, signature
from celery.canvas.chains import _chain
from celery.canvas.chords import _chord
from celery.messaging import serialization
from celery.messaging.protocol import decode_body
from celery.transport.redis import _delivery
from tests.conftest import flushed_redis_url

from .canvas_tasks import register_canvas_tasks

REDIS_DB = 15
DATA = json.loads((Path(__file__).parent / "data" / "canvas_messages.json").read_text())
CASES = {case["name"]: case for case in DATA}
ACCEPT = serialization.accept_set(["json"])
KINDS: dict[str | None, type] = {None: Signature, "chain": _chain, "group": group, "chord": _chord}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _embeds(case: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(field, signature dict)`` of every signature in the case's message embeds."""
    for entry in case["messages"]:
        raw = base64.b64decode(entry["raw_b64"])
        msg = _delivery("tag", raw, entry["queue"]).message
        embed = decode_body(msg.body, msg.content_type, msg.content_encoding, ACCEPT).embed
        for field in ("callbacks", "errbacks", "chain"):
            for d in embed.get(field) or ():
                yield field, d
        if embed.get("chord") is not None:
            yield "chord", embed["chord"]


def _nested(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The signature dicts directly inside ``d``: members, body, and those in options."""
    kwargs, options = d.get("kwargs") or {}, d.get("options") or {}
    if d.get("subtask_type") in ("chain", "group"):
        yield from kwargs["tasks"]
    elif d.get("subtask_type") == "chord":
        header = kwargs["header"]
        yield from [header] if isinstance(header, dict) else header
        if kwargs.get("body") is not None:
            yield kwargs["body"]
    for key in ("link", "link_error", "chain"):
        value = options.get(key)
        yield from [value] if isinstance(value, dict) else value or ()
    if isinstance(options.get("chord"), dict):
        yield options["chord"]


def unwrap_group_headers(d: Any) -> Any:
    """``d`` with each chord's ``celery.group`` header replaced by the group's members, as
    both upstream's and our ``chord.from_dict`` read it; asserts the group held nothing
    else (see the module docstring)."""
    if isinstance(d, list):
        return [unwrap_group_headers(x) for x in d]
    if not isinstance(d, dict):
        return d
    out = {k: unwrap_group_headers(v) for k, v in d.items()}
    if d.get("subtask_type") == "chord" and isinstance(d["kwargs"].get("header"), dict):
        header = d["kwargs"]["header"]
        assert header["subtask_type"] == "group"
        assert header["options"] == {"task_id": d["options"]["task_id"], "root_id": None,
                                     "parent_id": None}
        out["kwargs"]["header"] = out["kwargs"]["header"]["kwargs"]["tasks"]
    return out


def assert_reads(d: dict[str, Any]) -> None:
    """``signature(d)`` is of the kind ``d`` names, all the way down, and serializes back
    to ``d`` (a chord's group header as its members)."""
    sig = signature(d)
    assert type(sig) is KINDS[d["subtask_type"]], (type(sig), d)
    for inner in _nested(d):
        assert_reads(inner)
    assert _json(sig) == unwrap_group_headers(d)


#: Cases whose messages carry no callbacks, errbacks, chain or chord.
NO_EMBEDS = {"group", "chunks", "map", "starmap", "chord_sent_by_task"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_we_read_upstream_canvas_embeds(name):
    case = CASES[name]
    fields = set()
    for field, d in _embeds(case):
        fields.add(field)
        assert_reads(d)
    assert_reads(case["signature"])
    assert bool(fields) == (name not in NO_EMBEDS)


def test_the_fixtures_cover_every_embed_field_and_kind():
    fields, embedded, kinds = set(), set(), set()
    for case in DATA:
        stack = [case["signature"]]
        for field, d in _embeds(case):
            fields.add(field)
            embedded.add(d["subtask_type"])
            stack.append(d)
        while stack:
            d = stack.pop()
            kinds.add(d["subtask_type"])
            stack.extend(_nested(d))
    assert fields == {"callbacks", "errbacks", "chain", "chord"}
    # upstream never embeds a chain: its steps are flattened into the ``chain`` field
    assert embedded == {None, "group", "chord"}
    assert kinds == {None, "chain", "group", "chord"}


# -- our client ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[Celery]:
    """Our app, with the tasks of tests/compat/proj; while it is used, the default app is
    another one (no backend, a broker nobody reads), so that a canvas that loses track of
    its tasks' app and falls back to the default one fails."""
    url = flushed_redis_url(REDIS_DB)
    app = Celery("proj", broker=url, backend=url, set_as_current=False)
    decoy = Celery("decoy", broker="memory://", set_as_current=False)
    previous = _state._default_app
    _state.set_default_app(decoy)

    register_canvas_tasks(app)

    try:
        yield app
    finally:
        with _state._apps_lock:
            _state._default_app = previous
        decoy.close()
        app.close()


def _canvases(app: Celery) -> dict[str, Callable[[], Any]]:
    """The calls of gen_fixtures.py's CANVAS_CASES, made with our API; each returns what to
    call ``apply_async()`` on and the signature it sends."""
    t = app.tasks
    add, tsum, echo = t["proj.tasks.add"], t["proj.tasks.tsum"], t["proj.tasks.echo"]
    old, new = t["proj.tasks.errback_old"], t["proj.tasks.errback_new"]
    fail = t["proj.tasks.fail"]

    def applied(sig: Signature, **options: Any) -> Any:
        return sig, lambda: sig.apply_async(**options)

    def plain(make: Callable[[], Any]) -> Callable[[], Any]:
        def made() -> Any:
            sig = make()
            return sig, sig.apply_async
        return made

    return {
        "chain": plain(lambda: chain(add.s(1, 1), add.s(2), add.s(3))),
        "chain_group_middle": plain(lambda: chain(add.s(1, 1), group(add.s(10), add.s(20)),
                                                  tsum.s())),
        "chain_group_last": plain(lambda: chain(add.s(1, 1), group(add.s(10), add.s(20)))),
        "group": plain(lambda: group(add.s(1, 1), add.s(2, 2), add.s(3, 3))),
        "chord": plain(lambda: chord([add.s(1, 1), add.s(2, 2)], tsum.s())),
        "chord_in_chain": plain(lambda: chain(add.s(1, 1), chord([add.s(10), add.s(20)], tsum.s()),
                                              add.s(5))),
        "chain_led_by_chord": plain(lambda: chain(chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
                                                  add.s(5))),
        "chord_nested_group": plain(lambda: chord([add.s(1, 1), group(add.s(2, 2), add.s(3, 3))],
                                                  tsum.s())),
        "chord_header_chain_to_group": plain(lambda: chord(
            [add.s(1, 1), chain(add.s(2, 2), group(add.s(1), add.s(2)))], echo.s())),
        "link": plain(lambda: add.s(1, 1).set(link=add.s(10), link_error=[old.s(), new.s()])),
        "link_two_callbacks": lambda: applied(add.s(1, 1), link=[add.s(10), tsum.s()]),
        "chain_on_error": plain(lambda: chain(add.s(1, 1), add.s(2)).on_error(new.s())),
        "link_error_on_failure": plain(lambda: fail.s().set(link_error=[old.s(), new.s()])),
        "chain_failing_step": plain(lambda: chain(fail.s(), add.s(1), add.s(2))),
        "chord_failing_member": plain(lambda: chord([add.s(1, 1), fail.s()],
                                                    tsum.s().on_error(old.s()))),
        "replace_in_chain": plain(lambda: chain(t["proj.tasks.replace_with_chain"].s(1),
                                                add.s(100))),
        "replace_in_chord": plain(lambda: chord([t["proj.tasks.replace_with_group"].s(1),
                                                 add.s(2, 2)], echo.s())),
        "chord_sent_by_task": plain(lambda: t["proj.tasks.spawn_chord"].s()),
        "chunks": plain(lambda: add.chunks([(1, 1), (2, 2), (3, 3)], 2)),
        "map": plain(lambda: tsum.map([[1, 2], [3, 4]])),
        "starmap": plain(lambda: add.starmap([(1, 2), (3, 4)])),
    }


class Monitor(threading.Thread):
    """``[command, key]`` of each command MONITOR sees on our database, until ``stop()``."""

    MARK = "golden-canvas-monitor-done"

    def __init__(self, client: Any) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.commands: list[list[str]] = []
        self.started = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:
            self.started.set()
            for cmd in monitor.listen():
                if cmd.get("db") != REDIS_DB:
                    continue
                words = cmd["command"].split(" ", 2)
                if words[0] == "ECHO" and words[1:] == [self.MARK]:
                    return
                self.commands.append(words[:2])

    def stop(self) -> list[list[str]]:
        self.client.echo(self.MARK)
        self.join(10)
        return self.commands


def _decoded(raw: bytes, queue: str) -> dict[str, Any]:
    envelope = json.loads(raw)
    envelope["_body_decoded"] = json.loads(base64.b64decode(envelope["body"]))
    return {"queue": queue, "decoded": envelope}


def send_ours(app: Celery, name: str) -> dict[str, Any]:
    """Send case ``name`` with our client to a flushed database; capture it as the fixture
    generator captures upstream's."""
    import valkey

    flushed_redis_url(REDIS_DB)
    client = valkey.Valkey(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        sig, send = _canvases(app)[name]()
        as_dict = _json(sig)
        monitor = Monitor(client)
        monitor.start()
        assert monitor.started.wait(5)
        time.sleep(0.1)
        res = send()
        app._confirm_own_published()
        commands = monitor.stop()
        messages, keys = [], {}
        for key in sorted(client.keys("*")):
            kind = client.type(key).decode()
            if kind == "list":
                messages += [_decoded(raw, key.decode()) for raw in client.lrange(key, 0, -1)]
            elif kind == "string":
                keys[key.decode()] = {"type": kind, "pttl": client.pttl(key),
                                      "value": {"text": client.get(key).decode()}}
    finally:
        client.close()
    return {"signature": as_dict, "result": _json(res.as_tuple()), "messages": messages,
            "keys": keys, "commands": commands}


def _renamed(value: Any, names: dict[str, str]) -> Any:
    """``value`` with each uuid renamed ``<idN>`` in order of first appearance (dict keys
    visited sorted, so that key order does not change the numbering)."""
    if isinstance(value, str):
        return UUID.sub(lambda m: names.setdefault(m.group(), f"<id{len(names)}>"), value)
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    if isinstance(value, dict):
        return {_renamed(k, names): _renamed(value[k], names) for k in sorted(value)}
    return value


def normalized(capture: dict[str, Any]) -> dict[str, Any]:
    """What is compared of a capture: the result's shape, each message (queue, envelope,
    headers but ``origin``, properties, decoded body) and the backend's keys."""
    names: dict[str, str] = {}
    messages = []
    for entry in capture["messages"]:
        envelope = copy.deepcopy(entry["decoded"])
        headers = envelope["headers"]
        messages.append({
            "queue": entry["queue"],
            "envelope_keys": sorted(k for k in envelope if not k.startswith("_") and k != "body"),
            "header_order": list(headers),
            "headers": {k: v for k, v in headers.items() if k != "origin"},
            "properties": envelope["properties"],
            "content": [envelope["content-type"], envelope["content-encoding"]],
            "body": unwrap_group_headers(envelope["_body_decoded"]),
        })
    keys = {name: {"type": item["type"], "value": item["value"],
                   "ttl_minutes": round(item["pttl"] / 60000) if item["pttl"] > 0 else item["pttl"]}
            for name, item in capture["keys"].items() if name.startswith("celery-")}
    return _renamed({"0_result": capture["result"], "1_messages": messages, "2_keys": keys}, names)


def in_header_order(case: dict[str, Any]) -> dict[str, Any]:
    """Upstream's ``chord([a, group(b, c)], body)`` with ``b`` and ``c`` given back the
    header indexes of the order they were written in.

    Upstream flattens a group nested in a chord header with ``deque.extendleft``, which
    reverses its members: ``c`` gets index 1 and ``b`` index 2, so the body receives
    ``[a, c, b]``. Ours keeps the order the header was written in (``[a, b, c]``); the
    ids, group and everything else are the same. The order is decided by the client that
    freezes the chord; a worker of either side joins in the indexes it is given."""
    case = copy.deepcopy(case)
    by_index = {m["decoded"]["headers"]["group_index"]: m["decoded"] for m in case["messages"]}
    assert {i: d["headers"]["argsrepr"] for i, d in by_index.items()} == {
        0: "(1, 1)", 1: "(3, 3)", 2: "(2, 2)"}
    first, second = by_index[1], by_index[2]
    first["headers"]["argsrepr"], second["headers"]["argsrepr"] = \
        second["headers"]["argsrepr"], first["headers"]["argsrepr"]
    # the body's positional arguments: [args, kwargs, embed][0]
    first["_body_decoded"][0], second["_body_decoded"][0] = \
        second["_body_decoded"][0], first["_body_decoded"][0]
    return case


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_client_sends_what_upstream_sends(app, name):
    upstream = CASES[name]
    if name == "chord_nested_group":
        upstream = in_header_order(upstream)
    ours = send_ours(app, name)
    assert ours["signature"] == upstream["signature"]
    assert normalized(ours) == normalized(upstream)


def test_every_upstream_case_is_sent_by_ours(app):
    assert set(_canvases(app)) == set(CASES)


def _writes(commands: list[list[str]]) -> list[str]:
    """The publishes and chord-key writes, in order: ``LPUSH`` or ``SET .s`` etc."""
    out = []
    for command, key in (([*words, ""])[:2] for words in commands):
        if command == "LPUSH":
            out.append("LPUSH")
        elif key.startswith("celery-taskset-meta-") and command in ("SET", "SETEX", "DEL"):
            out.append(f"{command} {UUID.sub('G', key)}")
    return out


@pytest.mark.parametrize("name", ["chord", "chain_led_by_chord", "chord_nested_group",
                                  "chord_header_chain_to_group"])
def test_chord_size_is_stored_before_the_header_is_published(app, name):
    theirs = _writes(CASES[name]["commands"])
    ours = _writes(send_ours(app, name)["commands"])
    # upstream: the size goes out between the members, just before the last one
    size_at = theirs.index("SET celery-taskset-meta-G.s")
    assert theirs[size_at - 1] == "DEL celery-taskset-meta-G.c" and theirs[-1] == "LPUSH"
    assert "LPUSH" in theirs[:size_at - 1]
    # ours: the size (and the saved header, if any) first, then every member
    first_push = ours.index("LPUSH")
    assert "DEL celery-taskset-meta-G.c" in ours[:first_push]
    assert "SET celery-taskset-meta-G.s" in ours[:first_push]
    assert set(ours[first_push:]) == {"LPUSH"}
    # the same keys written (our pipeline may push a group's members in one LPUSH)
    assert sorted(w for w in ours if w != "LPUSH") == sorted(w for w in theirs if w != "LPUSH")
