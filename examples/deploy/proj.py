"""The app the deployment files run: broker and results on Redis (CELERY_BROKER_URL and
CELERY_RESULT_BACKEND, set by the unit files and the compose file, win over these)."""

from __future__ import annotations

from celery import Celery

app = Celery("proj", broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
app.conf.beat_schedule = {
    "heartbeat-every-minute": {"task": "proj.heartbeat", "schedule": 60.0},
}


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
async def heartbeat() -> str:
    return "alive"
