"""Tasks that use the ORM: a def task with the sync ORM, an async def task with the async ORM."""

from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import F

from celery import shared_task

from .models import Widget


@shared_task
def bump(name: str) -> int:
    """Add one to the widget's counter (made if missing); returns the new count."""
    widget, _ = Widget.objects.get_or_create(name=name)
    Widget.objects.filter(pk=widget.pk).update(bumps=F("bumps") + 1)
    widget.refresh_from_db()
    return widget.bumps


@shared_task
async def abump(name: str) -> int:
    """The same through Django's async ORM (its queries run on asgiref's thread)."""
    widget, _ = await Widget.objects.aget_or_create(name=name)
    await Widget.objects.filter(pk=widget.pk).aupdate(bumps=F("bumps") + 1)
    await widget.arefresh_from_db()
    return widget.bumps


@shared_task
def connection_open() -> bool:
    """Whether this thread's database connection was open when the task began (the worker
    closes it around each task, as Celery's does)."""
    return connection.connection is not None


@shared_task
async def aconnection_open() -> bool:
    """Whether the connection of asgiref's thread (where the async ORM runs) was open when
    this async task began (the worker closes it after each async task)."""
    return await sync_to_async(lambda: connection.connection is not None)()
