"""Celery's Django fix-up: Django set up before tasks are imported, its database
connections closed around each task, ``autodiscover_tasks()`` reading ``INSTALLED_APPS``.

Applied to every app when ``DJANGO_SETTINGS_MODULE`` is set and Django is installed, as in
Celery. What differs is where tasks run. Django keeps one connection per alias *per thread*
(an asgiref ``Local`` that is thread-critical), so:

* ``def`` tasks run on the worker's sync threads; ``task_prerun``/``task_postrun`` are sent
  on that thread, so closing "the" connections there closes the task's own, as Celery's
  prefork child does.
* ``async def`` tasks run on event loops, where Django refuses the sync ORM
  (``SynchronousOnlyOperation``). Their queries, through the async ORM (``aget``,
  ``acreate``, ...) or ``sync_to_async``, run on asgiref's one thread-sensitive thread,
  which holds their connections. After each async task the close is handed to that thread
  (``sync_to_async``, FIFO behind the task's queries), never done on the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from .. import signals
from ..exceptions import FixupWarning

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["DjangoFixup", "DjangoWorkerFixup", "fixup"]

logger = logging.getLogger("celery.fixups.django")

ERR_NOT_INSTALLED = ("DJANGO_SETTINGS_MODULE is set but Django is not installed: the Django "
                     "fix-ups (django.setup(), connections closed around tasks) are not applied")


def fixup(app: Celery, env: str = "DJANGO_SETTINGS_MODULE") -> DjangoFixup | None:
    """Install the Django fix-up on ``app`` if the environment variable ``env`` is set."""
    if not os.environ.get(env):
        return None
    if importlib.util.find_spec("django") is None:
        warnings.warn(FixupWarning(ERR_NOT_INSTALLED), stacklevel=2)
        return None
    return DjangoFixup(app).install()


class DjangoFixup:
    """Sets Django up before the app imports task modules; installs the worker part at
    ``worker_init``. Made once per app, in the thread that creates it."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.worker_fixup: DjangoWorkerFixup | None = None

    def install(self) -> DjangoFixup:
        # As Celery: the project directory (where manage.py is) can be imported from.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        from ..app.task import Task

        if self.app.task_cls is Task:  # a custom task class stays the user's choice
            from ..contrib.django.task import DjangoTask

            self.app.task_cls = DjangoTask
        signals.worker_init.connect(self.on_worker_init, weak=False,
                                    dispatch_uid=("celery.fixups.django", id(self.app)))
        return self

    def setup(self) -> None:
        """``django.setup()`` unless Django's apps are loaded or loading (a Django process
        that reaches the app from its own setup)."""
        from django.apps import apps

        if apps.ready or apps.loading:
            return
        import django

        django.setup()

    def on_import_modules(self) -> None:
        """Called by ``app.finalize()`` before ``imports``/``include``/autodiscovery."""
        self.setup()

    def autodiscover_tasks(self) -> list[str]:
        """The packages of ``INSTALLED_APPS`` (their app configs' names), as Celery's."""
        self.setup()
        from django.apps import apps

        return [config.name for config in apps.get_app_configs()]

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        self.setup()
        if not os.environ.get("CELERY_SKIP_CHECKS"):
            from django.core.checks import run_checks

            for message in run_checks():
                log = logger.error if message.is_serious() else logger.warning
                log("Django system check: %s", message)
        if self.worker_fixup is None:
            self.worker_fixup = DjangoWorkerFixup(self.app).install()


class DjangoWorkerFixup:
    """Closes Django's database connections (and caches) before and after each task, as
    Celery's worker does, so a task never inherits a broken or timed-out connection.

    ``db_reuse_max`` (``CELERY_DB_REUSE_MAX`` in Django settings) keeps connections for that many
    tasks per thread, as Celery's setting does per process. Handlers run on the thread that
    runs the task (def) or on a loop thread (async def); the reuse counters are per thread,
    in a dict under ``_counts_lock``.
    """

    def __init__(self, app: Celery) -> None:
        from django.conf import settings

        self.app = app
        self._db = importlib.import_module("django.db")
        self._cache = importlib.import_module("django.core.cache")
        reuse = app.conf.get("db_reuse_max") or getattr(settings, "CELERY_DB_REUSE_MAX", None)
        self.db_reuse_max: int | None = int(reuse) if reuse else None
        self._counts: dict[int, int] = {}
        self._counts_lock = threading.Lock()
        #: Closes scheduled on loops, kept until done (a loop holds only weak references).
        self._pending: set[asyncio.Future[Any]] = set()
        self._pending_lock = threading.Lock()

    def install(self) -> DjangoWorkerFixup:
        uid = ("celery.fixups.django.worker", id(self.app))
        signals.task_prerun.connect(self.on_task_prerun, weak=False, dispatch_uid=uid)
        signals.task_postrun.connect(self.on_task_postrun, weak=False, dispatch_uid=uid)
        signals.beat_embedded_init.connect(self.close_database, weak=False, dispatch_uid=uid)
        # Connections the worker's main thread opened while starting (a ready() hook, a
        # check) are not carried into tasks.
        self.close_database()
        self.close_cache()
        return self

    def _ours(self, task: Any) -> bool:
        return (getattr(task, "_app", None) is self.app
                and not getattr(task.request, "is_eager", False))

    def on_task_prerun(self, sender: Any = None, **_: Any) -> None:
        # An async task's queries run on asgiref's thread, not here: closing there before
        # the task would race its first query; its close comes after it (postrun).
        if self._ours(sender) and not sender.is_async:
            self.close_database()

    def on_task_postrun(self, sender: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        if sender.is_async:
            self._close_on_asgiref_thread()
        else:
            self.close_database()
            self.close_cache()

    def _close_on_asgiref_thread(self) -> None:
        from asgiref.sync import sync_to_async

        def close() -> None:
            self.close_database()
            self.close_cache()

        future = asyncio.get_running_loop().create_task(
            sync_to_async(close, thread_sensitive=True)())
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._closed)

    def _closed(self, future: asyncio.Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("Closing Django's connections after an async task failed: %r",
                         future.exception())

    def close_database(self, **_: Any) -> None:
        """Close this thread's connections (every ``2 * CELERY_DB_REUSE_MAX`` calls when
        that is set, as Celery counts prerun and postrun alike)."""
        if not self.db_reuse_max:
            self._close_database()
            return
        me = threading.get_ident()
        with self._counts_lock:
            count = self._counts.get(me, 0) + 1
            due = count >= self.db_reuse_max * 2
            self._counts[me] = 0 if due else count
        if due:
            self._close_database()

    def _close_database(self) -> None:
        from django.db import DatabaseError, InterfaceError

        for conn in self._db.connections.all(initialized_only=True):
            try:
                conn.close()
            except InterfaceError:
                pass
            except DatabaseError as exc:
                text = str(exc)
                if "closed" not in text and "not connected" not in text:
                    raise

    def close_cache(self) -> None:
        self._cache.close_caches()
