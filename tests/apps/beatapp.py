"""App for the beat tests: periodic entries from the environment, sent to a queue that no
worker consumes unless a test starts one, so a test counts what beat sent.

Settings from the environment: BEATAPP_BROKER (a Redis URL, or "sqlite": files in
BEATAPP_DIR), BEATAPP_DIR, BEATAPP_EVERY (seconds of the "every" entry, default 1),
BEATAPP_LEASE (beat_lease_seconds), BEATAPP_BAD ("1": add bad entries beside the good
one), BEATAPP_CATCH_UP ("0": the entry skips runs missed while no beat ran),
BEATAPP_PERIODIC ("1": also add an entry with add_periodic_task from on_after_configure).
"""

from __future__ import annotations

import os

from celery import Celery

DATA = os.environ.get("BEATAPP_DIR", ".")
_url = os.environ.get("BEATAPP_BROKER", "sqlite")
if _url == "sqlite":
    broker, backend = f"sqlite:///{DATA}/broker.db", f"db+sqlite:///{DATA}/results.db"
else:
    broker = backend = _url
app = Celery("beatapp", broker=broker, backend=backend)
# Log lines carry the epoch time, so sends from several beats can be put in one order.
app.conf.worker_log_format = "[%(levelname)s@%(created).3f] %(message)s"
app.conf.beat_lease_seconds = float(os.environ.get("BEATAPP_LEASE", "3"))
app.conf.beat_schedule = {
    "every": {
        "task": "beatapp.tick",
        "schedule": float(os.environ.get("BEATAPP_EVERY", "1")),
        "args": ("every",),
        "options": {"queue": "ticks"},
        "catch_up": os.environ.get("BEATAPP_CATCH_UP", "1") != "0",
    },
}
if os.environ.get("BEATAPP_BAD") == "1":
    app.conf.beat_schedule.update({
        "unknown-task": {"task": "beatapp.nope", "schedule": 1.0},
        "bad-key": {"task": "beatapp.tick", "schedule": 1.0, "arg": (1,)},
        "bad-cron": {"task": "beatapp.tick", "schedule": "61 * * * *"},
    })

# O_APPEND: each line is written whole, whatever other processes append meanwhile.
_LOG = os.open(os.path.join(DATA, "ticks.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.task(name="beatapp.tick")
def tick(name: str) -> str:
    import time

    os.write(_LOG, f"{name} {time.time():.3f} {os.getpid()}\n".encode())
    return name


if os.environ.get("BEATAPP_PERIODIC") == "1":
    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celery, **kwargs: object) -> None:
        sender.add_periodic_task(1.0, tick.s("added"), name="added-every-second",
                                 queue="ticks")
