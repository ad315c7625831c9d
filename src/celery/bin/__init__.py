"""The ``celery`` command line (click), one module per command."""
