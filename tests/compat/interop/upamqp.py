"""An app for the RabbitMQ interop tests, importable by upstream Celery and by us alike.

Broker and result backend come from ``INTEROP_BROKER_URL`` (an ``amqp://`` vhost) and
``INTEROP_BACKEND_URL`` (Redis, or ``rpc://``). Besides the default ``celery`` queue it
declares ``interop.prio``, a priority queue on its own direct exchange, with kombu's
``Queue``/``Exchange`` under upstream Celery and ``celery.kombu_compat``'s under ours, so
both declare the same queue with the same arguments and flags.
"""

import os

from celery import Celery

try:  # ours
    from celery.kombu_compat import Exchange, Queue
except ImportError:  # upstream Celery
    from kombu import Exchange, Queue

app = Celery("interop", broker=os.environ["INTEROP_BROKER_URL"],
             backend=os.environ["INTEROP_BACKEND_URL"])
app.conf.task_queues = [
    Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
    Queue("interop.prio", Exchange("interop.prio", type="direct"), routing_key="interop.prio",
          queue_arguments={"x-max-priority": 10}),
]
app.conf.task_routes = {"interop.prio_echo": {"queue": "interop.prio"}}
app.conf.broker_connection_retry_on_startup = True


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


@app.task(name="interop.prio_echo", bind=True)
def prio_echo(self, value):
    """Routed to interop.prio by task_routes; says which queue delivered it."""
    info = self.request.delivery_info or {}
    return {"value": value, "routing_key": info.get("routing_key"),
            "priority": info.get("priority")}


@app.task(name="interop.retry", bind=True, max_retries=5)
def retry(self, times):
    """Retries itself ``times`` times (0.1 s apart), then returns how often it was retried."""
    if self.request.retries < times:
        raise self.retry(countdown=0.1)
    return self.request.retries
