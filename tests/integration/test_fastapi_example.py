"""examples/fastapi/: the app served by a real uvicorn process sends tasks to a real worker
process with ``await task.adelay()`` and awaits their results in its handlers; while one
request awaits a slow task, the same server answers others (its loop is not blocked)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from ..conftest import IN_CI, flushed_redis_url
from .worker_harness import CommandProcess

# FastAPI and uvicorn run in the server's process only: looked for, not imported, here (on a
# free-threaded build, pydantic-core must not reach the test process: ci/ft-test.sh).
_missing = [name for name in ("httpx", "fastapi", "uvicorn") if find_spec(name) is None]
if _missing:
    if IN_CI:  # CI installs the 'fastapi' extra (ci/setup.sh, ci/ft-test.sh): never skip there
        raise RuntimeError(f"{', '.join(_missing)} not installed, and CI=true: install "
                           "celery-asyncio[fastapi]")
    pytest.skip(f"{', '.join(_missing)} not installed (the 'fastapi' extra)",
                allow_module_level=True)

import httpx  # noqa: E402 - only once it is known to be there

REDIS_DB = 5
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """A worker and a uvicorn server for examples/fastapi, both real processes; the base URL."""
    url = flushed_redis_url(REDIS_DB)
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    worker = CommandProcess([sys.executable, "-m", "celery", "-A", "examples.fastapi.tasks",
                             "worker", "-l", "INFO", "-c", "4"], cwd=ROOT, env=env)
    port = _free_port()
    server = CommandProcess([sys.executable, "-m", "uvicorn", "examples.fastapi.main:api",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env)
    try:
        worker.wait_for_line(" ready: consuming")
        server.wait_for_line("Uvicorn running on")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        assert worker.stop() == 0, worker.output


async def test_handlers_await_task_results(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        added = (await client.get("/add", params={"x": 2, "y": 40})).json()
        assert added["result"] == 42
        later = await client.post("/add", params={"x": 1, "y": 1})
        assert later.status_code == 202
        task_id = later.json()["task_id"]
        for _ in range(200):
            state = (await client.get(f"/tasks/{task_id}")).json()
            if state["state"] == "SUCCESS":
                break
            await asyncio.sleep(0.05)
        assert state == {"task_id": task_id, "state": "SUCCESS", "result": 2}
        unknown = (await client.get("/tasks/no-such-task")).json()
        assert unknown == {"task_id": "no-such-task", "state": "PENDING"}
        failed = await client.get("/fail", params={"message": "no luck"})
        assert failed.status_code == 500
        assert "ValueError('no luck')" in failed.json()["detail"]


async def test_a_slow_task_awaited_does_not_block_other_requests(served: str) -> None:
    """The slow request is still waiting (its task sleeps 5 s) when the server has answered
    a plain request and a whole other send-and-await round trip through the worker."""
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        slow = asyncio.create_task(client.get("/slow", params={"value": "late", "seconds": 5}))
        await asyncio.sleep(0.2)  # let the slow request reach the server first
        health = await client.get("/health")
        added = await client.get("/add", params={"x": 3, "y": 4})
        assert not slow.done(), "the slow request finished before the others were answered"
        assert health.json() == {"status": "ok"}
        assert added.json()["result"] == 7
        answer = await slow
        assert answer.status_code == 200
        assert answer.json()["result"] == "late"
