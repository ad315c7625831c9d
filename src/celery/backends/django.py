"""``django-db``: results as rows of django-celery-results' tables, through Django's ORM.

``result_backend = "django-db"`` (``CELERY_RESULT_BACKEND`` in Django settings), with
``django_celery_results`` in ``INSTALLED_APPS`` and its migrations applied. The package is
installed without its dependencies (``pip install django-celery-results --no-deps``: it
requires upstream Celery); its models, admin and migrations are used as they are, the
backend is ours. Rows are written as its backend writes them, so its admin pages list our
results and an upstream worker configured with ``django-db`` reads ours and we theirs:

    django_celery_results_taskresult
      task_id, status, traceback, date_done (auto_now), date_created, date_started (STARTED)
      content_type, content_encoding   of the result serializer ('binary' ones: base64)
      result      the encoded return value (an exception: exc_type/exc_message/exc_module)
      meta        the encoded {"children": [...]} and our other meta keys (group_id, ...)
      task_name, task_args, task_kwargs, worker     with result_extended
    django_celery_results_groupresult   saved groups: result = the encoded as_tuple()

Chords are joined by Celery's ``celery.chord_unlock`` task (``supports_chord_join`` False),
not through django-celery-results' ``ChordCounter``: an upstream worker and ours must not
share one chord. A stored SUCCESS is never overwritten unless it has expired; rows older than
``result_expires`` (by ``date_done``) read as missing and ``cleanup()`` deletes them.

Thread-safety: ORM calls run on the backend's own threads (``_executor``, ``THREADS``), never
on an event loop (Django refuses that). Each thread keeps its connection (Django's are per
thread) for the backend's life, as the SQLite backend keeps its own; after a database error
it is closed, and the next call opens a new one. Waiting polls the table (1 ms, backing off
to 50 ms), woken at once by writes of this process.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .. import states
from ..exceptions import ConnectionLost, ImproperlyConfigured
from ..messaging import serialization
from ..transport.embedded import wakeup_for
from .base import Conf, ResultBackend
from .polling import forget_pollers

__all__ = ["DjangoBackend"]

T = TypeVar("T")

#: Meta keys stored in their own columns; the others go to the ``meta`` column.
_COLUMNS = frozenset({"status", "result", "traceback", "date_done", "task_id", "name", "args",
                      "kwargs", "worker"})
#: ORM threads per backend: results are small writes; more would only hold connections.
THREADS = 4


def _django_models() -> tuple[Any, Any]:
    try:
        from django.apps import apps
        from django.conf import settings
    except ImportError:
        raise ImproperlyConfigured("result_backend 'django-db' needs Django: pip install "
                                   "'celery-asyncio[django]'") from None
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ImproperlyConfigured("result_backend 'django-db' needs Django's settings: set "
                                   "DJANGO_SETTINGS_MODULE before the Celery app is made")
    if not apps.ready and not apps.loading:
        import django

        django.setup()
    if not apps.is_installed("django_celery_results"):
        raise ImproperlyConfigured(
            "result_backend 'django-db' stores into django-celery-results' tables: install it "
            "with 'pip install django-celery-results --no-deps', add 'django_celery_results' "
            "to INSTALLED_APPS and run 'manage.py migrate'")
    from django_celery_results.models import GroupResult, TaskResult

    return TaskResult, GroupResult


class DjangoBackend(ResultBackend):
    """Results in django-celery-results' tables (``django-db``); see the module docstring."""

    supports_chord_join = False

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        self._task_model, self._group_model = _django_models()
        content_type, encoding = _content_of(self.serializer)
        self._content_type, self._content_encoding = content_type, encoding
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="django-db-results")
        self._wakeup = wakeup_for("django-db#celery-results")

    def __repr__(self) -> str:
        return "<DjangoBackend django_celery_results>"

    async def _orm(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on one of the backend's threads; driver errors become ConnectionLost."""
        from django.db import DatabaseError, connections

        def run() -> T:
            try:
                return fn()
            except DatabaseError:
                # This thread's connection may be broken: the next call opens a new one.
                for conn in connections.all(initialized_only=True):
                    try:
                        conn.close()
                    except DatabaseError:
                        pass
                raise

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except DatabaseError as exc:
            raise ConnectionLost(f"django-db result backend: {exc}") from exc

    # -- content ------------------------------------------------------------------------------

    def _encode_content(self, value: Any) -> str:
        data = serialization.dumps(value, self.serializer)[0]
        if self._content_encoding == "binary":
            return base64.b64encode(data).decode("ascii")
        return data.decode(self._content_encoding)

    def _decode_content(self, row: Any, text: str | None) -> Any:
        if not text:
            return None
        data = base64.b64decode(text) if row.content_encoding == "binary" else text
        return serialization.loads(data, row.content_type, row.content_encoding,
                                   accept=self.accept)

    def _row_fields(self, meta: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in meta.items() if k not in _COLUMNS}
        extra["children"] = extra.get("children") or []
        fields: dict[str, Any] = {
            "status": meta["status"], "result": self._encode_content(meta.get("result")),
            "traceback": meta.get("traceback"), "meta": self._encode_content(extra),
            "content_type": self._content_type, "content_encoding": self._content_encoding,
        }
        if meta.get("name") is not None:
            fields["task_name"] = meta["name"]
        if meta.get("worker") is not None:
            fields["worker"] = meta["worker"]
        for key in ("args", "kwargs"):
            if meta.get(key) is not None:
                fields[f"task_{key}"] = self._encode_content(meta[key])
        return fields

    def _meta_of(self, row: Any) -> dict[str, Any]:
        from django.utils import timezone

        extra = self._decode_content(row, row.meta) or {}
        done = row.date_done
        if done is not None and timezone.is_naive(done):
            done = timezone.make_aware(done)
        meta: dict[str, Any] = {
            "status": row.status, "result": self._decode_content(row, row.result),
            "traceback": row.traceback, "children": extra.pop("children", None) or [],
            "date_done": done.astimezone(dt.UTC).isoformat() if done else None,
            **extra, "task_id": row.task_id,
        }
        if row.task_name:
            meta["name"] = row.task_name
        if row.worker:
            meta["worker"] = row.worker
        for key in ("args", "kwargs"):
            stored = getattr(row, f"task_{key}")
            if stored:
                try:
                    meta[key] = self._decode_content(row, stored)
                except Exception:  # upstream stores a repr here: keep it as text
                    meta[key] = stored
        return meta

    def _cutoff(self) -> dt.datetime | None:
        from django.utils import timezone

        return timezone.now() - dt.timedelta(seconds=self.expires) if self.expires else None

    # -- storage ------------------------------------------------------------------------------

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        if not items:
            return
        rows = [(tid, self._row_fields(self.decode(payload))) for tid, payload, _ in items]
        await self._orm(lambda: self._store(rows))
        self._wakeup.notify()

    def _store(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        from django.db import IntegrityError, transaction
        from django.utils import timezone

        model, cutoff = self._task_model, self._cutoff()
        for task_id, fields in rows:
            if fields["status"] == states.STARTED:
                fields["date_started"] = timezone.now()
            for attempt in range(3):  # another writer may insert the same task id first
                try:
                    with transaction.atomic():
                        row = model.objects.select_for_update().filter(task_id=task_id).first()
                        if row is None:
                            model.objects.create(task_id=task_id, **fields)
                        elif (row.status != states.SUCCESS
                              or (cutoff is not None and row.date_done <= cutoff)):
                            for key, value in fields.items():
                                setattr(row, key, value)
                            row.save()
                    break
                except IntegrityError:
                    if attempt == 2:
                        raise

    async def aget_raw(self, task_id: str) -> bytes | None:
        return (await self.aget_many_raw([task_id]))[task_id]

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        def read() -> dict[str, bytes | None]:
            found = self._task_model.objects.filter(task_id__in=list(task_ids))
            cutoff = self._cutoff()
            if cutoff is not None:
                found = found.filter(date_done__gt=cutoff)
            metas = {row.task_id: self.encode(self._meta_of(row)) for row in found}
            return {tid: metas.get(tid) for tid in task_ids}

        return await self._orm(read)

    async def adelete(self, task_id: str) -> None:
        await self._orm(lambda: self._task_model.objects.filter(task_id=task_id).delete())

    async def adelete_many(self, task_ids: Sequence[str]) -> None:
        """Forget several results: one ORM delete per 500."""
        ids = list(task_ids)

        def delete(chunk: list[str]) -> Callable[[], Any]:
            return lambda: self._task_model.objects.filter(task_id__in=chunk).delete()

        for start in range(0, len(ids), 500):
            await self._orm(delete(ids[start:start + 500]))

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait for a ready state: woken by writes in this process, polling for others
        (up to every 50 ms).

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
        """
        return await self._poll_ready(task_id, timeout, self._wakeup)

    # -- saved groups -------------------------------------------------------------------------

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        fields = {"result": self._encode_content(self.decode(payload).get("result")),
                  "content_type": self._content_type,
                  "content_encoding": self._content_encoding}
        await self._orm(lambda: self._group_model.objects.update_or_create(
            group_id=group_id, defaults=fields))

    async def _aget_group(self, group_id: str) -> bytes | None:
        def read() -> bytes | None:
            row = self._group_model.objects.filter(group_id=group_id).first()
            if row is None:
                return None
            return self.encode({"result": self._decode_content(row, row.result)})

        return await self._orm(read)

    async def _adelete_group(self, group_id: str) -> None:
        await self._orm(lambda: self._group_model.objects.filter(group_id=group_id).delete())

    # -- upkeep -------------------------------------------------------------------------------

    async def acleanup(self) -> int:
        """Delete results older than ``result_expires`` (Celery's ``backend_cleanup``)."""
        cutoff = self._cutoff()
        if cutoff is None:
            return 0
        count = await self._orm(
            lambda: self._task_model.objects.filter(date_done__lte=cutoff).delete()[0])
        return int(count)

    def cleanup(self) -> int:
        return self._call(self.acleanup())

    async def ping(self) -> None:
        await self._orm(lambda: self._task_model.objects.exists())

    async def aclose(self) -> None:
        """Drop the running loop's result poller."""
        forget_pollers(self, asyncio.get_running_loop())

    def close(self) -> None:
        """Stop the ORM threads (their connections close as the threads end). Any thread."""
        forget_pollers(self)
        self._executor.shutdown(wait=False)
        super().close()


def _content_of(serializer: str) -> tuple[str, str]:
    found = serialization.serializer_by_name(serializer)
    return found.content_type, found.content_encoding
