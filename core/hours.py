"""Opening hours per weekday in the restaurant's own time zone (DESIGN.md §1); pure, no I/O."""

from bisect import bisect_right
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

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

    # A plain tuple to cache by (hashing the model itself costs more than the lookup saves). Not a
    # cached_property: that lands in the model's __dict__, which Beanie's encoder iterates, so a document
    # saved after its hours were used stored a `key` too (nested arrays, which FerretDB refuses). A
    # private attribute is compared by ==, so it is set at construction: equal hours, equal keys.
    _key: tuple[tuple[str, str] | None, ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        self._key = tuple((d.open, d.close) if d else None for d in map(self.for_weekday, range(7)))

    @property
    def key(self) -> tuple[tuple[str, str] | None, ...]:
        # Straight from pydantic's store of private values: `self._key` goes through BaseModel.__getattr__
        # (a few µs, 30 times this), and every hours lookup of every status read starts here.
        key: tuple[tuple[str, str] | None, ...] = self.__pydantic_private__["_key"]  # type: ignore[index]
        return key


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


SEARCH = timedelta(days=8)  # how far an opening's ends, the last close and the next open are looked for
SPAN_DAYS = 10  # local days either side of `at` in a cached span: SEARCH plus a day (`opening_end`), plus DST


@lru_cache(maxsize=8192)
def _span(
    key: tuple[tuple[str, str] | None, ...], tz_name: str, day: date
) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    """The merged opening intervals of the local days around `day`, as (starts, ends) for bisecting.

    Cached by (hours, zone, local day): a status read of 1,000 restaurants needs three lookups each, and
    most restaurants share a few hour sets and zones (computing the intervals was half of a batch's CPU).
    """
    starts: list[datetime] = []
    ends: list[datetime] = []
    for offset in range(-SPAN_DAYS, SPAN_DAYS + 1):
        window = _window_of_day(key, tz_name, day + timedelta(days=offset))
        if window is None:
            continue
        lo, hi = window
        if ends and lo <= ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return tuple(starts), tuple(ends)


def _span_at(hours: OpeningHours, tz_name: str, at: datetime) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    return _span(hours.key, tz_name, at.astimezone(zone(tz_name)).date())


def opening_at(hours: OpeningHours, tz_name: str, at: datetime) -> tuple[datetime, datetime] | None:
    """The merged opening interval that contains `at` (its ends searched up to a week away), or None."""
    starts, ends = _span_at(hours, tz_name, at)
    i = bisect_right(starts, at) - 1
    if i < 0 or at >= ends[i]:
        return None
    return max(starts[i], at - SEARCH), min(ends[i], at + SEARCH)


def last_close_before(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    """The end of the last opening that ended at or before `at`, up to SEARCH ago."""
    _starts, ends = _span_at(hours, tz_name, at)
    i = bisect_right(ends, at) - 1
    return ends[i] if i >= 0 and ends[i] > at - SEARCH else None


def next_open_after(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    """The start of the first opening after `at`, up to SEARCH ahead."""
    starts, _ends = _span_at(hours, tz_name, at)
    i = bisect_right(starts, at)
    return starts[i] if i < len(starts) and starts[i] < at + SEARCH else None


def next_boundary_after(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    """The first opening or closing after `at`, up to SEARCH ahead: the status may change there.

    An opening still under way SEARCH ahead counts as closing there, so that a status open all week is
    looked at again within SEARCH (as the scan of `open_intervals` up to SEARCH ahead gave it).
    """
    starts, ends = _span_at(hours, tz_name, at)
    i = bisect_right(ends, at)
    if i == len(ends):
        return None
    if starts[i] <= at:
        return min(ends[i], at + SEARCH)
    return starts[i] if starts[i] < at + SEARCH else None


def opening_end(hours: OpeningHours, tz_name: str, at: datetime) -> datetime | None:
    """The end of the merged opening that contains `at` as the cached span knows it; None: closed at `at`.

    A span's last interval is cut short only where it runs into local day SPAN_DAYS + 1 after `at`'s: more
    than SPAN_DAYS local days after `at`, and no zone's clock has ever jumped by more than a day. So an end
    up to SPAN_DAYS - 1 days ahead is the opening's own; a later one may be the span's edge, sooner than
    the true end, which only makes a view open all week stand less long (core/status_view.py).
    """
    starts, ends = _span_at(hours, tz_name, at)
    i = bisect_right(starts, at) - 1
    return ends[i] if i >= 0 and at < ends[i] else None
