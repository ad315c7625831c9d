"""``Topology.target`` publishes where upstream Celery's ``send_task_message`` does.

Upstream (the venv ``test_upstream_interop`` makes) sends every case of
``amqp_topology_cases.route_cases`` over its in-memory broker and reports the exchange and
routing key its ``before_task_publish`` signal saw; we build the same messages and ask the
topology. No broker server is needed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kombu
import kombu.common
import pytest

from celery import Celery
from celery.kombu_compat import Broadcast, Exchange, Queue, binding
from celery.transport.amqp_topology import Topology

from ..integration.amqp_topology_cases import route_cases
from .test_upstream_interop import _upstream_python

CASES_DIR = Path(__file__).parents[1] / "integration"

UPSTREAM_SEND = """
import json
from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue, binding
from kombu.common import Broadcast
from amqp_topology_cases import route_cases
seen = []
@before_task_publish.connect
def record(exchange=None, routing_key=None, **kwargs):
    seen.append([getattr(exchange, "name", exchange) or "", routing_key or ""])
out = []
for settings, sends in route_cases(Queue, Exchange, binding, Broadcast):
    app = Celery("up", broker="memory://", set_as_current=False)
    app.conf.update(settings)
    for name, options in sends:
        app.send_task(name, **options)
    out.append(seen[:])
    seen.clear()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def upstream_targets():
    python = _upstream_python()
    done = subprocess.run([str(python), "-c", UPSTREAM_SEND], cwd=CASES_DIR, text=True,
                          capture_output=True, timeout=120, env={"PYTHONPATH": str(CASES_DIR)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("classes", [(Queue, Exchange, binding, Broadcast),
                                     (kombu.Queue, kombu.Exchange, kombu.binding,
                                      kombu.common.Broadcast)],
                         ids=["kombu_compat", "kombu"])
def test_target_matches_upstream_send_task_message(upstream_targets, classes):
    cases = route_cases(*classes)
    assert len(upstream_targets) == len(cases)
    for (settings, sends), expected in zip(cases, upstream_targets, strict=True):
        app = Celery("ours", broker="memory://", set_as_current=False)
        app.conf.update(settings)
        topology = Topology.from_conf(app.conf)
        ours = []
        for name, options in sends:
            message, _ = app._prepare(name, (), {}, None, dict(options))
            ours.append(list(topology.target(message.exchange, message.routing_key,
                                             queue=message.queue)))
        assert ours == expected, (settings, sends)
    # the cases reach every kind of answer, so the comparison is not vacuous
    flat = {tuple(pair) for answers in upstream_targets for pair in answers}
    assert ("", "celery") in flat and ("feeds", "feed.x") in flat and ("bcast", "celery") in flat
    assert ("everyone", "celery") in flat  # a Broadcast queue, found by its alias
