"""The sun's position: its altitude at a place, and when it crosses the meridian or a horizon.

NOAA's solar position equations (after Meeus, "Astronomical Algorithms"): the sun's
declination and the equation of time to about 0.01 degree and a few seconds over
1800-2200, which puts rise and set within a minute of the published tables below the
polar circles. Altitudes are geometric (no refraction): the caller's horizon accounts
for it, as the almanacs' -50' for sunrise does. :class:`celery.schedules.solar` is built on
these.

Every function here is pure and safe to call from any thread. Instants are aware datetimes;
those returned are in UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator

__all__ = [
    "solar_altitude",
    "solar_crossings",
    "solar_semidiameter",
    "solar_transits",
]

_J2000 = 2451545.0
_UNIX_EPOCH_JD = 2440587.5
_RAD = math.pi / 180.0
_PARALLAX = 8.794 / 3600 * _RAD  # the sun's horizontal parallax at 1 AU


def _sun(when: dt.datetime) -> tuple[float, float, float]:
    """The sun's declination (degrees), the equation of time (minutes) and its distance
    (astronomical units) at the aware instant ``when``."""
    jd = when.timestamp() / 86400.0 + _UNIX_EPOCH_JD
    t = (jd - _J2000) / 36525.0
    mean_long = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    anomaly = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    m = anomaly * _RAD
    center = (math.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t))
              + math.sin(2 * m) * (0.019993 - 0.000101 * t) + math.sin(3 * m) * 0.000289)
    omega = (125.04 - 1934.136 * t) * _RAD
    apparent_long = (mean_long + center - 0.00569 - 0.00478 * math.sin(omega)) * _RAD
    seconds = 21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))
    obliquity = (23.0 + (26.0 + seconds / 60.0) / 60.0 + 0.00256 * math.cos(omega)) * _RAD
    declination = math.asin(math.sin(obliquity) * math.sin(apparent_long)) / _RAD
    y = math.tan(obliquity / 2) ** 2
    l0 = mean_long * _RAD
    eot = (y * math.sin(2 * l0) - 2 * ecc * math.sin(m)
           + 4 * ecc * y * math.sin(m) * math.cos(2 * l0)
           - 0.5 * y * y * math.sin(4 * l0) - 1.25 * ecc * ecc * math.sin(2 * m))
    true_anomaly = m + center * _RAD
    distance = 1.000001018 * (1 - ecc * ecc) / (1 + ecc * math.cos(true_anomaly))
    return declination, 4.0 * eot / _RAD, distance


def solar_altitude(when: dt.datetime, lat: float, lon: float) -> float:
    """The geometric altitude (degrees) of the sun's centre at the aware instant ``when``,
    seen from latitude ``lat`` and longitude ``lon`` (degrees, east positive) at sea level:
    parallax included, refraction not."""
    declination, eot, distance = _sun(when)
    utc = when.astimezone(dt.UTC)
    minutes = utc.hour * 60 + utc.minute + (utc.second + utc.microsecond / 1e6) / 60.0
    hour_angle = ((minutes + eot + 4.0 * lon) / 4.0 - 180.0) * _RAD
    sin_alt = (math.sin(lat * _RAD) * math.sin(declination * _RAD)
               + math.cos(lat * _RAD) * math.cos(declination * _RAD) * math.cos(hour_angle))
    altitude = math.asin(max(-1.0, min(1.0, sin_alt)))
    parallax = _PARALLAX / distance * math.cos(altitude)  # seen from the surface, not the centre
    return (altitude - parallax) / _RAD


def _meridian(day: dt.date, lon: float, base_minutes: float) -> dt.datetime:
    """When the sun's hour angle reaches the value that ``base_minutes`` (minutes after
    0h UTC of ``day``, before the equation of time) stands for, at longitude ``lon``."""
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    when = midnight + dt.timedelta(minutes=base_minutes - 4.0 * lon)
    for _ in range(3):  # the equation of time moves by seconds a day: this converges
        eot = _sun(when)[1]
        when = midnight + dt.timedelta(minutes=base_minutes - 4.0 * lon - eot)
    return when


def solar_transits(start: dt.date, lon: float) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """``(midnight, noon)`` pairs in time order from the solar day near ``start`` on: the
    instants (UTC) the sun crosses the lower meridian, then the upper one (solar noon)."""
    day = start
    while True:
        yield _meridian(day, lon, 0.0), _meridian(day, lon, 720.0)
        day += dt.timedelta(days=1)


def _crossing(f: Callable[[dt.datetime], float], low: dt.datetime,
              high: dt.datetime) -> dt.datetime:
    """The instant in ``[low, high]`` where ``f`` changes sign (``f(low)``, ``f(high)`` differ
    in sign), by bisection to a millisecond. The bracket fixes the answer, so one event
    computed twice gives the same instant."""
    low_sign = f(low) > 0
    while high - low > dt.timedelta(milliseconds=1):
        mid = low + (high - low) / 2
        if (f(mid) > 0) == low_sign:
            low = mid
        else:
            high = mid
    return high


def _extremum(f: Callable[[dt.datetime], float], around: dt.datetime, highest: bool,
              ) -> dt.datetime:
    """Where ``f`` peaks (``highest``) or bottoms out within five hours of ``around``, by
    golden-section search to a second (the windows round one noon and the next midnight do
    not overlap, so turning points stay in time order)."""
    sign = -1.0 if highest else 1.0
    low, high = around - dt.timedelta(hours=5), around + dt.timedelta(hours=5)
    ratio = (math.sqrt(5) - 1) / 2
    while high - low > dt.timedelta(seconds=1):
        a = high - (high - low) * ratio
        b = low + (high - low) * ratio
        if sign * f(a) < sign * f(b):
            high = b
        else:
            low = a
    return low + (high - low) / 2


def solar_crossings(start: dt.date, until: dt.datetime, lat: float, lon: float,
                    horizon: Callable[[dt.datetime], float]) -> Iterator[tuple[dt.datetime, bool]]:
    """The instants (UTC, in time order, from the solar day near ``start`` until about
    ``until``) at which the sun's centre crosses the altitude ``horizon(when)`` degrees, as
    ``(when, rising)``.

    The sun is highest near solar noon and lowest near solar midnight, so each half day
    between them holds at most one crossing, found by bisection. Where the sun comes within
    a degree of the horizon at noon or midnight (near the polar circles, where it may only
    graze it), the true extremum is searched for first, so a short dip or peak is not
    missed. Days without a crossing (polar day and night) yield nothing.
    """
    def above(when: dt.datetime) -> float:
        return solar_altitude(when, lat, lon) - horizon(when)

    def turning_point(when: dt.datetime, highest: bool) -> dt.datetime:
        if abs(above(when)) < 1.0:
            return _extremum(above, when, highest)
        return when

    def turning_points() -> Iterator[dt.datetime]:
        for midnight, noon in solar_transits(start, lon):
            yield turning_point(midnight, False)
            yield turning_point(noon, True)

    points = turning_points()
    low = next(points)
    for high in points:
        if low > until:
            return
        before, after = above(low) > 0, above(high) > 0
        if before != after:
            yield _crossing(above, low, high), after
        low = high


def solar_semidiameter(when: dt.datetime) -> float:
    """The sun's apparent radius (degrees) at the aware instant ``when``."""
    return 0.266563 / _sun(when)[2]
