"""Signatures and the canvas as data: layout, options, composition, and the messages they
make (collected by a Dispatch, nothing sent). No network."""

from __future__ import annotations

import json
import pickle

import pytest

from celery import Celery, Signature, chain, chord, chunks, group, maybe_signature, signature
from celery.canvas import xmap, xstarmap
from celery.canvas.chains import _chain
from celery.canvas.chords import _chord
from celery.canvas.dispatch import Dispatch
from celery.exceptions import InvalidSignature
from celery.messaging.protocol import decode_body
from celery.messaging.serialization import accept_set


@pytest.fixture
def app(tmp_path):
    # SQLite results: a backend that joins chords itself (cache+memory:// falls back to
    # celery.chord_unlock, see test_a_backend_without_a_join_gets_celery_chord_unlock).
    app = Celery("canvas", broker="memory://canvas-unit", backend=f"db+sqlite:///{tmp_path}/r.db",
                 set_as_current=False)

    @app.task(name="canvas.add")
    def add(x, y):
        return x + y

    @app.task(name="canvas.tsum")
    def tsum(values):
        return sum(values)

    yield app
    app.close()


@pytest.fixture
def add(app):
    return app.tasks["canvas.add"]


@pytest.fixture
def tsum(app):
    return app.tasks["canvas.tsum"]


def collected(app, sig, *args, **options):
    """The messages sending ``sig`` would publish, in order, decoded: (headers, body)."""
    dispatch = Dispatch(app)
    result = sig._collect(dispatch, args, None, options)
    out = []
    for _, message, _ in dispatch._messages:
        body = decode_body(message.body, message.content_type, message.content_encoding,
                           accept_set(["json"]))
        out.append((message.headers, body))
    return result, out, dispatch


# -- signatures as data -------------------------------------------------------------------------


def test_signature_is_celery_dict(add):
    sig = add.s(2, 2).set(countdown=10)
    assert dict(sig) == {"task": "canvas.add", "args": (2, 2), "kwargs": {},
                         "options": {"countdown": 10}, "subtask_type": None, "immutable": False}
    assert json.loads(json.dumps(sig))["args"] == [2, 2]


def test_signature_round_trips_through_json_and_pickle(add, app):
    sig = add.s(1, y=2).set(queue="q")
    sig.link(add.s(3))
    back = signature(json.loads(json.dumps(sig)), app=app)
    assert isinstance(back, Signature) and back.task == "canvas.add"
    assert back.kwargs == {"y": 2} and back.options["queue"] == "q"
    assert maybe_signature(back.options["link"][0]).args == [3]
    assert pickle.loads(pickle.dumps(sig)) == sig


def test_upstream_signature_dicts_become_the_right_kinds(app):
    # What Celery 5.x puts in a message body's embed (see tests/compat/data).
    step = {"task": "proj.add", "args": [3], "kwargs": {}, "options": {"task_id": "t1"},
            "subtask_type": None, "immutable": False}
    as_chain = {"task": "celery.chain", "args": [], "kwargs": {"tasks": [step, step]},
                "options": {}, "subtask_type": "chain", "immutable": False}
    as_group = {"task": "celery.group", "args": [], "kwargs": {"tasks": [step]},
                "options": {"task_id": "g"}, "subtask_type": "group", "immutable": False}
    as_chord = {"task": "celery.chord", "args": [],
                "kwargs": {"kwargs": {}, "header": [step], "body": step},
                "options": {}, "subtask_type": "chord", "immutable": False}
    assert isinstance(signature(as_chain, app=app), _chain)
    assert isinstance(signature(as_group, app=app), group)
    made = signature(as_chord, app=app)
    assert isinstance(made, _chord) and made.body.id == "t1" and made.tasks[0].task == "proj.add"
    assert dict(made)["kwargs"]["kwargs"] == {}


@pytest.mark.parametrize("bad", [
    {"task": "x", "subtask_type": "nope"},
    {"args": []},
    {"task": "celery.chain", "kwargs": {}, "subtask_type": "chain"},
    {"task": "celery.group", "kwargs": {"tasks": "notalist"}, "subtask_type": "group"},
    {"task": "x", "args": "abc"},
    {"task": "x", "kwargs": [1]},
])
def test_malformed_signature_dicts_raise_invalid_signature(app, bad):
    with pytest.raises(InvalidSignature):
        signature(bad, app=app)


def test_maybe_signature_refuses_what_is_not_a_signature():
    assert maybe_signature(None) is None
    with pytest.raises(InvalidSignature):
        maybe_signature(42)


def test_partial_arguments_and_options_merge_as_celery(add):
    sig = add.s(2).set(queue="a", group_id="g1")
    args, kwargs, options = sig._merge((1,), {"z": 3}, {"queue": "b", "group_id": "g2"})
    assert args == (1, 2) and kwargs == {"z": 3}
    assert options == {"queue": "b", "group_id": "g1"}  # group_id, once set, stays
    frozen = add.si(5)
    assert frozen._merge((1,), {"z": 3})[:2] == ((5,), {})


