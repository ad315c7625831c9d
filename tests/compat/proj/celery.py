import os

from celery import Celery

URL = "redis://127.0.0.1:6379/15"

app = Celery("proj", broker=URL, backend=URL, include=["proj.tasks"])
app.conf.accept_content = ["json", "msgpack", "pickle"]
app.conf.result_accept_content = ["json", "msgpack", "pickle"]
# second worker run of the generator flips this on
app.conf.result_extended = os.environ.get("COMPAT_RESULT_EXTENDED") == "1"
app.conf.worker_prefetch_multiplier = int(os.environ.get("COMPAT_PREFETCH", "4"))
