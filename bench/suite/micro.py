"""Micro benchmarks: serializers, protocol v2 messages, kombu envelopes, result metas, sends.

No server: the apps here use ``memory://`` and ``cache+memory://`` (and one a Redis URL that
is never connected to, for the Redis send template). Values are seconds per
operation. Run by hand under pyperf (``python bench/suite/micro.py -o micro.json --fast``)
or through the suite (``bench/suite/run.py --only micro``); see timing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from timing import Benchmark, TimeFunc, main, simple

#: Typical task arguments: an id, an address, a small order document.
ARGS: list[Any] = [
    98765,
    "user-1234@example.com",
    {
        "items": [{"sku": "A-1", "qty": 2, "price": 9.99}, {"sku": "B-22", "qty": 1, "price": 24.5}],
        "note": "leave at the door",
        "express": True,
    },
]
KWARGS: dict[str, Any] = {"retries": 3, "tags": ["web", "eu"], "deadline": None}
EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: A typical return value.
RESULT: dict[str, Any] = {
    "status": "ok",
    "order_id": 98765,
    "total": 44.48,
    "lines": [{"sku": "A-1", "amount": 19.98}, {"sku": "B-22", "amount": 24.5}],
    "warnings": [],
    "shipped": False,
}
TASK = "proj.tasks.process_order"
TASK_ID = "d5a3c8f0-6a4e-4a55-9b7e-2f1c0e9d8a71"


def _codec(serializer: str, obj: Any, decode: bool) -> contextlib.AbstractContextManager[TimeFunc]:
    from celery.messaging import serialization

    payload, content_type, encoding = serialization.dumps(obj, serializer)
    if not decode:
        return simple(lambda: serialization.dumps(obj, serializer))
    accept = serialization.accept_set([serializer])
    return simple(lambda: serialization.loads(payload, content_type, encoding, accept))


def _app() -> Any:
    from celery import Celery

    app = Celery("micro", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name=TASK)
    def process_order(*args: Any, **kwargs: Any) -> None: ...

    return app


def message_build() -> contextlib.AbstractContextManager[TimeFunc]:
    from celery.messaging.protocol import build_task_message

    return simple(lambda: build_task_message(TASK, ARGS, KWARGS, task_id=TASK_ID))


def envelope_encode() -> contextlib.AbstractContextManager[TimeFunc]:
    from celery.messaging.protocol import build_task_message
    from celery.transport import envelope

    message = build_task_message(TASK, ARGS, KWARGS, task_id=TASK_ID)
    return simple(lambda: envelope.encode(message, TASK_ID))


def message_decode() -> contextlib.AbstractContextManager[TimeFunc]:
    """What a worker does with one fetched message: envelope, headers check, body."""
    from celery.messaging import protocol, serialization
    from celery.transport import envelope

    _, raw, _ = envelope.encode(protocol.build_task_message(TASK, ARGS, KWARGS, task_id=TASK_ID))
    accept = serialization.accept_set(["json"])

    def decode() -> None:
        message = envelope.decode(TASK_ID, raw, "celery").message
        protocol.check_headers(message.headers)
        protocol.decode_body(message.body, message.content_type, message.content_encoding, accept)

    return simple(decode)


def result_encode() -> contextlib.AbstractContextManager[TimeFunc]:
    backend = _app().backend
    return simple(lambda: backend.encode(backend.prepare_meta(TASK_ID, "SUCCESS", RESULT)))


def result_decode() -> contextlib.AbstractContextManager[TimeFunc]:
    backend = _app().backend
    payload = backend.encode(backend.prepare_meta(TASK_ID, "SUCCESS", RESULT))
    return simple(lambda: backend.meta_from_payload(TASK_ID, payload))


def app_prepare() -> contextlib.AbstractContextManager[TimeFunc]:
    """The client side of ``apply_async`` before any I/O: routing, headers, body."""
    app = _app()
    task = app.tasks[TASK]
    return simple(lambda: app._prepare(TASK, ARGS, KWARGS, task, {}))


def template_fill() -> contextlib.AbstractContextManager[TimeFunc]:
    """A plain ``delay()``'s envelope filled into its task's template (app/template.py),
    what replaces ``app_prepare`` and ``envelope_encode`` for such a send on Redis."""
    from celery import Celery
    from celery.app.template import Template

    app = Celery("micro", broker="redis://127.0.0.1:1/0", set_as_current=False)  # no I/O

    @app.task(name=TASK)
    def process_order(*args: Any, **kwargs: Any) -> None: ...

    template = Template.make(app, process_order)
    assert template is not None
    return simple(lambda: template.fill(TASK_ID, ARGS, KWARGS))


@contextlib.contextmanager
def send_memory() -> Iterator[TimeFunc]:
    """``await task.aapply_async(...)`` on the in-process broker: the whole client path."""
    app = _app()
    task, loop = app.tasks[TASK], asyncio.new_event_loop()

    async def send(loops: int) -> float:
        t0 = loop.time()
        for _ in range(loops):
            await task.aapply_async(ARGS, KWARGS, queue="micro")
        elapsed = loop.time() - t0
        await app.transport.purge("micro")
        return elapsed

    try:
        yield lambda loops: loop.run_until_complete(send(loops))
    finally:
        loop.close()
        app.close()


def _dates() -> contextlib.AbstractContextManager[TimeFunc]:
    """Rich types take kombu's ``__type__`` path in JSON: a datetime and a date."""
    from celery.messaging import serialization

    obj = [ARGS, {"at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2)}]
    return simple(lambda: serialization.dumps(obj, "json"))


def _codecs() -> dict[str, Benchmark]:
    body = (ARGS, KWARGS, EMBED)
    table: dict[str, Benchmark] = {}
    for serializer in ("json", "msgpack"):
        for what, obj in (("args", body), ("result", RESULT)):
            for verb, decode in (("dumps", False), ("loads", True)):
                table[f"micro.{serializer}_{verb}_{what}"] = (
                    lambda s=serializer, o=obj, d=decode: _codec(s, o, d))
    return table


BENCHMARKS: dict[str, Benchmark] = {
    **_codecs(),
    "micro.json_dumps_datetimes": _dates,
    "micro.message_build": message_build,
    "micro.envelope_encode": envelope_encode,
    "micro.message_decode": message_decode,
    "micro.result_encode": result_encode,
    "micro.result_decode": result_decode,
    "micro.app_prepare": app_prepare,
    "micro.template_fill": template_fill,
    "micro.send_memory": send_memory,
}

if __name__ == "__main__":
    main(BENCHMARKS)
