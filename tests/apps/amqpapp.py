"""App for the RabbitMQ worker tests (tests/integration/test_amqp_worker.py): tasks log each
execution's start and end (with the message's priority and redelivered flag) to a file.

Settings from the environment: AMQPAPP_BROKER, AMQPAPP_BACKEND, AMQPAPP_LOG,
AMQPAPP_ACKS_LATE ("1"), AMQPAPP_MAX_PRIORITY (task_queue_max_priority, optional).
"""

from __future__ import annotations

import asyncio
import os
import time

from celery import Celery

app = Celery("amqpapp", broker=os.environ["AMQPAPP_BROKER"],
             backend=os.environ.get("AMQPAPP_BACKEND") or None,
             task_acks_late=os.environ.get("AMQPAPP_ACKS_LATE") == "1",
             task_reject_on_worker_lost=os.environ.get("AMQPAPP_ACKS_LATE") == "1",
             task_queue_max_priority=int(os.environ.get("AMQPAPP_MAX_PRIORITY") or 0) or None,
             broker_connection_timeout=2.0)
# O_APPEND: each line is written whole, whatever other processes append meanwhile.
_LOG = os.open(os.environ["AMQPAPP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(event: str, request, arg: object) -> None:
    """``<event> <task id> <arg> <priority> <redelivered 0/1> <pid>``, one line."""
    info = request.delivery_info or {}
    os.write(_LOG, f"{event} {request.id} {arg} {info.get('priority')} "
                   f"{int(bool(info.get('redelivered')))} {os.getpid()}\n".encode())


@app.task(name="amqp.sync", bind=True)
def sync_work(self, arg: str, seconds: float = 0.0) -> str:
    record("start", self.request, arg)
    if seconds:
        time.sleep(seconds)
    record("end", self.request, arg)
    return f"sync:{arg}"


@app.task(name="amqp.async", bind=True)
async def async_work(self, arg: str, seconds: float = 0.0) -> str:
    record("start", self.request, arg)
    if seconds:
        await asyncio.sleep(seconds)
    record("end", self.request, arg)
    return f"async:{arg}"
