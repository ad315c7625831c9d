"""A plain ``delay()``'s message filled into a template: the fast path of ``send_task``.

Most sends are ``task.delay(*args)``: no options, from outside any task. Then everything in
the kombu JSON envelope but five values is the same at every call of one task, yet
``Celery._prepare`` and ``envelope.encode`` build it all each time (about 37 µs a call,
measured hot on the benchmark machine). ``Template.make`` runs that same general path once
per task with marker values in those five places, and splits its output at the markers;
a send then only joins the pieces with

* the task id (headers ``id`` and ``root_id``, property ``correlation_id``),
* ``argsrepr`` and ``kwargsrepr``, JSON-escaped,
* the body, base64 of the serialized ``[args, kwargs, embed]``,
* a new delivery tag.

The template is the general path's own output, so the two cannot drift apart
(tests/unit/test_template.py compares them byte for byte). It is used only when nothing
else could change the message (``plain_send``): no send options, not inside a task (whose
ids the message would carry), no ``task_routes``, no ``expires`` on the task, no
``before_task_publish``/``after_task_publish`` receivers, the JSON serializer, and a
transport that publishes an encoded envelope (``publish_encoded``: Redis). It is keyed by
the settings and task attributes ``_prepare`` reads, and made again when one changes.

Thread-safety: a template never changes once made. The app's cache is a dict written with
one assignment per task name (atomic, also on free-threaded builds): two threads racing
make the same template, and either one's stays.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .. import signals
from .._state import current_task_var
from ..messaging.protocol import encode_body, saferepr, uuid4_str

if TYPE_CHECKING:
    from .base import Celery
    from .task import Task

__all__ = ["Template", "plain_send"]

#: The markers made into holes: ASCII that json.dumps leaves as it is. The body's is
#: base64'd by the envelope, so its base64 is what is found.
_ID, _ARGSREPR, _KWARGSREPR, _TAG = (f"@@celery-template-{n}@@" for n in ("id", "a", "k", "tag"))
_BODY = b"@@celery-template-body@@"
#: Each marker's text in the envelope, and the index of what fills it (``Template.fill``).
_HOLES = {_ID: 0, _ARGSREPR: 1, _KWARGSREPR: 2, base64.b64encode(_BODY).decode(): 3, _TAG: 4}
_FIND = re.compile("|".join(map(re.escape, _HOLES)))

#: What ``_prepare`` reads of a task, and of the settings, for a send without options.
_TASK_ATTRS = attrgetter("queue", "routing_key", "exchange", "priority", "serializer",
                         "time_limit", "soft_time_limit", "ignore_result")
_SETTINGS = ("task_default_queue", "task_default_priority", "task_serializer",
             "task_time_limit", "task_soft_time_limit", "task_ignore_result")


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """One task's envelope in pieces: ``pieces[0] hole pieces[1] hole ... pieces[-1]``."""

    key: str  #: where the transport puts it (the Redis list)
    pieces: tuple[str, ...]
    holes: tuple[int, ...]  #: what fills each hole: an index into ``fill``'s values
    ignore_result: bool

    @classmethod
    def make(cls, app: Celery, task: Task) -> Template | None:
        """The template of ``task``'s plain send, or None if it is not JSON."""
        options = {"task_id": _ID, "argsrepr": _ARGSREPR, "kwargsrepr": _KWARGSREPR}
        message, _ = app._prepare(task.name, (), {}, task, options)
        if message.content_type != "application/json":
            return None
        transport: Any = app.transport  # one with publish_encoded, so envelope_of too
        key, payload = transport.envelope_of(dataclasses.replace(message, body=_BODY), _TAG)
        holes = tuple(_HOLES[found] for found in _FIND.findall(payload))
        return cls(key, tuple(_FIND.split(payload)), holes,
                   bool(message.headers["ignore_result"]))

    def fill(self, task_id: str, args: Any, kwargs: dict[str, Any]) -> str:
        """The envelope of one send: what ``envelope.encode`` of ``_prepare``'s message
        would give, with a new delivery tag."""
        body, _, _ = encode_body(args, kwargs, "json")
        values = (task_id, json.dumps(saferepr(args))[1:-1],
                  json.dumps(saferepr(kwargs))[1:-1], base64.b64encode(body).decode(),
                  uuid4_str())
        pieces = self.pieces
        out = [pieces[0]]
        for n, hole in enumerate(self.holes, 1):
            out.append(values[hole])
            out.append(pieces[n])
        return "".join(out)


def plain_send(app: Celery, task: Task, args: Any, kwargs: Any) -> tuple[str, bool] | None:
    """Send ``task`` with ``args``/``kwargs`` and no options through its template: (task
    id, ignore_result); None if the general path must do it (see the module docstring)."""
    if not (args is None or type(args) in (tuple, list)) or \
            not (kwargs is None or type(kwargs) is dict):  # the general path checks these
        return None
    conf = app.conf._data
    if conf["task_routes"] or task.expires is not None or current_task_var.get() is not None \
            or conf["task_send_sent_event"] or conf["task_compression"]:
        return None
    if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
        return None
    publish = getattr(app.transport, "publish_encoded", None)
    if publish is None:
        return None
    made_from = (*_TASK_ATTRS(task), *[conf[name] for name in _SETTINGS])
    cached = app._templates.get(task.name)
    if cached is None or cached[0] != made_from:  # new, or a setting changed since
        cached = app._templates[task.name] = (made_from, Template.make(app, task))
    template = cached[1]
    if template is None:  # not JSON
        return None
    task_id = uuid4_str()
    publish(template.key, template.fill(task_id, args or (), dict(kwargs or {})), task_id)
    return task_id, template.ignore_result
