"""Tiny applications the tests load by module name (``celery -A tests.apps.cliapp``)."""
