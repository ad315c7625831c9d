"""Upstream Celery's ``celery_taskmeta``/``celery_tasksetmeta`` tables and what their columns hold.

The tables are those of upstream's SQLAlchemy models (``celery/backends/database/models.py``
of Celery 5.7), so that upstream Celery reads what we store and we read what it stores::

    celery_taskmeta                       (database_table_names["task"])
      id         INTEGER  primary key, sequence task_id_sequence (PostgreSQL, Oracle)
      task_id    VARCHAR(155) UNIQUE
      status     VARCHAR(50)
      result     BLOB      the result encoded with result_serializer (an exception in its
                           serializable form)
      date_done  DATETIME  naive UTC; NULL while not ready; indexed
      traceback  TEXT
      children   BLOB      the encoded children's as_tuple()s, NULL when none
      name, args, kwargs, worker, retries, queue, stamps     (result_extended; args, kwargs
                           and stamps {"stamped_headers": [...], "stamps": {...}} encoded)
    celery_tasksetmeta                    (database_table_names["group"])
      id          INTEGER  primary key, sequence taskset_id_sequence
      taskset_id  VARCHAR(155) UNIQUE
      result      BLOB      the encoded GroupResult.as_tuple() (pickle: the GroupResult)
      date_done   DATETIME

Tables made by older Celery lack ``children`` and ``stamps``: only the columns a table has
are read and written. Celery 5.6 and older wrote ``result`` as a pickle whatever the
serializer (SQLAlchemy's ``PickleType``); such a value (it starts with the pickle marker
``0x80`` and does not decode) is read with a restricted unpickler (plain data, dates,
exceptions) unless ``result_accept_content`` accepts pickle. A pickled group (pickle
serializer, or old Celery) is read into ``as_tuple()`` form without running any of its
classes, and we write one as the pickle upstream's ``GroupResult.__reduce__`` makes.

Tables we create differ from upstream's in two widths on MySQL/MariaDB only, both readable
by upstream: ``LONGBLOB`` (not ``BLOB``, capped at 64 KiB) and ``DATETIME(6)`` (not whole
seconds).
"""

from __future__ import annotations

import builtins
import collections
import datetime as dt
import decimal
import io
import pickle
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from .. import states
from ..exceptions import DecodeError

__all__ = ["EXTENDED", "PICKLE_MARK", "Tables", "dump_group", "load_group", "load_pickled"]

_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_ID = sa.Integer().with_variant(sa.BigInteger(), "mssql")
#: The ``result_extended`` columns of celery_taskmeta.
EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue", "stamps")
#: A pickle of protocol 2 or later starts with this (upstream's test for an old row).
PICKLE_MARK = b"\x80"


class Tables:
    """The two tables, named and placed as ``database_table_names``/``_schemas`` say.

    Immutable after ``__init__``; shared by every thread.
    """

    def __init__(self, names: dict[str, str] | None = None,
                 schemas: dict[str, str] | None = None) -> None:
        names, schemas = names or {}, schemas or {}
        self.metadata = sa.MetaData()
        task_schema, group_schema = schemas.get("task"), schemas.get("group")
        self.task = sa.Table(
            names.get("task") or "celery_taskmeta", self.metadata,
            sa.Column("id", _ID, sa.Sequence("task_id_sequence", schema=task_schema),
                      primary_key=True, autoincrement=True),
            sa.Column("task_id", sa.String(155), unique=True),
            sa.Column("status", sa.String(50), default=states.PENDING),
            sa.Column("result", _BLOB, nullable=True),
            sa.Column("date_done", _DATETIME, nullable=True, index=True),
            sa.Column("traceback", sa.Text, nullable=True),
            sa.Column("children", _BLOB, nullable=True),
            sa.Column("name", sa.String(155), nullable=True),
            sa.Column("args", _BLOB, nullable=True),
            sa.Column("kwargs", _BLOB, nullable=True),
            sa.Column("worker", sa.String(155), nullable=True),
            sa.Column("retries", sa.Integer, nullable=True),
            sa.Column("queue", sa.String(155), nullable=True),
            sa.Column("stamps", _BLOB, nullable=True),
            schema=task_schema, sqlite_autoincrement=True,
        )
        self.group = sa.Table(
            names.get("group") or "celery_tasksetmeta", self.metadata,
            sa.Column("id", _ID, sa.Sequence("taskset_id_sequence", schema=group_schema),
                      primary_key=True, autoincrement=True),
            sa.Column("taskset_id", sa.String(155), unique=True),
            sa.Column("result", _BLOB, nullable=True),
            sa.Column("date_done", _DATETIME, nullable=True, index=True),
            schema=group_schema, sqlite_autoincrement=True,
        )

    def task_columns(self, extended: bool, present: set[str]) -> list[sa.Column[Any]]:
        """The task table's columns read and written (without ``id``): those of upstream's
        model (``extended``: its TaskExtended) that the table has (``present``)."""
        names = ["task_id", "status", "result", "date_done", "traceback", "children"]
        if extended:
            names += EXTENDED
        return [self.task.c[n] for n in names if n in present]


