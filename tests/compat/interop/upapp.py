"""A tiny app importable by upstream Celery and by us alike (explicit task names)."""

import os

from celery import Celery

URL = os.environ.get("INTEROP_URL", "redis://127.0.0.1:6379/12")

app = Celery("interop", broker=URL, backend=URL)


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="interop.echo_request", bind=True)
def echo_request(self, *args, **kwargs):
    return {"id": self.request.id, "args": list(args), "kwargs": kwargs,
            "root_id": self.request.root_id}
