"""Canvas scenarios, written once and run by either side's client (upstream Celery's
Python or ours), against the other side's workers (tests/compat/test_upstream_canvas_interop.py).

Each scenario sends one canvas with ``app`` (made by ``canvasapp.make_app``) and returns
what came back, as JSON-able data: values, and ``[exception type, args]`` for errors. The
test holds the expected outcomes; nothing here decides whether a scenario passed.
"""

import uuid

from celery import chain, chord, group

TIMEOUT = 15


def _error(exc):
    return [type(exc).__name__, list(exc.args)]


def _get(result, **options):
    try:
        return {"value": result.get(timeout=TIMEOUT, **options)}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return {"error": _error(exc)}


def chain_three(app, side):
    add = app.tasks["interop.add"]
    res = chain(add.s(1, 1), add.s(2), add.s(3)).apply_async()
    return {**_get(res), "parents": [res.parent.get(timeout=TIMEOUT),
                                     res.parent.parent.get(timeout=TIMEOUT)]}


def group_four(app, side):
    add = app.tasks["interop.add"]
    res = group(add.s(i, i) for i in range(4)).apply_async()
    return {**_get(res), "members": len(res.results)}


def chord_sum(app, side):
    add, tsum = app.tasks["interop.add"], app.tasks["interop.tsum"]
    res = chord([add.s(i, i) for i in range(4)], tsum.s()).apply_async()
    return {**_get(res), "header": res.parent.get(timeout=TIMEOUT)}


def chord_in_chain(app, side):
    add, tsum = app.tasks["interop.add"], app.tasks["interop.tsum"]
    res = chain(add.s(1, 1), chord([add.s(10), add.s(20)], tsum.s()), add.s(5)).apply_async()
    return _get(res)


def chord_nested_header(app, side):
    """A group in the header is flattened; a chain ending in a group keeps its shape (the
    header is saved as a GroupResult and the join rebuilds it)."""
    add, echo = app.tasks["interop.add"], app.tasks["interop.echo"]
    flat = chord([add.s(1, 1), group(add.s(2, 2), add.s(3, 3))], echo.s()).apply_async()
    shaped = chord([add.s(1, 1), chain(add.s(2, 2), group(add.s(1), add.s(2)))],
                   echo.s()).apply_async()
    return {"flat": _get(flat), "shaped": _get(shaped)}


def chord_failing_member(app, side):
    add, fail = app.tasks["interop.add"], app.tasks["interop.fail"]
    res = chord([add.s(1, 1), fail.s("x")], app.tasks["interop.tsum"].s()).apply_async()
    # the body's own state: following the parents would raise the member's error instead,
    # or not, depending on which of the two stored states the client saw first
    return {**_get(res, follow_parents=False), "failed_id": res.parent.results[1].id,
            "member": _get(res.parent.results[1])}


def chunks_map_starmap(app, side):
    add, tsum = app.tasks["interop.add"], app.tasks["interop.tsum"]
    return {"chunks": _get(add.chunks([(i, i) for i in range(6)], 2).apply_async()),
            "map": _get(tsum.map([[1, 2], [3, 4]]).apply_async()),
            "starmap": _get(add.starmap([(1, 2), (3, 4)]).apply_async())}


def link_callback(app, side):
    add = app.tasks["interop.add"]
    callback_id = str(uuid.uuid4())
    res = add.apply_async((2, 2), link=add.s(10).set(task_id=callback_id))
    return {**_get(res), "callback": _get(app.AsyncResult(callback_id))}


def link_error_old_and_new(app, side):
    fail = app.tasks["interop.fail"]
    errback_id = str(uuid.uuid4())
    res = fail.apply_async(("boom",), link_error=[
        app.tasks["interop.errback_old"].s().set(task_id=errback_id),
        app.tasks["interop.errback_new"].s()])
    return {**_get(res), "task_id": res.id, "old": _get(app.AsyncResult(errback_id)),
            "new": _get(app.AsyncResult(f"errback-new-{res.id}"))}


def chain_on_error(app, side):
    """A chain's errback goes on every step: the one that fails calls it."""
    add, fail = app.tasks["interop.add"], app.tasks["interop.fail"]
    res = chain(add.s(1, 1), fail.s()).on_error(app.tasks["interop.errback_new"].s()).apply_async()
    return {**_get(res), "new": _get(app.AsyncResult(f"errback-new-{res.id}"))}


def chain_failing_step(app, side):
    add, fail = app.tasks["interop.add"], app.tasks["interop.fail"]
    res = chain(add.s(1, 1), fail.s(), add.s(1)).apply_async()
    return {**_get(res), "failed_step": _get(res.parent), "first": _get(res.parent.parent)}


def replaced(app, side):
    """Task.replace by a chain and by a group: alone, as a chain step, as a chord member."""
    t = app.tasks
    add, echo = t["interop.add"], t["interop.echo"]
    by_chain, by_group = t["interop.replace_with_chain"], t["interop.replace_with_group"]
    return {"chain": _get(by_chain.delay(1)), "group": _get(by_group.delay(1)),
            "in_chain": _get(chain(by_chain.s(1), add.s(100)).apply_async()),
            "in_chord": _get(chord([by_group.s(1), add.s(2, 2)], echo.s()).apply_async())}


def async_steps(app, side):
    """``async def`` steps (our worker only): by name, as upstream's client knows no such
    task."""
    add_async = app.signature("interop.add_async")
    add, tsum = app.tasks["interop.add"], app.tasks["interop.tsum"]
    return {"chain": _get(chain(add_async.clone((1, 1)), add.s(2)).apply_async()),
            "chord": _get(chord([add_async.clone((i, i)) for i in range(3)], tsum.s())
                          .apply_async())}


def mixed_chord(app, side):
    """Sixteen members on the queue both sides' workers consume; the body goes to a queue
    nobody consumes, so that the test can count how many times it was sent."""
    whoami = app.tasks["interop.whoami"]
    header = [whoami.s(i, 0.1).set(queue="interop-mixed") for i in range(16)]
    body = app.tasks["interop.echo"].s().set(queue=f"interop-hold-{side}")
    res = chord(header, body).apply_async()
    return {"header": _get(res.parent), "body_id": res.id}


SCENARIOS = {f.__name__: f for f in (
    chain_three, group_four, chord_sum, chord_in_chain, chord_nested_header,
    chord_failing_member, chunks_map_starmap, link_callback, link_error_old_and_new,
    chain_on_error, chain_failing_step, replaced, async_steps, mixed_chord)}
