"""``manage.py probe``: whether tasks find a database connection left open by the one before."""

from django.core.management.base import BaseCommand

from demoapp.tasks import abump, aconnection_open, bump, connection_open


class Command(BaseCommand):
    help = "Run a task that uses the ORM, then one that reports whether a connection was open"

    def handle(self, **options):
        seen = []
        for first, probe in ((bump, connection_open), (abump, aconnection_open)):
            first.delay("probe").get(timeout=60)
            seen.append(f"{probe.name.rsplit('.', 1)[1]}={probe.delay().get(timeout=60)}")
        self.stdout.write(" ".join(seen))
