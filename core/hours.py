"""Opening hours per weekday in the restaurant's own time zone (DESIGN.md §1); pure, no I/O."""

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class DayHours(BaseModel):
    """One day's window as local "HH:MM" (strings: BSON has no time-of-day type).

    `close <= open` crosses midnight into the next day (18:00–02:00); `open == close` is 24 hours.
    """

    model_config = ConfigDict(frozen=True)

    open: str = Field(pattern=HHMM, examples=["10:00"])
    close: str = Field(pattern=HHMM, examples=["23:00"])

    @property
    def open_time(self) -> time:
        return time.fromisoformat(self.open)

    @property
    def close_time(self) -> time:
        return time.fromisoformat(self.close)


class OpeningHours(BaseModel):
    """A window or `None` (closed) per weekday, keyed mon … sun."""

    model_config = ConfigDict(frozen=True)

    mon: DayHours | None = DayHours(open="10:00", close="23:00")
    tue: DayHours | None = DayHours(open="10:00", close="23:00")
    wed: DayHours | None = DayHours(open="10:00", close="23:00")
    thu: DayHours | None = DayHours(open="10:00", close="23:00")
    fri: DayHours | None = DayHours(open="10:00", close="23:00")
    sat: DayHours | None = DayHours(open="10:00", close="23:00")
    sun: DayHours | None = DayHours(open="10:00", close="23:00")

    def for_weekday(self, weekday: int) -> DayHours | None:
        day: DayHours | None = getattr(self, WEEKDAYS[weekday])
        return day

    @cached_property
    def key(self) -> tuple[tuple[str, str] | None, ...]:
        """A plain tuple to cache by (hashing the model itself costs more than the lookup saves)."""
        return tuple((d.open, d.close) if d else None for d in map(self.for_weekday, range(7)))


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _local(day: date, at: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


@lru_cache(maxsize=65536)
def _window_of_day(
    key: tuple[tuple[str, str] | None, ...], tz_name: str, day: date
) -> tuple[datetime, datetime] | None:
    """Cached: most restaurants share a few hour sets and zones, and a status read needs a few days."""
    window = key[day.weekday()]
    if window is None:
        return None
    tz = zone(tz_name)
    opens, closes = time.fromisoformat(window[0]), time.fromisoformat(window[1])
    start = _local(day, opens, tz)
    end_day = day if closes > opens else day + timedelta(days=1)
    end = _local(end_day, closes, tz)
    return (start, end) if end > start else None


def _day_windows(hours: OpeningHours, tz_name: str, first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
    day = first
    while day <= last:
        window = _window_of_day(hours.key, tz_name, day)
        if window is not None:
            yield window
        day += timedelta(days=1)


def open_intervals(
    hours: OpeningHours, tz_name: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The UTC intervals inside [start, end) when the restaurant is open, merged and sorted."""
    tz = zone(tz_name)
    first = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in _day_windows(hours, tz_name, first, last):
        lo, hi = max(lo, start), min(hi, end)
        if lo >= hi:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def opening_at(hours: OpeningHours, tz_name: str, at: datetime) -> tuple[datetime, datetime] | None:
    """The merged opening interval that contains `at` (its ends searched up to a week away), or None."""
    near = timedelta(days=2)
    if not any(lo <= at < hi for lo, hi in open_intervals(hours, tz_name, at - near, at + near)):
        return None
    week = timedelta(days=8)
    for lo, hi in open_intervals(hours, tz_name, at - week, at + week):
        if lo <= at < hi:
            return lo, hi
    return None


def last_close_before(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    intervals = open_intervals(hours, tz_name, at - timedelta(days=8), at)
    return intervals[-1][1] if intervals and intervals[-1][1] <= at else None


def next_open_after(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    for lo, _hi in open_intervals(hours, tz_name, at, at + timedelta(days=8)):
        if lo > at:
            return lo
    return None
