"""Run by upstream Celery's Python: send tasks to our worker and print what came back."""

import json
import sys

from upapp import app

out = {"add": app.send_task("interop.add", (2, 3)).get(timeout=30)}
out["async"] = app.send_task("interop.mul_async", (6, 7)).get(timeout=30)
try:
    app.send_task("interop.fail", ("from upstream",)).get(timeout=30)
except Exception as exc:  # noqa: BLE001 - we report what upstream raised
    out["fail"] = [type(exc).__name__, list(exc.args)]
r = app.send_task("interop.echo_request", (1, "two"), {"k": [3]})
out["echo"] = r.get(timeout=30)
out["echo_id"] = r.id
out["compressed"] = [app.send_task("interop.add", (n, n), compression=method).get(timeout=30)
                     for n, method in ((1, "gzip"), (2, "bzip2"), (3, "lzma"))]
json.dump(out, sys.stdout)
