"""Settings for config_from_object tests."""

broker_url = "redis://127.0.0.1:6379/3"
task_default_queue = "from-module"
CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/4"
CELERY_TASK_SERIALIZER = "msgpack"
_private = "ignored"
