"""The server's time zone: a fixed offset (`log_time_zone`) or a zone with daylight saving (`time_zone`).

A zone with daylight saving is read from Python's zoneinfo (the system's tz database or the tzdata package). Where
neither is installed, the zones below fall back to rules written here, the rules the tz database holds for them
since 2007 (Europe: EU Directive 2000/84/EC, changes at 01:00 UTC on the last Sundays of March and October;
America/New_York: the Energy Policy Act of 2005, at 02:00 local on the second Sunday of March and the first of
November); tests/simulator/test_scenario.py checks that the two agree wherever zoneinfo has data.

`offsets` computes what collect_server.ps1 sends as `utc_offsets` the way it computes it: the offset at the
window's start (on the minute), then each change found by sampling day by day and narrowing to the minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc


def _last_sunday(year: int, month: int) -> int:
    start = datetime(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return start.day - (start.weekday() + 1) % 7


def _nth_sunday(year: int, month: int, n: int) -> int:
    first = datetime(year, month, 1)
    return 1 + (6 - first.weekday()) % 7 + 7 * (n - 1)


def _eu(standard: int):
    def offset(t: datetime) -> timedelta:
        start = datetime(t.year, 3, _last_sunday(t.year, 3), 1, tzinfo=UTC)
        end = datetime(t.year, 10, _last_sunday(t.year, 10), 1, tzinfo=UTC)
        return timedelta(hours=standard + (start <= t < end))
    return offset


def _us(standard: int):
    def offset(t: datetime) -> timedelta:
        start = datetime(t.year, 3, _nth_sunday(t.year, 3, 2), 2 - standard, tzinfo=UTC)
        end = datetime(t.year, 11, _nth_sunday(t.year, 11, 1), 1 - standard, tzinfo=UTC)
        return timedelta(hours=standard + (start <= t < end))
    return offset


RULES = {"Europe/Berlin": _eu(1), "Europe/Paris": _eu(1), "Europe/London": _eu(0), "America/New_York": _us(-5)}


@dataclass(frozen=True)
class Zone:
    name: str  # an IANA name, or the fixed offset as written ("+01:00")
    fixed: timedelta | None = None  # a zone without daylight saving

    def offset(self, t: datetime) -> timedelta:
        """Local time minus UTC at the instant `t`."""
        if self.fixed is not None:
            return self.fixed
        try:
            return t.astimezone(ZoneInfo(self.name)).utcoffset()
        except ZoneInfoNotFoundError:
            return RULES[self.name](t.astimezone(UTC))

    def local(self, t: datetime) -> datetime:
        """The wall-clock time at `t` (returned with UTC as its zone: a naive reading of the local clock)."""
        return t.astimezone(UTC) + self.offset(t)


def zone(name: str) -> Zone:
    """The zone of an IANA name; ValueError when neither zoneinfo nor RULES knows it."""
    if not isinstance(name, str) or not 0 < len(name) <= 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"not a time zone name: {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name not in RULES:
            raise ValueError(f"unknown time zone {name!r} (no zoneinfo data here; built in: {', '.join(RULES)})") \
                from None
    return Zone(name)


def fixed(offset: timedelta, name: str = "") -> Zone:
    return Zone(name or "fixed", offset)


def offsets(z: Zone, start: datetime, now: datetime) -> list[tuple[datetime, int]]:
    """(since, minutes) over [start, now], as collect_server.ps1 computes them."""
    def minutes(t: datetime) -> int:
        return int(z.offset(t).total_seconds() // 60)

    a = start.replace(second=0, microsecond=0)
    current = minutes(a)
    found = [(a, current)]
    while a < now:
        b = min(a + timedelta(days=1), now)
        if minutes(b) != current:
            while (b - a) > timedelta(minutes=1):
                middle = a + timedelta(minutes=round((b - a) / timedelta(minutes=1) / 2))
                if minutes(middle) == current:
                    a = middle
                else:
                    b = middle
            current = minutes(b)
            found.append((b, current))
        a = b
    return found
