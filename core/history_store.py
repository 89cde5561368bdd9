"""The status history in MongoDB: STATUS_CHANGED points in, timelines out.

Layout (core/history_documents.py), chosen for FerretDB 1.24 on SQLite and portable to MongoDB 7:
one document per restaurant and local day (`{rid}|{YYYY-MM-DD}`) with that day's points, the status
before it and its consolidated DISCONNECTED time; one head per restaurant (latest point); and the
ranking's structures (core/offline_ranking.py). Everything is read by `_id`, never by a filter on
another field: FerretDB has no index for those and `$group` has only `$sum`/`$count`, so totals are
consolidated here, at write time. (FerretDB 1.24 does not use its `_id` index either: each lookup
reads the collection until it finds the document; MongoDB uses its index.)

Writes are recomputations, not increments: applying a point rewrites the days it affects from their
stored points, so applying an event twice, or events in any order, ends in the same documents.
There is one writer (the aggregator): there are no transactions, and the ranking's bucket rollups
are read-modify-write.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo import DeleteOne, ReplaceOne, UpdateOne

from core.history_documents import HistoryDay, HistoryHead, day_doc_id, load_core, store_core
from core.status import OfflineReason, StatusCore
from core.timeline import Interval, Point, day_start, disconnected_seconds_by_day, intervals, local_date

ONE_DAY = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOOKUPS_AT_ONCE = 16


def to_ms(at: datetime) -> int:
    """Epoch milliseconds, in integers (a float timestamp can be off by one at this scale)."""
    return (at - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A STATUS_CHANGED as the history keeps it: the status became `core` at `at` (its `since`)."""

    restaurant_id: str
    at: datetime
    core: StatusCore
    ts_ms: int  # the event's ts: of two points at the same millisecond, the later event wins


@dataclass(frozen=True, slots=True)
class Profile:
    timezone: str
    group: str
    # Nothing is known of a restaurant before it was created: a first status whose `since` is
    # earlier (a new restaurant is "disconnected since 10:00" of its first day) starts here instead.
    created_at: datetime | None = None


@dataclass
class Written:
    """What one batch changed, for the ranking's rollups and the counters."""

    totals: dict[tuple[str, str], int] = field(default_factory=dict)  # (day, rid) -> closed DISCONNECTED ms
    groups: dict[str, str] = field(default_factory=dict)  # rid -> group
    applied: int = 0
    duplicates: int = 0


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


