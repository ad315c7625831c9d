"""Writes and reads results in a SQL result backend; run by upstream Celery's Python and ours.

    python sql_results.py write <backend-url> <prefix>   store results and a group, print "ok"
    python sql_results.py read <backend-url> <prefix>    print what was stored, as JSON

Only the public API both packages share (``app.backend.store_result``, ``AsyncResult``,
``GroupResult.save``/``restore``), with ``result_extended`` on.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from celery import Celery, states
from celery.result import GroupResult


def request(prefix: str) -> SimpleNamespace:
    return SimpleNamespace(task="interop.add", args=[1, 2], kwargs={"k": "v"},
                           hostname=f"{prefix}@host", retries=2, children=[],
                           delivery_info={"routing_key": "celery"}, group=None,
                           parent_id=None, stamps=None)


def write(app: Celery, prefix: str) -> None:
    backend = app.backend
    backend.store_result(f"{prefix}-ok", {"n": 1, "s": "h\u00e9llo", "l": [1, 2.5, None]},
                         states.SUCCESS, request=request(prefix))
    backend.store_result(f"{prefix}-fail", KeyError("gone"), states.FAILURE,
                         traceback="Traceback (most recent call last): ...",
                         request=request(prefix))
    backend.store_result(f"{prefix}-progress", {"current": 3}, "PROGRESS", request=request(prefix))
    GroupResult(f"{prefix}-group", [app.AsyncResult(f"{prefix}-ok"),
                                    app.AsyncResult(f"{prefix}-fail")]).save(backend=backend)
    print("ok")


def read(app: Celery, prefix: str) -> None:
    out: dict = {}
    for name in ("ok", "fail", "progress", "missing"):
        result = app.AsyncResult(f"{prefix}-{name}")
        value = result.result
        out[name] = {
            "state": result.state,
            "result": [type(value).__name__, list(value.args)] if isinstance(value, Exception)
            else value,
            "traceback": result.traceback,
            "name": result.name, "args": result.args, "kwargs": result.kwargs,
            "worker": result.worker, "retries": result.retries, "queue": result.queue,
            "date_done": None if result.date_done is None else str(result.date_done),
        }
    group = GroupResult.restore(f"{prefix}-group", app=app)
    out["group"] = None if group is None else [group.id, [r.id for r in group.results]]
    print(json.dumps(out))


def main() -> None:
    mode, url, prefix = sys.argv[1:4]
    app = Celery("sqlinterop", broker="memory://", backend=url, result_extended=True)
    {"write": write, "read": read}[mode](app, prefix)


if __name__ == "__main__":
    main()
