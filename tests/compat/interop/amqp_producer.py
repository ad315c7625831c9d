"""Run by upstream Celery's Python: send tasks over RabbitMQ to whichever worker consumes
the vhost (ours in the tests) and print, as JSON, what came back."""

import json
import sys
import time

from upamqp import app

TIMEOUT = 30
out = {"add": app.send_task("interop.add", (2, 3)).get(timeout=TIMEOUT)}
if "--async" in sys.argv:  # an async def task that only our worker has
    out["async"] = app.send_task("interop.mul_async", (6, 7)).get(timeout=TIMEOUT)
r = app.send_task("interop.fail", ("from upstream",))
r.get(timeout=TIMEOUT, propagate=False)
out["fail"] = {"state": r.state, "type": type(r.result).__name__, "args": list(r.result.args),
               "traceback": r.traceback}
r = app.send_task("interop.echo_request", (1, "two"), {"k": [3]})
out["echo"] = r.get(timeout=TIMEOUT)
out["echo_id"] = r.id
out["prio"] = app.send_task("interop.prio_echo", ("p",), priority=7).get(timeout=TIMEOUT)
out["retry"] = app.send_task("interop.retry", (2,)).get(timeout=TIMEOUT)
started = time.monotonic()
out["countdown"] = {"value": app.send_task("interop.add", (4, 4), countdown=1.5).get(
    timeout=TIMEOUT), "seconds": time.monotonic() - started}
json.dump(out, sys.stdout)
