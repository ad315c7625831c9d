"""celery-asyncio: an asyncio-native, free-threading-ready Celery, wire-compatible with Celery 5."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

from .utils import gil as _gil

# On a free-threaded build, before anything imports the Redis client: keep its C parsers (and
# other extensions that would turn the GIL back on) from loading, and note any that does.
_gil.keep_off()
_gil.watch()

#: This release of celery-asyncio (the distribution's version).
__asyncio_version__ = "0.1.0"
#: The Celery release whose API and wire formats this package follows, as Celery's own
#: ``__version__``: libraries written for Celery read it to decide what they may use
#: (sentry-sdk's CeleryIntegration refuses a Celery older than 4.4.7).
__version__ = "5.5.0"
VERSION_BANNER = f"{__asyncio_version__} (celery-asyncio)"


class version_info_t(NamedTuple):  # noqa: N801 - Celery's name
    major: int
    minor: int
    micro: int
    releaselevel: str
    serial: str


#: ``__version__`` as a tuple, as Celery's ``celery.VERSION`` (``celery.VERSION >= (5, 0)``).
VERSION = version_info = version_info_t(5, 5, 0, "", "")

__all__ = [
    "AsyncResult",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "subtask",
    "uuid",
    "xmap",
    "xstarmap",
]

# name -> (module, attribute); imported on first use so "import celery" stays cheap.
_LAZY: dict[str, tuple[str, str | None]] = {
    "AsyncResult": (".result", "AsyncResult"),
    "Celery": (".app.base", "Celery"),
    "GroupResult": (".result", "GroupResult"),
    "Signature": (".canvas", "Signature"),
    "Task": (".app.task", "Task"),
    "chain": (".canvas", "chain"),
    "chord": (".canvas", "chord"),
    "chunks": (".canvas", "chunks"),
    "group": (".canvas", "group"),
    "maybe_signature": (".canvas", "maybe_signature"),
    "shared_task": (".app.shared", "shared_task"),
    "signature": (".canvas", "signature"),
    "states": (".states", None),
    "subtask": (".canvas", "subtask"),
    "uuid": (".messaging.protocol", "uuid4_str"),
    "xmap": (".canvas", "xmap"),
    "xstarmap": (".canvas", "xstarmap"),
}

if TYPE_CHECKING:
    from . import states
    from .app.base import Celery as _App
    from .app.task import Task as _Task

    current_app: _App
    current_task: _Task | None
    from .app.base import Celery
    from .app.shared import shared_task
    from .app.task import Task
    from .canvas import (
        Signature,
        chain,
        chord,
        chunks,
        group,
        maybe_signature,
        signature,
        xmap,
        xstarmap,
    )
    from .canvas import subtask as subtask
    from .messaging.protocol import uuid4_str as uuid
    from .result import AsyncResult, GroupResult


def _resolve_current_app() -> Any:
    from ._state import get_current_app
    from .app import base  # noqa: F401 - the default app's maker, when no app exists yet

    return get_current_app()


def _resolve_current_task() -> Any:
    from ._state import current_task_var

    return current_task_var.get()


def __getattr__(name: str) -> Any:
    if name in ("current_app", "current_task"):
        from .local import Proxy

        resolve = _resolve_current_app if name == "current_app" else _resolve_current_task
        value: Any = Proxy(resolve)
        globals()[name] = value
        return value
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'celery' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
