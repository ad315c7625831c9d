"""Objects named by a string: ``symbol_by_name("pkg.module:Class")``, ``instantiate``."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["instantiate", "symbol_by_name"]


def symbol_by_name(name: Any, default: Any = None) -> Any:
    """The object ``"pkg.module:attr"`` or ``"pkg.module.attr"`` names (Celery's helper).

    A non-string is returned as it is. An ``ImportError`` or ``AttributeError`` propagates
    unless ``default`` is given, which is then returned.
    """
    if not isinstance(name, str):
        return name
    module_name, colon, attr = name.partition(":")
    if not colon:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{name!r} does not name an object: expected 'module:attr' or "
                         f"'module.attr'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        if default is not None:
            return default
        raise


def instantiate(name: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the class (or factory) ``name`` names with ``args`` and ``kwargs``."""
    return symbol_by_name(name)(*args, **kwargs)
