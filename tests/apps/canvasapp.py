"""App for the canvas tests: a worker process runs these (``-A tests.apps.canvasapp``).

Broker and backend come from ``CANVASAPP_BROKER``/``CANVASAPP_BACKEND``. Tasks that must
show the test what happened inside the worker (handlers, errbacks) store a "mark": a
SUCCESS result under the id ``mark-<key>``, which the test waits for with ``get()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from celery import Celery, Task, current_app, current_task, group
from celery.result import allow_join_result
from celery.utils.log import get_task_logger

BROKER = os.environ.get("CANVASAPP_BROKER", "redis://127.0.0.1:6379/14")
BACKEND = os.environ.get("CANVASAPP_BACKEND", BROKER)
app = Celery("canvasapp", broker=BROKER, backend=BACKEND)
logger = get_task_logger(__name__)


def mark(key: str, value: Any) -> None:
    """Store ``value`` as the result of ``mark-<key>`` (the test waits for it)."""
    app.backend.store_result(f"mark-{key}", value, "SUCCESS")


@app.task(name="cv.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="cv.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="cv.aadd")
async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@app.task(name="cv.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(name="cv.atsum")
async def atsum(values: list[int]) -> int:
    return sum(values)


@app.task(name="cv.identity")
def identity(value: Any) -> Any:
    return value


@app.task(name="cv.sleepy_echo")
async def sleepy_echo(value: Any, seconds: float) -> Any:
    await asyncio.sleep(seconds)
    return value


@app.task(name="cv.fail")
def fail(*args: Any) -> None:
    raise ValueError(f"fail{args!r}")


@app.task(name="cv.afail")
async def afail(*args: Any) -> None:
    raise KeyError(f"afail{args!r}")


# -- callbacks and errbacks ---------------------------------------------------------------------


@app.task(name="cv.record")
def record(value: Any, key: str) -> Any:
    mark(key, value)
    return value


@app.task(name="cv.errback_old")
def errback_old(task_id: str, key: str) -> None:
    """An old-style errback: it gets the failed task's id."""
    mark(key, {"task_id": task_id})


@app.task(name="cv.errback_new")
def errback_new(request: Any, exc: BaseException, traceback: Any, key: str) -> None:
    """A new-style errback (more than one argument): called in the worker with the request."""
    mark(key, {"task_id": request.id, "exc": repr(exc), "has_traceback": bool(traceback)})


@app.task(name="cv.aerrback_new")
async def aerrback_new(request: Any, exc: BaseException, traceback: Any, key: str) -> None:
    mark(key, {"task_id": request.id, "exc": repr(exc), "async": True})


# -- handlers -------------------------------------------------------------------------------------


class Recording(Task):
    """A base class whose handlers mark what they were called with."""

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        mark(f"before-{task_id}", list(args))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        mark(f"success-{task_id}", retval)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        mark(f"failure-{task_id}", {"exc": repr(exc), "traceback": "Traceback" in str(einfo)})

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        mark(f"retry-{task_id}", repr(exc))

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:
        mark(f"after-{task_id}", status)


@app.task(name="cv.handled", base=Recording)
def handled(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * 2


@app.task(name="cv.ahandled", base=Recording)
async def ahandled(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * 3


@app.task(name="cv.handled_retry", base=Recording, bind=True, max_retries=1,
          default_retry_delay=0.05)
def handled_retry(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=OSError("again"))
    return "retried"


# -- replace, children, joining inside a task --------------------------------------------------


@app.task(name="cv.replacer", bind=True)
def replacer(self: Any, n: int) -> None:
    self.replace(add.s(n, n) | mul.s(10))


@app.task(name="cv.areplacer", bind=True)
async def areplacer(self: Any, n: int) -> None:
    await self.areplace(aadd.s(n, 1))


@app.task(name="cv.group_replacer", bind=True)
def group_replacer(self: Any, n: int) -> None:
    self.replace(group(add.s(i, i) for i in range(n)))


@app.task(name="cv.spawn")
def spawn() -> str:
    add.delay(1, 1)
    group(add.s(2, 2), add.s(3, 3)).delay()
    return "spawned"


@app.task(name="cv.get_inside")
def get_inside() -> str:
    try:
        add.delay(1, 1).get(timeout=5)
    except RuntimeError as exc:
        return f"refused: {exc}"
    return "allowed?!"


@app.task(name="cv.get_allowed")
def get_allowed() -> int:
    with allow_join_result():
        return add.delay(20, 22).get(timeout=10)


@app.task(name="cv.add_to_chord", bind=True)
def add_to_chord(self: Any, x: int) -> int:
    self.add_to_chord(add.s(x, 100))
    return x


@app.task(name="cv.who")
def who() -> dict[str, Any]:
    logger.info("who is running")
    return {"task": current_task.name, "app": current_app.main, "id": current_task.request.id}


@app.task(name="cv.slow")
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="cv.parent_state", bind=True)
def parent_state(self: Any, values: list[Any]) -> str:
    """A chord body: the stored state of the member whose report completed the chord."""
    return app.AsyncResult(self.request.parent_id).state