# -- dates ----------------------------------------------------------------------------------

def to_db_time(value: str | dt.datetime | None) -> dt.datetime | None:
    """A meta's ``date_done`` (ISO text) as the naive UTC datetime upstream stores."""
    if value is None:
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def from_db_time(value: dt.datetime | None) -> str | None:
    """A stored ``date_done`` as the ISO text of our metas (naive is read as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


# -- results ----------------------------------------------------------------------------------

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", n): getattr(builtins, n)
    for n in ("set", "frozenset", "dict", "list", "tuple", "bytearray", "bytes", "complex",
              "int", "float", "str", "bool", "range", "slice")
}
_SAFE_GLOBALS.update({
    ("datetime", "datetime"): dt.datetime, ("datetime", "date"): dt.date,
    ("datetime", "time"): dt.time, ("datetime", "timedelta"): dt.timedelta,
    ("datetime", "timezone"): dt.timezone, ("decimal", "Decimal"): decimal.Decimal,
    ("uuid", "UUID"): uuid.UUID, ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "deque"): collections.deque,
})
_EXCEPTION_MODULES = ("builtins", "exceptions", "celery.exceptions")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data, dates, decimals, UUIDs and exceptions of builtins and
    ``celery.exceptions``; any other global is refused (``pickle.UnpicklingError``)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module in _EXCEPTION_MODULES:
            mod = builtins if module != "celery.exceptions" else _celery_exceptions()
            obj = getattr(mod, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def _celery_exceptions() -> Any:
    from .. import exceptions

    return exceptions


def load_pickled(raw: bytes, trusted: bool, what: str) -> Any:
    """A pickled ``result`` column (old Celery); ``trusted``: pickle accepted, unpickle
    anything.

    Raises:
        DecodeError: not a pickle, or (not trusted) one that names a disallowed global.
    """
    try:
        if trusted:
            return pickle.loads(raw)  # noqa: S301 - result_accept_content accepts pickle
        return _SafeUnpickler(io.BytesIO(bytes(raw))).load()
    except Exception as exc:
        raise DecodeError(
            f"The stored result of {what} cannot be read: {exc} (a pickled object other than "
            "plain data, dates and exceptions is read only when result_accept_content "
            "includes 'pickle')") from None


# -- saved groups -----------------------------------------------------------------------------

def _pickled_str(value: str) -> bytes:
    """BINUNICODE: ``X``, the UTF-8 length (4 bytes, little-endian), the UTF-8 bytes."""
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + len(data).to_bytes(4, "little") + data


def _node(node: Any) -> bytes:
    """Opcodes building the result ``node`` (an ``as_tuple()``): ``AsyncResult(id, None,
    None, None, parent)`` or ``GroupResult(id, [children], parent)``."""
    (node_id, parent), children = node
    parent_ops = b"N" if not parent else _node(parent)
    if children is None:
        return (b"ccelery.result\nAsyncResult\n(" + _pickled_str(str(node_id)) + b"NNN"
                + parent_ops + b"tR")
    items = b"".join(_node(child) for child in children)
    return (b"ccelery.result\nGroupResult\n(" + _pickled_str(str(node_id)) + b"](" + items
            + b"e" + parent_ops + b"tR")


def dump_group(as_tuple: Any) -> bytes:
    """The ``result`` column of a saved group: the pickle upstream writes for its
    ``GroupResult`` (``as_tuple``: our ``GroupResult.as_tuple()``)."""
    return b"\x80\x02" + _node(as_tuple) + b"."


def _async_result(id: Any, backend: Any = None, task_name: Any = None, app: Any = None,
                  parent: Any = None) -> Any:
    return ((id, parent), None)


def _group_result(id: Any = None, results: Any = None, parent: Any = None, **_: Any) -> Any:
    return ((id, parent), list(results or ()))


def _no_backend(cls: Any, args: Any, kwargs: Any) -> None:
    return None


class _Ignored:
    """Stands in for an upstream backend class named in a pickled AsyncResult."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _GroupUnpickler(_SafeUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "celery.result":
            if name in ("AsyncResult", "EagerResult"):
                return _async_result
            if name == "GroupResult":
                return _group_result
        if (module, name) == ("celery.backends.base", "unpickle_backend"):
            return _no_backend
        if module.startswith("celery.backends."):
            return _Ignored
        return super().find_class(module, name)


def load_group(raw: bytes, what: str) -> Any:
    """A saved group's ``GroupResult.as_tuple()``, read from upstream's pickle.

    Raises:
        DecodeError: not such a pickle.
    """
    try:
        value = _GroupUnpickler(io.BytesIO(bytes(raw))).load()
    except Exception as exc:
        raise DecodeError(f"The saved group {what} cannot be read: {exc}") from None
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], list)):
        raise DecodeError(f"The saved group {what} is not a GroupResult: {value!r:.100}")
    return value
