"""Settings: Celery's names and defaults, attribute and mapping access, namespaces."""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from ..exceptions import CDeprecationWarning, ImproperlyConfigured
from .setting_names import CELERY_SETTINGS, OLD_NAMES

__all__ = ["DEFAULTS", "Settings", "map_old_names"]

logger = logging.getLogger("celery.app")

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
    # SQL result backends (db+postgresql://, db+mysql://, ...: backends/sql.py)
    "database_engine_options": {"pool_pre_ping": True, "pool_recycle": 3600},
    "database_engine_callback": None,
    "database_short_lived_sessions": False,
    "database_table_schemas": None,
    "database_table_names": None,
    "database_create_tables_at_setup": True,
    # tasks
    "task_serializer": "json",
    "task_compression": None,
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
    # message signing (celery/security/, app.setup_security)
    "security_key": None,
    "security_key_password": None,
    "security_certificate": None,
    "security_cert_store": None,
    "security_digest": "sha256",
    # misc
    "timezone": None,
    "enable_utc": True,
    "imports": (),
    "include": (),
    # The Django fix-up's (Celery reads it as CELERY_DB_REUSE_MAX): keep Django's database
    # connections for that many tasks per worker thread instead of closing them after each.
    "db_reuse_max": None,
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
        names are read as they are, and Celery 3's upper-case names (``BROKER_URL``,
        ``CELERY_ACKS_LATE``) as Celery 5 reads them (``map_old_names``); other upper-case
        names (a module's own constants) are not settings.
        """
        prefix = f"{namespace.upper()}_" if namespace else None

        def wanted(key: Any) -> bool:
            if not isinstance(key, str) or key.startswith("_"):
                return False
            return key.startswith(prefix) if prefix else (key.islower() or key in OLD_NAMES)

        if isinstance(obj, Mapping):
            items = [(k, v) for k, v in obj.items() if wanted(k)]
        else:
            # Names are filtered before they are read: Django's LazySettings lists names
            # that its __getattr__ refuses (lower-case ones of the defaults module).
            items = [(k, getattr(obj, k)) for k in dir(obj) if wanted(k) and hasattr(obj, k)]
        found: dict[str, Any] = {}
        for key, value in items:
            if prefix:
                self._data[key[len(prefix):].lower()] = value
            else:
                found[key] = value
        self._data.update(map_old_names(found))

    def apply_env(self, environ: Mapping[str, str] = os.environ) -> None:
        """The environment variables Celery reads win over every other source, as in
        Celery: ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (``celery -b`` and
        ``--result-backend`` set them for the processes the command starts)."""
        for env, key in (("CELERY_BROKER_URL", "broker_url"),
                         ("CELERY_RESULT_BACKEND", "result_backend")):
            if environ.get(env):
                self._data[key] = environ[env]

    def problems(self) -> list[str]:
        """One line for each setting given that this package does not act on: one of
        ``UNIMPLEMENTED`` set to another value than its default, a Celery setting it does
        not read (it has no effect), or a name Celery does not know (a misspelling, with
        the likely intended name)."""
        lines = [f"The setting {key!r} = {self._data[key]!r} is not implemented by "
                 f"celery-asyncio ({why})"
                 for key, why in UNIMPLEMENTED.items() if self._data.get(key) != DEFAULTS[key]]
        for key in sorted(k for k in self._data if k not in DEFAULTS and isinstance(k, str)):
            if key in CELERY_SETTINGS:
                lines.append(f"The setting {key!r} is not implemented by celery-asyncio: it has "
                             "no effect (docs/configuration.md lists what is read)")
            elif key.islower() and not key.startswith("_"):
                close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.75)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                lines.append(f"Unknown setting {key!r}: neither Celery nor celery-asyncio "
                             f"reads it{hint}")
        return lines


#: Settings accepted (they have Celery's default) whose other values this package does not
#: act on: ``Settings.problems`` names each one set to something else, with what to know.
UNIMPLEMENTED: dict[str, str] = {
    "task_annotations": "task attributes are set on the task (its decorator options) instead",
    "task_protocol": "only protocol 2 (Celery 4 and later) is sent and read",
    "worker_redirect_stdouts": "a task's print() goes to the worker's own stdout",
    "worker_proc_alive_timeout": "there is no prefork pool; --processes children are "
                                 "supervised by their parent",
    "worker_cancel_long_running_tasks_on_connection_loss": "running tasks always finish; "
                                                           "see docs/reliability.md",
    "database_short_lived_sessions": "the SQL result backend keeps no session: each "
                                     "operation checks a connection out of the pool",
}


#: Old setting names already warned about (once per process; any thread: the lock).
_warned_old: set[str] = set()
_warned_lock = threading.Lock()


def map_old_names(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with Celery 3's upper-case names (``OLD_NAMES``) renamed to the current
    ones, each warned about once (a log line and a CDeprecationWarning), as Celery 5 does.

    Raises:
        ImproperlyConfigured: old and new names are mixed (Celery 5 refuses that too),
        except an old name given beside its own new name (the new one wins).
    """
    old = [k for k in settings if k in OLD_NAMES]
    if not old:
        return dict(settings)
    new = [k for k in settings if k not in OLD_NAMES and (k in DEFAULTS or k in CELERY_SETTINGS)]
    mixed = sorted(k for k in old if OLD_NAMES[k] not in settings)
    if new and mixed:
        renames = ", ".join(f"{k} -> {OLD_NAMES[k]}" for k in mixed)
        raise ImproperlyConfigured(
            f"The settings mix Celery's old upper-case names with the new ones; rename: "
            f"{renames}")
    out = {k: v for k, v in settings.items() if k not in OLD_NAMES}
    for key in old:
        out.setdefault(OLD_NAMES[key], settings[key])
        with _warned_lock:
            if key in _warned_old:
                continue
            _warned_old.add(key)
        message = (f"The {key!r} setting is deprecated (Celery 6 drops it): use "
                   f"{OLD_NAMES[key]!r} instead")
        logger.warning("%s", message)
        warnings.warn(message, CDeprecationWarning, stacklevel=4)
    return out


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
