"""``app.loader``: the part of Celery's loader that code written for Celery still calls."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Celery

__all__ = ["Loader"]


class Loader:
    """Imports the app's ``imports`` and ``include`` modules (Flower calls this at start).

    Celery's loaders also read configuration; here settings come from ``app.conf`` and
    ``config_from_object``, so this is all that is left. Safe from any thread.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    def import_default_modules(self) -> list[ModuleType]:
        """Finalize the app (its ``imports``/``include``, pending autodiscovery) and return
        the ``imports`` and ``include`` modules."""
        self.app.finalize()
        conf = self.app.conf
        return [importlib.import_module(name)
                for name in (*tuple(conf.imports or ()), *tuple(conf.include or ()))]
