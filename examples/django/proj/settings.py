"""Settings of the example project: PostgreSQL through psycopg 3, Celery's CELERY_* settings,
results in the database through django-celery-results' tables.

The database and broker come from the environment so the test suite can point them at its
own; the defaults suit a local PostgreSQL with trust authentication.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    # Task results as rows of its tables (result_backend "django-db", docs/django.md);
    # installed with `pip install django-celery-results --no-deps`.
    "django_celery_results",
    "demoapp",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when installed
        "NAME": os.environ.get("DJANGO_DB_NAME", "celery_django"),
        "USER": os.environ.get("DJANGO_DB_USER", "postgres"),
        "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DJANGO_DB_PORT", "5432"),
        # Names our connections in pg_stat_activity (the test counts the ones left open).
        "OPTIONS": {"application_name": os.environ.get("DJANGO_DB_APP", "celery-django-example")},
    }
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "sqlite:///celery-broker.db")
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
