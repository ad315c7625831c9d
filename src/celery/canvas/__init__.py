"""The canvas: signatures and the workflows made of them (chain, group, chord, chunks, map).

``from celery import chain, group, chord, signature`` and ``from celery.canvas import ...``
both work, with Celery's names.
"""

from .chains import chain
from .chords import chord
from .groups import group, maybe_unroll_group
from .maps import chunks, xmap, xstarmap
from .signatures import Signature, maybe_signature, maybe_subtask, signature, subtask

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "maybe_subtask",
    "maybe_unroll_group",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
