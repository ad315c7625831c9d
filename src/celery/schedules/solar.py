"""Solar schedules: run at sunrise, sunset, twilight or solar noon at a place.

A :class:`solar` schedule runs at instants, which have no DST issue. The sun's position
comes from :mod:`celery.utils.sun`.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..utils.sun import solar_crossings, solar_semidiameter, solar_transits
from ..utils.time import to_utc
from .base import BaseSchedule, schedstate

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["solar"]

#: How far solar looks for the next run: the sun crosses every horizon we use at least once
#: a year.
_SOLAR_SEARCH = dt.timedelta(days=400)

#: event -> (altitude of the sun's centre in degrees, or None for the upper limb at -34'
#: (sunrise and sunset, refraction included); rising, setting, or None for solar noon).
_SOLAR_EVENTS: dict[str, tuple[float | None, bool | None]] = {
    "dawn_astronomical": (-18.0, True),
    "dawn_nautical": (-12.0, True),
    "dawn_civil": (-6.0, True),
    "sunrise": (None, True),
    "solar_noon": (0.0, None),
    "sunset": (None, False),
    "dusk_civil": (-6.0, False),
    "dusk_nautical": (-12.0, False),
    "dusk_astronomical": (-18.0, False),
}


def _limb_horizon(when: dt.datetime) -> float:
    return -34.0 / 60.0 - solar_semidiameter(when)


class solar(BaseSchedule):
    """Run at a solar event at a place: sunrise, sunset, twilight or solar noon.

    Args:
        event: one of ``dawn_astronomical``, ``dawn_nautical``, ``dawn_civil``,
            ``sunrise``, ``solar_noon``, ``sunset``, ``dusk_civil``, ``dusk_nautical``,
            ``dusk_astronomical``.
        lat: latitude in degrees, -90 to 90 (north positive).
        lon: longitude in degrees, -180 to 180 (east positive).
        nowfun, app: as for :class:`schedule`.

    Sunrise and sunset are when the sun's upper edge is at -34' (the usual allowance for
    refraction); dawn and dusk when its centre is 6, 12 or 18 degrees below the horizon;
    solar noon when it crosses the meridian. Times come from NOAA's solar equations, within
    about a minute of published tables below the polar circles. On days without the
    event (polar day or night) the schedule waits for the next day that has it.

    Raises:
        ValueError: an unknown event, or a latitude or longitude out of range.
    """

    _all_events = frozenset(_SOLAR_EVENTS)

    def __init__(self, event: str, lat: float, lon: float,
                 nowfun: Callable[[], dt.datetime] | None = None,
                 app: Celery | None = None) -> None:
        if event not in _SOLAR_EVENTS:
            raise ValueError(f"Argument event {event!r} is invalid, must be one of "
                             f"{', '.join(sorted(_SOLAR_EVENTS))}.")
        for name, value, limit in (("latitude", lat, 90), ("longitude", lon, 180)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"solar {name} must be a number, not {type(value).__name__}")
            if math.isnan(value) or not -limit <= value <= limit:
                raise ValueError(f"Argument {name} {value} is invalid, must be between "
                                 f"{-limit} and {limit}.")
        self.event = event
        self.lat = lat
        self.lon = lon
        super().__init__(nowfun=nowfun, app=app)

    def next_event(self, after: dt.datetime) -> dt.datetime | None:
        """The first occurrence of the event strictly after ``after`` (naive: UTC), in UTC;
        ``None`` if there is none within 400 days (only within a hair of the poles)."""
        after = to_utc(after)
        start = after.date() - dt.timedelta(days=1)
        altitude, rising = _SOLAR_EVENTS[self.event]
        if rising is None:
            for _, noon in solar_transits(start, self.lon):
                if noon > after:
                    return noon
        horizon = _limb_horizon if altitude is None else (lambda _when: altitude)
        for when, up in solar_crossings(start, after + _SOLAR_SEARCH, self.lat, self.lon,
                                        horizon):
            if up == rising and when > after:
                return when
        return None

    def remaining_estimate(self, last_run_at: dt.datetime) -> dt.timedelta:
        """Time from now until the first event after ``last_run_at``; when the event does
        not happen within 400 days, a day (time to look again)."""
        now = to_utc(self.maybe_make_aware(self.now()))
        when = self.next_event(self.maybe_make_aware(last_run_at))
        if when is None:
            return dt.timedelta(days=1)
        return when - now

    def is_due(self, last_run_at: dt.datetime) -> schedstate:
        """``(True, seconds until the next event)`` when an event happened since
        ``last_run_at``, else ``(False, seconds until it does)``."""
        rem = max(self.remaining_estimate(last_run_at).total_seconds(), 0)
        due = rem == 0
        if due:
            rem = max(self.remaining_estimate(self.now()).total_seconds(), 0)
        return schedstate(due, rem)

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.event, self.lat, self.lon), {"nowfun": self.nowfun}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        BaseSchedule.__init__(self, nowfun=state.get("nowfun"), app=state.get("app"))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (other.event == self.event and other.lat == self.lat
                    and other.lon == self.lon)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