def test_clone_replace_and_set(add):
    sig = add.s(1).set(queue="q")
    clone = sig.clone((0,), countdown=3)
    assert clone.args == (0, 1) and clone.options == {"queue": "q", "countdown": 3}
    assert sig.options == {"queue": "q"}  # the original is untouched
    replaced = sig.replace(args=(9, 9), options={})
    assert replaced.args == (9, 9) and replaced.options == {}
    assert sig.set(immutable=True).immutable is True


def test_link_error_on_error_and_flatten_links(add):
    sig = add.s(1, 1)
    cb = add.s(10)
    assert sig.link(cb) is cb
    sig.link(cb)  # linked once
    eb = add.si(0, 0)
    assert sig.on_error(eb) is sig
    assert sig.options["link"] == [cb] and sig.options["link_error"] == [eb]
    assert [s.args for s in sig.flatten_links()] == [(1, 1), (10,)]


def test_freeze_fixes_ids_before_sending(add):
    sig = add.s(1, 1)
    result = sig.freeze(group_id="g", root_id="r", group_index=3)
    assert result.id == sig.id == sig.options["task_id"]
    assert sig.options["group_id"] == "g" and sig.options["root_id"] == "r"
    assert sig.options["group_index"] == 3
    assert sig.freeze().id == result.id  # frozen once


# -- composing -------------------------------------------------------------------------------


def test_or_makes_chains_and_chords(add, tsum):
    assert isinstance(add.s(1, 1) | add.s(2), _chain)
    three = add.s(1, 1) | add.s(2) | add.s(3)
    assert isinstance(three, _chain) and [t.args for t in three.tasks] == [(1, 1), (2,), (3,)]
    header = group(add.s(1, 1), add.s(2, 2))
    made = header | tsum.s()
    assert isinstance(made, _chord) and made.body.task == "canvas.tsum"
    assert len(made.tasks) == 2
    longer = made | add.s(1)
    assert isinstance(longer, _chord) and isinstance(longer.body, _chain)
    assert isinstance(add.s(1, 1) | group(add.s(1)), _chain)
    assert (add.s(1, 1) | group(add.s(1))).tasks[1].task == "canvas.add"  # group of one unrolled


def test_chain_of_a_group_and_a_task_is_a_chord(add, tsum):
    made = chain(group(add.s(1, 1), add.s(2, 2)), tsum.s())
    assert isinstance(made, _chord) and made.body.task == "canvas.tsum"
    flat = chain(add.s(1, 1), chain(add.s(2), add.s(3)))
    assert [t.args for t in flat.tasks] == [(1, 1), (2,), (3,)]


# -- the messages sending makes -----------------------------------------------------------------


def test_chain_sends_its_first_step_carrying_the_rest_last_first(app, add):
    result, messages, _ = collected(app, chain(add.s(1, 1), add.s(2), add.s(3)))
    assert len(messages) == 1
    headers, body = messages[0]
    assert headers["task"] == "canvas.add" and body.args == [1, 1]
    rest = body.embed["chain"]
    assert [s["args"] for s in rest] == [[3], [2]]
    # The chain's result is the last step's; its parents lead back to the first.
    assert result.id == rest[0]["options"]["task_id"]
    assert result.parent.id == rest[1]["options"]["task_id"]
    assert result.parent.parent.id == headers["id"]


def test_group_sends_every_member_in_one_batch_with_its_index(app, add):
    result, messages, dispatch = collected(app, group(add.s(i, i) for i in range(5)))
    assert [h["group"] for h, _ in messages] == [result.id] * 5
    assert [h["group_index"] for h, _ in messages] == [0, 1, 2, 3, 4]
    assert [r.id for r in result.results] == [h["id"] for h, _ in messages]
    assert dispatch.chord_sizes == []


def test_group_refuses_links_as_celery_does(add):
    with pytest.raises(TypeError, match="use a chord"):
        group(add.s(1, 1)).apply_async(link=add.s(1))


def test_chord_stores_its_size_and_sends_the_header_with_the_body(app, add, tsum):
    result, messages, dispatch = collected(app, chord((add.s(i, i) for i in range(3)), tsum.s()))
    group_id = messages[0][0]["group"]
    assert dispatch.chord_sizes == [(group_id, 3)]
    assert all(h["group"] == group_id for h, _ in messages)
    bodies = [b.embed["chord"] for _, b in messages]
    assert all(c["task"] == "canvas.tsum" and c["options"]["task_id"] == result.id for c in bodies)
    assert result.parent.id == group_id
    assert [r.id for r in result.parent.results] == [h["id"] for h, _ in messages]


