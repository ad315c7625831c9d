"""Settings: Celery's names and defaults, attribute and mapping access, namespaces."""

from __future__ import annotations

import datetime as dt
import importlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from ..exceptions import ImproperlyConfigured

__all__ = ["DEFAULTS", "Settings"]

#: Every setting this package reads, with Celery's default.
DEFAULTS: dict[str, Any] = {
    # broker
    "broker_url": None,
    "broker_transport_options": {},
    # Celery's TLS setting: TLS options for amqp:// and amqps:// (py-amqp's keys); the Redis
    # transport takes TLS from a rediss:// URL and its ssl_* options, so app.transport refuses
    # a value here for other brokers.
    "broker_use_ssl": None,
    "broker_connection_retry": True,
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": 100,
    "broker_connection_timeout": 4.0,
    "broker_pool_limit": 10,
    "broker_heartbeat": 120.0,
    # results
    "result_backend": None,
    "result_backend_transport_options": {},
    "result_serializer": "json",
    "result_accept_content": None,
    "result_expires": dt.timedelta(days=1),
    "result_extended": False,
    "result_persistent": None,
    "result_chord_join_timeout": 3.0,
    "result_chord_retry_interval": 1.0,
    "result_chord_expires": None,
    # tasks
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_default_queue": "celery",
    "task_default_exchange": None,
    "task_default_exchange_type": "direct",
    "task_default_routing_key": None,
    "task_default_priority": None,
    "task_default_delivery_mode": 2,
    # AMQP topology (transport/amqp_topology.py), Celery 5.5's names and defaults
    "task_default_queue_type": "classic",
    "task_queue_max_priority": None,
    "task_create_missing_queue_type": "classic",
    "task_create_missing_queue_exchange_type": None,
    # Celery 5.5's quorum-queue rules (transport/amqp_topology.py, transport/amqp_delayed.py)
    "worker_detect_quorum_queues": True,
    "broker_native_delayed_delivery_queue_type": "quorum",
    "task_ignore_result": False,
    "task_store_errors_even_if_ignored": False,
    "task_acks_late": False,
    "task_acks_on_failure_or_timeout": True,
    "task_reject_on_worker_lost": None,
    "task_track_started": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_routes": None,
    "task_queues": None,
    "task_create_missing_queues": True,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_store_eager_result": False,
    "task_default_rate_limit": None,
    "worker_disable_rate_limits": False,
    "task_protocol": 2,
    "task_publish_retry": True,
    # Read by the AMQP transport (Redis retries by its own max_retries transport option).
    "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                                  "interval_max": 1},
    "task_annotations": None,
    "task_allow_error_cb_on_chord_header": False,
    "task_inherit_parent_priority": False,
    # worker
    "worker_prefetch_multiplier": 4,
    "worker_concurrency": None,
    "worker_processes": 1,
    "worker_loop_workers": 1,
    "worker_loop_concurrency": 100,
    "worker_loop_inline": False,
    "worker_sync_workers": None,
    "worker_hijack_root_logger": True,
    "worker_log_format": "[%(asctime)s: %(levelname)s/%(threadName)s] %(message)s",
    "worker_task_log_format": (
        "[%(asctime)s: %(levelname)s/%(threadName)s] %(task_name)s[%(task_id)s]: %(message)s"
    ),
    "worker_redirect_stdouts": True,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "worker_proc_alive_timeout": 4.0,
    "worker_state_db": None,
    "worker_gc_threshold": 10_000,
    # ours: the Prometheus endpoint (worker/metrics.py; needs the ``metrics`` extra); None: off
    "worker_metrics_port": None,
    "worker_metrics_host": "127.0.0.1",
    # remote control
    "control_exchange": "celery",
    "control_queue_ttl": 300.0,
    "control_queue_expires": 10.0,
    # RabbitMQ only (transport/amqp_mailbox.py): how pidbox and event queues are declared
    "control_queue_durable": False,
    "control_queue_exclusive": False,
    # events (celery/events/, worker/events.py)
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "event_exchange": "celeryev",
    "event_serializer": "json",
    "event_queue_prefix": "celeryev",
    "event_queue_ttl": 5.0,
    "event_queue_expires": 60.0,
    "event_queue_durable": False,
    "event_queue_exclusive": False,
    # beat (celery/beat/)
    "beat_schedule": {},
    "beat_scheduler": "celery.beat:PersistentScheduler",
    "beat_schedule_filename": "celerybeat-schedule",
    "beat_sync_every": 0,
    "beat_max_loop_interval": 0,
    "beat_cron_starting_deadline": None,
    # ours: the leader lease (seconds a term lasts without renewal; its name on the broker)
    "beat_lease_seconds": 6.0,
    "beat_lease_name": None,
    # ours: an entry naming a task this app does not register: "skip" it or "send" by name
    "beat_unregistered_tasks": "skip",
    # misc
    "timezone": None,
    "enable_utc": True,
    "imports": (),
    "include": (),
}


class Settings(MutableMapping[str, Any]):
    """Configuration of one app: attribute and mapping access over Celery's setting names.

    Not thread-safe for writes: configure the app before starting workers or threads that
    read it (reads from any thread are safe once configuration is done).
    """

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(DEFAULTS if defaults is None else defaults))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"No setting named {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<Settings: {len(self._data)} keys>"

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def load_object(self, obj: Any, namespace: str | None = None) -> None:
        """Copy settings from a module, class or object (or a mapping).

        With ``namespace="CELERY"`` only names like ``CELERY_BROKER_URL`` are read, each
        mapped to its lowercase setting (``broker_url``). Without a namespace, lowercase
        names are read as they are.
        """
        items = obj.items() if isinstance(obj, Mapping) else ((k, getattr(obj, k)) for k in dir(obj))
        prefix = f"{namespace.upper()}_" if namespace else None
        for key, value in items:
            if key.startswith("_"):
                continue
            if prefix:
                if not key.startswith(prefix):
                    continue
                self._data[key[len(prefix):].lower()] = value
            elif key.islower():
                self._data[key] = value

    def apply_env(self, environ: Mapping[str, str] = os.environ) -> None:
        """Read the environment variables Celery reads (CELERY_BROKER_URL, ...)."""
        for env, key in (("CELERY_BROKER_URL", "broker_url"),
                         ("CELERY_RESULT_BACKEND", "result_backend")):
            if environ.get(env) and not self._data.get(key):
                self._data[key] = environ[env]


def import_object(path: str) -> Any:
    """Import ``"pkg.module"``, ``"pkg.module:attr"`` or ``"pkg.module.attr"``."""
    module_name, sep, attr = path.partition(":")
    try:
        if sep:
            return getattr(importlib.import_module(module_name), attr)
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path or "." not in path:
                raise
            module_name, _, attr = path.rpartition(".")
            return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"Cannot import {path!r}: {exc}") from exc
