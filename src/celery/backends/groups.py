"""What a result backend stores for groups and chords, in Celery's layout.

* A **saved group** (``GroupResult.save()``): key ``celery-taskset-meta-<group id>``, the
  encoded ``{"result": <GroupResult.as_tuple()>}``.
* A **chord**, joined by the backend itself (``supports_chord_join``): its header size
  (``<group key>.s``), extra members added later (``.t``, ``Task.add_to_chord``), the
  finished members' ``[1, task id, state, result]`` in header order (``.j``), who already
  reported (``.d``: ``<task id>:<index>``, so a redelivered member counts once), and the
  claim of the member that completes it (``.c``: a token, then ``done``, so the body is
  sent once even when two members finish together or one is redelivered). This is
  Celery 5.7's Redis layout; upstream workers and ours can share one chord.

``canvas/join.py`` decides what to do with what these methods return; a backend only
stores. One without its own join (``supports_chord_join`` False) gets Celery's
``celery.chord_unlock`` task instead, which polls the header's results.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .. import states

__all__ = ["ChordPart", "GroupsAndChords"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChordPart:
    """What a finished header member learns when it reports (``achord_part``)."""

    #: This member completed the header and claimed the body: the caller must send it
    #: (or fail it), then call ``achord_done`` with ``token``.
    claimed: bool = False
    #: Every member's encoded ``[1, task id, state, result]``, in header order (if claimed).
    parts: tuple[bytes, ...] = ()
    token: str | None = None
    #: The chord was already completed and cleaned up: a late duplicate, ignored.
    late: bool = False


class GroupsAndChords:
    """Mixed into ResultBackend: saved groups and the chord join (see the module docstring).

    Subclasses implement the storage coroutines (``_aset_group``, ``_aget_group``,
    ``_adelete_group``; and for a join of their own ``achord_part``, ``achord_done``,
    ``aadd_to_chord``, ``_aset_chord_sizes``). Same thread rules as the backend.
    """

    #: Prefix of saved groups and chord keys, as upstream names them.
    group_keyprefix = "celery-taskset-meta-"
    #: True when the backend counts chord members itself; else ``celery.chord_unlock``.
    supports_chord_join = False

    if TYPE_CHECKING:  # provided by ResultBackend
        conf: Any
        expires: float | None

        def encode(self, obj: Any) -> bytes: ...

        def decode(self, payload: bytes | str) -> Any: ...

        def prepare_exception(self, exc: BaseException) -> Any: ...

        def exception_to_python(self, value: Any) -> Any: ...

        def _call(self, coro: Coroutine[Any, Any, T]) -> T: ...

    # -- keys and encodings -------------------------------------------------------------------

    def get_key_for_group(self, group_id: str, suffix: str = "") -> str:
        if not group_id:
            raise ValueError(f"group_id must not be empty, got {group_id!r}")
        return f"{self.group_keyprefix}{group_id}{suffix}"

    @property
    def chord_expires(self) -> float | None:
        """Seconds a chord's keys live: ``result_chord_expires``, else ``result_expires``."""
        value = self.conf.get("result_chord_expires")
        if value is None:
            return self.expires
        if isinstance(value, dt.timedelta):
            value = value.total_seconds()
        return float(value) or None

    def encode_chord_part(self, task_id: str, state: str, result: Any) -> bytes:
        """A member's entry in the join: ``[1, task id, state, result]`` (an exception in
        its serializable form), as upstream writes it."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        return self.encode([1, task_id, state, result])

    def decode_chord_part(self, raw: bytes | str) -> tuple[str, str, Any]:
        """``(task id, state, value)`` of a join entry (an exception as an exception).

        Raises:
            ValueError: not a join entry.
        """
        entry = self.decode(raw)
        if not isinstance(entry, list | tuple) or len(entry) != 4:
            raise ValueError(f"not a chord join entry: {entry!r:.100}")
        _, task_id, state, value = entry
        if state in states.EXCEPTION_STATES:
            value = self.exception_to_python(value)
        return str(task_id), str(state), value

    # -- saved groups -------------------------------------------------------------------------

    async def asave_group(self, group_id: str, result: Any) -> None:
        """Store ``result`` (a GroupResult) under ``group_id`` (``result_expires``)."""
        await self._aset_group(group_id, self.encode({"result": result.as_tuple()}), self.expires)

    async def aget_group_meta(self, group_id: str) -> dict[str, Any] | None:
        """The saved group's decoded meta (``{"result": <as_tuple>}``), or None."""
        raw = await self._aget_group(group_id)
        if raw is None:
            return None
        meta = self.decode(raw)
        return meta if isinstance(meta, dict) and "result" in meta else None

    async def adelete_group(self, group_id: str) -> None:
        await self._adelete_group(group_id)

    def save_group(self, group_id: str, result: Any) -> None:
        self._call(self.asave_group(group_id, result))

    def get_group_meta(self, group_id: str) -> dict[str, Any] | None:
        return self._call(self.aget_group_meta(group_id))

    def delete_group(self, group_id: str) -> None:
        self._call(self.adelete_group(group_id))

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot save groups")

    async def _aget_group(self, group_id: str) -> bytes | None:
        raise NotImplementedError(f"{type(self).__name__} cannot restore groups")

    async def _adelete_group(self, group_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot delete groups")

    # -- chords -------------------------------------------------------------------------------

    async def aprepare_chords(self, sizes: Sequence[tuple[str, int]],
                              groups: Sequence[Any]) -> None:
        """Before a chord's header is sent: store each chord's header size (a backend with
        its own join) and each header GroupResult that must be saved (nested groups)."""
        if sizes and self.supports_chord_join:
            await self._aset_chord_sizes(sizes)
        for group in groups:
            await self._aset_group(group.id, self.encode({"result": group.as_tuple()}),
                                   self.chord_expires)

    def prepare_chords(self, sizes: Sequence[tuple[str, int]], groups: Sequence[Any]) -> None:
        if (sizes and self.supports_chord_join) or groups:
            self._call(self.aprepare_chords(sizes, groups))

    async def _aset_chord_sizes(self, sizes: Sequence[tuple[str, int]]) -> None:
        raise NotImplementedError

    async def achord_part(self, group_id: str, task_id: str, index: int | None,
                          part: bytes) -> ChordPart:
        """Record a finished member (``part``: ``encode_chord_part``) at most once, and
        claim the chord if that completed its header."""
        raise NotImplementedError(f"{type(self).__name__} has no chord join")

    async def achord_done(self, group_id: str, token: str) -> None:
        """The claimed chord was handled: drop its keys, leave the ``done`` mark."""
        raise NotImplementedError(f"{type(self).__name__} has no chord join")

    async def aadd_to_chord(self, group_id: str, count: int = 1) -> None:
        """``count`` more members will report to this chord (``Task.add_to_chord``)."""
        raise NotImplementedError(f"{type(self).__name__} has no chord join")

    def chord_part(self, group_id: str, task_id: str, index: int | None,
                   part: bytes) -> ChordPart:
        return self._call(self.achord_part(group_id, task_id, index, part))

    def chord_done(self, group_id: str, token: str) -> None:
        self._call(self.achord_done(group_id, token))

    def add_to_chord(self, group_id: str, count: int = 1) -> None:
        self._call(self.aadd_to_chord(group_id, count))