class RestaurantWriter:
    """Applies one restaurant's changes in order, in memory; the caller then takes its writes."""

    def __init__(self, restaurant_id: str, profile: Profile) -> None:
        self.rid = restaurant_id
        self.profile = profile
        self.head: HistoryHead | None = None
        self.days: dict[date, HistoryDay | None] = {}
        self.dirty_days: set[date] = set()
        self.head_dirty = False
        self.ongoing_dirty = False

    async def load_head(self) -> None:
        self.head = await HistoryHead.get(self.rid)

    @property
    def tz(self) -> str:
        return self.head.timezone if self.head is not None else self.profile.timezone

    async def _day(self, day: date) -> HistoryDay | None:
        if day not in self.days:
            self.days[day] = await HistoryDay.get(day_doc_id(self.rid, day.isoformat()))
        return self.days[day]

    async def _load(self, days: Sequence[date]) -> None:
        wanted = [d for d in days if d not in self.days]
        for start in range(0, len(wanted), LOOKUPS_AT_ONCE):
            chunk = wanted[start : start + LOOKUPS_AT_ONCE]
            docs = await asyncio.gather(*(HistoryDay.get(day_doc_id(self.rid, d.isoformat())) for d in chunk))
            self.days.update(zip(chunk, docs, strict=True))

    async def apply(self, change: StatusChange, written: Written) -> None:
        created = self.profile.created_at
        ms = to_ms(change.at if created is None else max(change.at, created))
        at = from_ms(ms)
        value = [*store_core(change.core), change.ts_ms]
        tz = self.tz
        day_t = local_date(at, tz)
        doc_t = await self._day(day_t)
        old = doc_t.points.get(str(ms)) if doc_t is not None else None
        if old is not None and old != value and old[3] >= change.ts_ms:
            written.duplicates += 1  # a later event at the same instant is already there, and wins
            return
        # The same point already there is recomputed all the same: the batch that wrote it may have
        # stopped before the rollups and the head, and this is its redelivery.
        repeated = old == value
        head = self.head
        latest = head is None or at >= head.at
        if head is None:
            lo = hi = day_t
        elif latest:
            lo, hi = local_date(head.at, tz), day_t  # the interval from the head's point closes at `at`
        else:
            lo, hi = day_t, await self._next_point_day(day_t, at)  # `at` changes days up to the next point
        await self._load(days_between(lo, hi))
        doc_t = self.days[day_t]
        if doc_t is None:
            doc_t = self.days[day_t] = HistoryDay(id=day_doc_id(self.rid, day_t.isoformat()))
        doc_t.points[str(ms)] = value
        last = at if head is None or at > head.at else head.at
        self._recompute(lo, hi, last, written)
        if latest:
            self.head = HistoryHead(id=self.rid, at=at, status=store_core(change.core), timezone=tz,
                                    first_day=min(head.first_day, day_t.isoformat()) if head else day_t.isoformat())
            self.head_dirty = self.ongoing_dirty = True
        elif head is not None and day_t.isoformat() < head.first_day:
            head.first_day = day_t.isoformat()
            self.head_dirty = True
        written.groups[self.rid] = self.profile.group
        if repeated:
            written.duplicates += 1
        else:
            written.applied += 1

    async def _next_point_day(self, day: date, at: datetime) -> date:
        """The day holding the first point after `at` (up to the head's day): the last day `at` affects."""
        assert self.head is not None
        doc = await self._day(day)
        if doc is not None and any(int(k) > to_ms(at) for k in doc.points):
            return day
        head_day = local_date(self.head.at, self.tz)
        d = day + ONE_DAY
        while d < head_day:
            doc = await self._day(d)
            if doc is not None and doc.points:
                return d
            d += ONE_DAY
        return max(head_day, day)

    def _recompute(self, lo: date, hi: date, last: datetime, written: Written) -> None:
        """Rewrite `before` and `offline_ms` of days lo..hi from their points; closed time ends at `last`."""
        tz = self.tz
        first_doc = self.days.get(lo)
        before = load_core(first_doc.before) if first_doc is not None and first_doc.before is not None else None
        days = days_between(lo, hi)
        points = [
            Point(from_ms(int(k)), load_core(v))
            for d in days
            if (doc := self.days.get(d)) is not None
            for k, v in doc.points.items()
        ]
        points.sort(key=lambda p: p.at)
        spans = intervals(points, day_start(lo, tz), day_start(hi + ONE_DAY, tz), now=last, before=before)
        seconds = disconnected_seconds_by_day(spans, tz)
        cursor = 0
        status = before
        for d in days:
            start = day_start(d, tz)
            while cursor < len(points) and points[cursor].at < start:
                status = points[cursor].core
                cursor += 1
            doc = self.days.get(d)
            if doc is None:
                doc = self.days[d] = HistoryDay(id=day_doc_id(self.rid, d.isoformat()))
            doc.before = store_core(status) if status is not None else None
            doc.offline_ms = round(seconds.get(d, 0.0) * 1000)
            self.dirty_days.add(d)
            written.totals[(d.isoformat(), self.rid)] = doc.offline_ms

    def day_writes(self) -> list[UpdateOne]:
        """The changed day documents as upserts: $set of each point, never a replacement, so a point
        already on disk is never lost whatever this writer read."""
        ops = []
        for day in sorted(self.dirty_days):
            doc = self.days[day]
            assert doc is not None
            sets: dict[str, object] = {f"points.{k}": v for k, v in doc.points.items()}
            sets.update(before=doc.before, offline_ms=doc.offline_ms)
            ops.append(UpdateOne({"_id": doc.id}, {"$set": sets}, upsert=True))
        self.dirty_days.clear()
        return ops

    def ongoing_write(self) -> ReplaceOne[Any] | DeleteOne | None:
        """The ongoing-offline entry that goes with the head: to be written before the head."""
        head = self.head
        if head is None or not self.ongoing_dirty:
            return None
        self.ongoing_dirty = False
        if load_core(head.status).reason is OfflineReason.DISCONNECTED:
            entry = {"since": head.at, "timezone": head.timezone, "group": self.profile.group}
            return ReplaceOne({"_id": self.rid}, entry, upsert=True)
        return DeleteOne({"_id": self.rid})

    def head_write(self) -> UpdateOne | None:
        """Last of all: a head on disk means everything its point implies is written."""
        head = self.head
        if head is None or not self.head_dirty:
            return None
        self.head_dirty = False
        fields = {"at": head.at, "status": head.status, "timezone": head.timezone, "first_day": head.first_day}
        return UpdateOne({"_id": self.rid}, {"$set": fields}, upsert=True)


@dataclass(frozen=True, slots=True)
class TimelineData:
    """What a timeline read found: the points in range, the status before them, and the zone."""

    points: list[Point]
    before: StatusCore | None
    timezone: str | None


async def load_timeline(restaurant_id: str, start: datetime, end: datetime, tz_fallback: str) -> TimelineData:
    """Points of the local days covering [start, end) and the status before the first of those days.

    One head lookup and one lookup per day (≤ 32 for the API's 31 days), all by `_id`.
    """
    head = await HistoryHead.get(restaurant_id)
    if head is None:
        return TimelineData([], None, None)
    tz = head.timezone or tz_fallback
    days = days_between(local_date(start, tz), local_date(end - timedelta(microseconds=1), tz))
    docs: list[HistoryDay | None] = []
    for first in range(0, len(days), LOOKUPS_AT_ONCE):
        chunk = days[first : first + LOOKUPS_AT_ONCE]
        docs += await asyncio.gather(*(HistoryDay.get(day_doc_id(restaurant_id, d.isoformat())) for d in chunk))
    points = [Point(from_ms(int(k)), load_core(v)) for doc in docs if doc is not None for k, v in doc.points.items()]
    first_doc = docs[0]
    if first_doc is not None:
        before = load_core(first_doc.before) if first_doc.before is not None else None
    elif days[0].isoformat() > local_date(head.at, tz).isoformat():
        before = load_core(head.status)  # after the latest point: its status still holds
    else:
        before = None  # before the first known day
    return TimelineData(points, before, tz)


async def restaurant_timeline(
    restaurant_id: str, start: datetime, end: datetime, now: datetime, tz_fallback: str
) -> list[Interval]:
    """The timeline over [start, min(end, now)); it begins at the first known point if that is later."""
    data = await load_timeline(restaurant_id, start, end, tz_fallback)
    return intervals(data.points, start, end, now, data.before)
