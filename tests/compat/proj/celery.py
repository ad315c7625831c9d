import os

from celery import Celery

URL = "redis://127.0.0.1:6379/15"

app = Celery("proj", broker=URL, backend=URL, include=["proj.tasks"])
app.conf.accept_content = ["json", "msgpack", "pickle"]
app.conf.result_accept_content = ["json", "msgpack", "pickle"]
# second worker run of the generator flips this on
app.conf.result_extended = os.environ.get("COMPAT_RESULT_EXTENDED") == "1"
app.conf.worker_prefetch_multiplier = int(os.environ.get("COMPAT_PREFETCH", "4"))
# gen_fixtures.py canvas: the worker sends everything it publishes to this queue, which no
# one consumes, so that what a worker publishes for one message can be captured
if os.environ.get("COMPAT_ROUTE_ALL_TO"):
    app.conf.task_routes = {"*": {"queue": os.environ["COMPAT_ROUTE_ALL_TO"]}}
