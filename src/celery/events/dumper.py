"""``Dumper``: one line of text per event, as ``celery events --dump`` prints them."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any, TextIO

from ..utils.lru import LRUCache

__all__ = ["Dumper", "humanize_type"]

#: Event types printed under another name; others print with their dashes as spaces.
HUMAN_TYPES = {
    "worker-offline": "shutdown",
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
}
#: Task events that carry the task's name and arguments.
_DESCRIBING = ("task-received", "task-sent")


def humanize_type(type_: str) -> str:
    """``worker-online``: started; ``task-succeeded``: task succeeded."""
    return HUMAN_TYPES.get(type_, type_.replace("-", " "))


class Dumper:
    """Formats events onto ``out`` (stdout by default), flushing after each line.

    Task events other than ``task-sent``/``task-received`` show the name and arguments their
    task's earlier event carried (remembered for the last 4095 tasks). Thread-safety: one
    thread at a time (``on_event`` is a receiver handler).
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self._tasks: LRUCache[str, str] = LRUCache(0xFFF)

    def say(self, msg: str) -> None:
        print(msg, file=self.out)
        try:
            self.out.flush()
        except (AttributeError, ValueError, OSError):  # not a real stream, or closed
            pass

    def on_event(self, event: dict[str, Any]) -> None:
        """Print one event (a receiver handler); the event dict is not changed."""
        self.say(self.format_event(dict(event)))

    def format_event(self, ev: dict[str, Any]) -> str:
        """The line of one event; takes fields out of ``ev`` as it goes."""
        stamp = ev.pop("timestamp", None)
        when = (dt.datetime.fromtimestamp(stamp, dt.UTC)
                if isinstance(stamp, int | float) else stamp)
        type_ = str(ev.pop("type", "")).lower()
        hostname = ev.pop("hostname", None)
        head = f"{hostname} [{when}] {humanize_type(type_)}"
        if type_.startswith("task-"):
            uuid = ev.pop("uuid", None)
            if type_ in _DESCRIBING:
                name, args, kwargs = ev.pop("name", None), ev.pop("args", None), ev.pop("kwargs", None)
                task = f"{name}({uuid}) args={args} kwargs={kwargs}"
                if isinstance(uuid, str):
                    self._tasks[uuid] = task
            else:
                task = self._tasks.get(uuid, "") if isinstance(uuid, str) else ""
            fields = self._fields(ev)
            return f"{head}{':' if fields else ''} {task} {fields}"
        fields = self._fields(ev)
        return f"{head}{':' if fields else ''} {fields}"

    @staticmethod
    def _fields(ev: dict[str, Any]) -> str:
        return ", ".join(f"{key}={ev[key]}" for key in sorted(ev, key=str))
