"""The GIL on free-threaded builds: keep it off, and say who turned it on when it is on.

On a free-threaded CPython (``python3.13t``, built with ``--disable-gil``), importing a C
extension that does not declare it can run without the GIL turns the GIL back on, for the
whole process and for good, with only a ``RuntimeWarning``. The Redis client's fast reply
parsers (``libvalkey``, ``hiredis``) are such extensions as built today. A worker that loads
them runs its threads one at a time again.

So, on a free-threaded build whose GIL is still off when ``celery`` is imported,
:func:`keep_off` makes those modules unimportable (``sys.modules[name] = None``, the import
system's own way to say "no such module"): valkey-py then parses replies in Python. Set
``CELERY_ALLOW_GIL=1`` to let them load anyway (the GIL then comes back). On GIL builds, when
the GIL is on already, and under ``PYTHON_GIL=0`` (which keeps it off whatever loads, at the
user's own risk), nothing is blocked.

:func:`watch` records which extension module turned the GIL on, when one does after
``celery`` is imported, so that the worker can say so at start (:func:`describe`).

Thread-safety: both run once, at import of ``celery``, on the importing thread, before any
worker thread exists. ``_ENABLED_BY`` is appended to by whichever thread imports an extension
afterwards; ``list.append`` is atomic on every build (a per-object lock on free-threaded
ones), and it is only read at worker start, for a log line.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from importlib.abc import MetaPathFinder
from typing import Any

__all__ = ["BLOCKED", "FREE_THREADED", "NO_EXTENSIONS_ENV", "describe", "enabled", "keep_off",
           "watch"]

#: True on a free-threaded build (the GIL can be off).
FREE_THREADED = False
if hasattr(sys, "_is_gil_enabled"):  # 3.13 and newer; sysconfig costs an import before that
    import sysconfig

    FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

#: Extension modules that turn the GIL on (seen with libvalkey 4.2.1 and hiredis 3.5.0
#: built for 3.13t), and what is used in their place. uvloop (0.23) and msgpack (1.2.4)
#: declare free-threading support and load; an older release that does not is named by
#: :func:`describe` as what turned the GIL on.
GIL_MODULES = {
    "libvalkey": "valkey-py's pure-Python reply parser",
    "hiredis": "valkey-py's pure-Python reply parser",
}

#: aio-pika's dependencies with an optional C extension and a pure-Python fallback chosen by
#: an environment variable: the extensions may be built without free-threading support (an
#: sdist built for 3.13t), and only URL parsing at connect time uses them, so on a
#: free-threaded build :func:`keep_off` sets these (unless the user did) before the AMQP
#: transport imports them.
NO_EXTENSIONS_ENV = ("YARL_NO_EXTENSIONS", "MULTIDICT_NO_EXTENSIONS", "PROPCACHE_NO_EXTENSIONS")

#: The modules :func:`keep_off` made unimportable.
BLOCKED: list[str] = []
#: Extension modules whose import turned the GIL on (see :func:`watch`).
_ENABLED_BY: list[str] = []


def enabled() -> bool:
    """Whether the GIL is on now (always True on GIL builds and before 3.13)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _forced_off() -> bool:
    """``PYTHON_GIL=0`` or ``-X gil=0``: the interpreter never turns the GIL on again."""
    return os.environ.get("PYTHON_GIL") == "0" or getattr(sys.flags, "gil", None) == 0


def keep_off() -> None:
    """On a free-threaded build with the GIL off, block the installed modules that would turn
    it on (not when ``CELERY_ALLOW_GIL=1``, nor when ``PYTHON_GIL=0`` keeps it off anyway)."""
    if (not FREE_THREADED or enabled() or os.environ.get("CELERY_ALLOW_GIL") == "1"
            or _forced_off()):
        return
    for name in GIL_MODULES:
        if name not in sys.modules and importlib.machinery.PathFinder.find_spec(name):
            sys.modules[name] = None  # type: ignore[assignment]
            BLOCKED.append(name)
    for variable in NO_EXTENSIONS_ENV:
        os.environ.setdefault(variable, "1")


class _Watched(importlib.machinery.ExtensionFileLoader):
    """An extension loader that notes when loading its module turned the GIL on."""

    def create_module(self, spec: Any) -> Any:
        before = enabled()
        module = super().create_module(spec)
        if not before and enabled():
            _ENABLED_BY.append(spec.name)
        return module


class _Watcher(MetaPathFinder):
    """Finds nothing itself: asks the finders after it and watches the extensions they find."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if not enabled():
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is None:
                    continue
                if type(spec.loader) is importlib.machinery.ExtensionFileLoader:
                    spec.loader = _Watched(spec.loader.name, spec.loader.path)
                return spec
        return None


def watch() -> None:
    """On a free-threaded build with the GIL off, note which extension turns it on."""
    if FREE_THREADED and not enabled() and not any(
            isinstance(f, _Watcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())


def describe() -> tuple[str, str | None]:
    """The interpreter and its GIL state for the worker's start-up log, and a warning to log
    when the GIL is on in a free-threaded build (None otherwise)."""
    build = "free-threaded build" if FREE_THREADED else "GIL build"
    impl = sys.implementation.name
    version = ".".join(map(str, sys.version_info[:3]))
    state = "GIL enabled" if enabled() else "GIL disabled"
    line = f"{impl} {version} ({build}), {state}"
    if BLOCKED and not enabled():
        line += "; not loaded, to keep it off: " + ", ".join(
            f"{name} ({GIL_MODULES[name]} instead)" for name in BLOCKED)
    if not (FREE_THREADED and enabled()):
        return line, None
    if _ENABLED_BY:
        who = "it was turned on by importing " + ", ".join(_ENABLED_BY)
        fix = ("; these modules do not declare free-threading support: uninstall them or "
               "install celery-asyncio[redis-ft] instead of [redis], or run with PYTHON_GIL=0 "
               "(at your own risk)")
    elif os.environ.get("PYTHON_GIL") == "1" or getattr(sys.flags, "gil", None) == 1:
        who, fix = "PYTHON_GIL=1 or -X gil=1 asked for it", ""
    else:
        who = "a module imported before celery turned it on"
        fix = (" (run with -W error::RuntimeWarning to see which), or CELERY_ALLOW_GIL=1 let "
               "libvalkey or hiredis load; run with PYTHON_GIL=0 to keep it off (at your own "
               "risk)")
    return line, (f"The GIL is enabled on this free-threaded build: {who}{fix}. Threads "
                  "will run Python one at a time.")
