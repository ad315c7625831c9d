"""Optional extras kept under Celery's import paths (``celery.contrib.abortable``)."""
