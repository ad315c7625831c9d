"""Helpers for testing code that uses Celery: an app for tests (``app.TestApp``), a worker
in a thread of the test process (``worker.start_worker``), and the ``celery.ping`` task it
checks with (``tasks.ping``). ``celery.contrib.pytest`` builds its fixtures on them."""
