"""``manage.py bump NAME``: send both tasks from Django and print their results."""

from django.core.management.base import BaseCommand

from demoapp.tasks import abump, bump


class Command(BaseCommand):
    help = "Bump a widget through the worker, with the def task then the async def task"

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, name, timeout, **options):
        first = bump.delay(name).get(timeout=timeout)
        second = abump.delay(name).get(timeout=timeout)
        self.stdout.write(f"bump={first} abump={second}")
