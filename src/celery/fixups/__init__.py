"""Fix-ups applied to every app when their framework is in use (Celery's ``celery.fixups``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["apply_builtin_fixups"]


def apply_builtin_fixups(app: Celery) -> list[Any]:
    """The fix-ups that apply to ``app`` (today only Django's, when DJANGO_SETTINGS_MODULE
    is set); Django itself is imported only then."""
    from .django import fixup

    found = fixup(app)
    return [found] if found is not None else []
