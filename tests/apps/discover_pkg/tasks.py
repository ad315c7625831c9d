"""Found by app.autodiscover_tasks(["tests.apps.discover_pkg"])."""

from celery import shared_task


@shared_task
def discovered(x):
    return x * 3
