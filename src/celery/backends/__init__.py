"""Result backends: where task states and return values are kept."""

from .base import ResultBackend, backend_for_url

__all__ = ["ResultBackend", "backend_for_url"]
