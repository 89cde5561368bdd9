"""A restaurant's status over time, from its STATUS_CHANGED points; pure, no I/O.

A *point* is an instant where the status became a given `StatusCore` (a STATUS_CHANGED's `since`
and its new status). Between two points the status is the earlier point's. The timeline endpoint,
the aggregator's per-day consolidation and the property tests all go through these functions.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from core.hours import zone
from core.status import OfflineReason, StatusCore

# Offsets change at whole seconds; stepping an hour at a time finds every change (tzdata never
# changes an offset twice within an hour), and bisection then pins it to the microsecond.
_OFFSET_STEP = timedelta(hours=1)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Point:
    """The status became `core` at `at` (timezone-aware)."""

    at: datetime
    core: StatusCore


@dataclass(frozen=True, slots=True)
class Interval:
    """[start, end) with one status; `reason`/`detail` as in DerivedStatus."""

    start: datetime
    end: datetime
    online: bool
    reason: OfflineReason | None
    detail: str | None

    @property
    def core(self) -> StatusCore:
        return StatusCore(online=self.online, reason=self.reason, detail=self.detail)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def ordered(points: Iterable[Point]) -> list[Point]:
    """Points sorted by instant; of several at the same instant the last one given wins."""
    by_instant: dict[datetime, Point] = {}
    for point in points:
        by_instant[point.at] = point
    return [by_instant[at] for at in sorted(by_instant)]


def status_at(points: Sequence[Point], at: datetime, before: StatusCore | None = None) -> StatusCore | None:
    """The status at `at`: the last point at or before it, else `before` (None: unknown)."""
    current = before
    for point in ordered(points):
        if point.at > at:
            break
        current = point.core
    return current


def intervals(
    points: Iterable[Point],
    start: datetime,
    end: datetime,
    now: datetime,
    before: StatusCore | None = None,
) -> list[Interval]:
    """The statuses over [start, min(end, now)) as contiguous, ordered intervals.

    - The status at `start` is that of the last point at or before `start`; when there is none it is
      `before` (the status known to hold before the first point), and when `before` is None too the
      status is unknown until the first point: the intervals then begin at that point, not at `start`
      (nothing is invented for a time the history knows nothing about). No point and no `before`: [].
    - Points need not be sorted; at one instant the last one given wins. A point that repeats the
      status in force does not split an interval: consecutive intervals always differ in status.
    - The last interval ends at min(end, now) (an open interval is cut at "now"); an empty range
      (min(end, now) <= start) gives [].
    """
    stop = min(end, now)
    if stop <= start:
        return []
    pts = ordered(points)
    current = before
    cursor = start
    out: list[Interval] = []

    def close(until: datetime) -> None:
        if current is None or until <= cursor:
            return
        if out and out[-1].core == current and out[-1].end == cursor:
            last = out[-1]
            out[-1] = Interval(last.start, until, last.online, last.reason, last.detail)
        else:
            out.append(Interval(cursor, until, current.online, current.reason, current.detail))

    for point in pts:
        if point.at <= start:
            current = point.core
            continue
        if point.at >= stop:
            break
        close(point.at)
        cursor = point.at
        current = point.core
    close(stop)
    return out


def _offset_change(a: datetime, b: datetime, tz_name: str) -> datetime:
    """The first instant in (a, b) where the zone's UTC offset differs from its offset at `a`, else b."""
    tz = zone(tz_name)
    offset = a.astimezone(tz).utcoffset()
    probe = a
    while probe < b:
        nxt = min(probe + _OFFSET_STEP, b)
        if nxt.astimezone(tz).utcoffset() != offset:
            lo, hi = probe, nxt  # the offset is still `offset` at lo, no longer at hi
            while hi - lo > _TICK:
                mid = lo + (hi - lo) // 2
                if mid.astimezone(tz).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            return hi
        probe = nxt
    return b


def local_day_pieces(start: datetime, end: datetime, tz_name: str) -> Iterator[tuple[date, datetime, datetime]]:
    """[start, end) cut wherever the local date in `tz_name` may change: (local date, piece start, piece end).

    Exact across daylight-saving changes, including zones whose clocks jump at midnight: a piece
    never spans a change of UTC offset, and within one offset the date changes only at midnight.
    Consecutive pieces may carry the same date (a piece also ends at an offset change).
    """
    tz = zone(tz_name)
    at = start.astimezone(UTC)
    end = end.astimezone(UTC)
    while at < end:
        local = at.astimezone(tz)
        offset = local.utcoffset()
        assert offset is not None
        midnight = datetime.combine(local.date() + timedelta(days=1), time(0)) - offset
        cut = _offset_change(at, min(end, midnight.replace(tzinfo=UTC)), tz_name)
        yield local.date(), at, cut
        at = cut


def local_date(at: datetime, tz_name: str) -> date:
    return at.astimezone(zone(tz_name)).date()


def day_start(day: date, tz_name: str) -> datetime:
    """The first instant whose local date in `tz_name` is `day`, in UTC.

    Where midnight does not exist (clocks jump from 00:00 to 01:00) that is the instant of the jump,
    which is what `fold=0` gives; where it comes twice, the first time.
    """
    return datetime.combine(day, time(0), tzinfo=zone(tz_name)).astimezone(UTC)


def disconnected_seconds_by_day(spans: Iterable[Interval], tz_name: str) -> dict[date, float]:
    """Seconds with reason DISCONNECTED per local date of `tz_name`, splitting at local midnights.

    Each interval's time is attributed to the local date in force at each instant (exact across
    daylight-saving changes: a day may have 23, 24 or 25 hours). Only dates that received some
    DISCONNECTED time appear; other intervals (online, CLOSED, UNAVAILABLE) count nothing.
    """
    out: dict[date, float] = {}
    for span in spans:
        if span.reason is not OfflineReason.DISCONNECTED or span.end <= span.start:
            continue
        for day, lo, hi in local_day_pieces(span.start, span.end, tz_name):
            out[day] = out.get(day, 0.0) + (hi - lo).total_seconds()
    return out
