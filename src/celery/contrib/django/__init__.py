"""Django helpers (Celery's ``celery.contrib.django``)."""
