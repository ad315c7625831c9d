"""A FastAPI app that sends Celery tasks and awaits their results without blocking its loop.

Serve it:  uvicorn examples.fastapi.main:api --port 8000
(with a worker running: see tasks.py). ``await task.adelay(...)`` publishes on the server's
own event loop, and ``await result`` (``result.aget()``) waits for the result there too: while
one request waits for a slow task, the same process keeps answering others.
"""

from __future__ import annotations

from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult
from fastapi import FastAPI, HTTPException

from .tasks import add, app, fail, slow_echo

api = FastAPI(title="celery-asyncio FastAPI example")

#: How long a request waits for a task's result before answering 504.
RESULT_TIMEOUT = 30.0


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/add")
async def add_and_wait(x: int, y: int) -> dict[str, object]:
    """Send ``add`` and await its result in the handler."""
    result = await add.adelay(x, y)
    return {"task_id": result.id, "result": await _wait(result)}


@api.get("/slow")
async def slow(value: str, seconds: float) -> dict[str, object]:
    result = await slow_echo.adelay(value, seconds)
    return {"task_id": result.id, "result": await _wait(result)}


@api.post("/add", status_code=202)
async def add_later(x: int, y: int) -> dict[str, str]:
    """Send ``add`` and answer at once with its id; poll ``/tasks/{id}`` for the outcome."""
    result = await add.adelay(x, y)
    return {"task_id": result.id}


@api.get("/tasks/{task_id}")
async def task_state(task_id: str) -> dict[str, object]:
    """A task's state, and its result once it has one (does not wait). ``astate()`` reads
    the result store without blocking the loop (``result.state`` would); once the state is
    ready it is kept, so ``result.result`` reads nothing more."""
    result = AsyncResult(task_id, app=app)
    state = await result.astate()
    body: dict[str, object] = {"task_id": task_id, "state": state}
    if state == "SUCCESS":
        body["result"] = result.result
    elif state == "FAILURE":
        body["error"] = repr(result.result)
    return body


@api.get("/fail")
async def fail_and_wait(message: str) -> dict[str, object]:
    """A task that raises: its error comes back as an HTTP 500 with the message."""
    result = await fail.adelay(message)
    return {"task_id": result.id, "result": await _wait(result)}


async def _wait(result: AsyncResult) -> object:
    try:
        return await result.aget(timeout=RESULT_TIMEOUT)
    except ResultTimeout:
        raise HTTPException(504, f"task {result.id} did not finish within {RESULT_TIMEOUT} s"
                            ) from None
    except Exception as exc:  # the task's own error, re-raised by aget
        raise HTTPException(500, f"task {result.id} failed: {exc!r}") from None