def test_a_backend_without_a_join_gets_celery_chord_unlock():
    app = Celery("canvas", broker="memory://canvas-unlock", backend="cache+memory://canvas-unlock",
                 set_as_current=False)
    try:
        sig = chord([app.signature("canvas.add", (1, 1))], app.signature("canvas.tsum"))
        _, messages, dispatch = collected(app, sig)
        headers, body = messages[-1]
        assert headers["task"] == "celery.chord_unlock" and headers["eta"] is not None
        assert body.args[0] == messages[0][0]["group"] and body.args[1]["task"] == "canvas.tsum"
        assert body.kwargs["result"] == [[[messages[0][0]["id"], None], None]]
        assert dispatch.chord_sizes == [(messages[0][0]["group"], 1)]  # stored by none
    finally:
        app.close()


def test_chord_without_header_sends_its_body_with_an_empty_list(app, tsum):
    _, messages, dispatch = collected(app, chord([], tsum.s()))
    assert len(messages) == 1 and messages[0][1].args == [[]]
    assert dispatch.chord_sizes == []


def test_chord_in_a_chain_carries_the_rest_on_its_body(app, add, tsum):
    made = add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s() | add.s(10)
    _, messages, _ = collected(app, made)
    assert len(messages) == 1
    # As Celery 5.7 sends it: the chord's body chain is unrolled into the chain itself.
    rest = messages[0][1].embed["chain"]
    assert [s["subtask_type"] for s in rest] == [None, "chord"]
    assert rest[0]["args"] == [10] and rest[1]["kwargs"]["body"]["task"] == "canvas.tsum"


def test_chunks_map_and_starmap_are_builtin_task_messages(app, add):
    _, messages, _ = collected(app, add.chunks([(1, 1), (2, 2), (3, 3)], 2))
    assert [h["task"] for h, _ in messages] == ["celery.starmap", "celery.starmap"]
    assert [b.kwargs["it"] for _, b in messages] == [[[1, 1], [2, 2]], [[3, 3]]]
    _, messages, _ = collected(app, add.map([1, 2]))
    assert messages[0][0]["task"] == "celery.map" and messages[0][1].kwargs["task"]["task"] == "canvas.add"
    assert isinstance(add.starmap([(1, 2)]), xstarmap) and isinstance(add.map([1]), xmap)
    assert isinstance(add.chunks([], 1), chunks)


def test_no_result_backend_refuses_a_chord_before_sending_anything(add, tsum):
    bare = Celery("bare", broker="memory://canvas-bare", set_as_current=False)
    try:
        sig = chord([bare.signature("x.y")], bare.signature("x.z"))
        with pytest.raises(NotImplementedError, match="requires a result backend"):
            sig.apply_async()
        assert bare.portal.call(bare.transport.queue_length("celery")) == 0
    finally:
        bare.close()


# -- eager ------------------------------------------------------------------------------------


@pytest.fixture
def eager(app):
    app.conf.task_always_eager = True
    return app


def test_eager_canvas_runs_in_process(eager, add, tsum):
    assert chain(add.s(1, 2), add.s(3), add.s(4)).delay().get() == 10
    assert group(add.s(i, i) for i in range(4)).delay().get() == [0, 2, 4, 6]
    assert chord((add.s(i, i) for i in range(4)), tsum.s()).delay().get() == 12
    assert add.chunks(zip(range(4), range(4), strict=True), 3).delay().get() == [[0, 2, 4], [6]]
    assert add.starmap([(1, 2), (3, 4)]).apply().get() == [3, 7]


def test_eager_links_run_with_the_return_value(eager, app, add):
    seen = []

    @app.task
    def record(value):
        seen.append(value)

    @app.task
    def boom():
        raise KeyError("k")

    @app.task
    def on_err(request, exc, traceback):
        seen.append((request.id, type(exc).__name__))

    add.apply_async((2, 3), link=record.s())
    result = boom.apply_async(link_error=on_err.s())
    assert seen == [5, (result.id, "KeyError")]


def test_app_task_is_the_base_class_and_its_handlers_run_eagerly(tmp_path):
    calls = []

    class Base(Celery("x", set_as_current=False).Task):
        def before_start(self, task_id, args, kwargs):
            calls.append(("before", tuple(args)))

        def on_success(self, retval, task_id, args, kwargs):
            calls.append(("success", retval))

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            calls.append(("failure", type(exc).__name__, "KeyError" in einfo.traceback))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after", status))

    app = Celery("handlers", broker="memory://handlers", task_cls=Base, set_as_current=False,
                 task_always_eager=True)
    try:
        assert app.Task is Base

        @app.task
        def double(x):
            if x < 0:
                raise KeyError(x)
            return x * 2

        assert isinstance(double, Base)
        assert double.delay(2).get() == 4
        assert double.apply((-1,)).state == "FAILURE"
        assert calls == [("before", (2,)), ("success", 4), ("after", "SUCCESS"), ("before", (-1,)),
                         ("failure", "KeyError", True), ("after", "FAILURE")]
    finally:
        app.close()
