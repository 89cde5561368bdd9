"""The offline ranking: every restaurant's DISCONNECTED time per local day, packed to be read fast.

Restaurants are spread over BUCKETS buckets by a stable hash of their id. Each bucket has a slot
directory (SlotDirectory: ids and groups in slot order), and each local day a rollup per bucket: an
array of uint32 milliseconds indexed by slot, stored as one binary field in `{day}|{bucket}`. The
rollups of a month live in their own collection, `history_rollup_YYYY_MM`.

Why, measured on FerretDB 1.24 (SQLite) with 100,000 restaurants × 30 days:
- a document field costs FerretDB ~6 µs to decode: 3 million `{rid: seconds}` fields take ~17 s, the
  same totals as 480 binary fields (30 days × 16 buckets) ~0.35 s;
- an unpatched FerretDB 1.24 does not use its `_id` index (docs/architecture.md; the local build is
  patched): a lookup by `_id` reads the collection until it finds the document. A month per
  collection bounds what a lookup (the aggregator's writes) or a scan (the ranking's reads) has to
  go through.
On MongoDB the same documents are read by `_id` through its index.

Day values are set (not incremented) from the restaurant's consolidated day document, so a rollup
written again is unchanged; they are read-modify-write, which is why there is one writer.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import zlib
from array import array
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import zip_longest
from typing import Any

from bson import Binary
from pymongo.asynchronous.database import AsyncDatabase

from core.history_documents import HistoryHead, OngoingOffline, SlotDirectory
from core.timeline import day_start

BUCKETS = 16  # never change with data in place: a restaurant's bucket is part of every rollup's key
LOOKUP_DAYS_UP_TO = 7  # fewer wanted days of a month than this: read their rollups by `_id`, not the month
WRITES_AT_ONCE = 8
SCAN_BATCH = 500  # rollups of 100,000 restaurants are ~25 kB each: 500 fit in one reply


def bucket_of(restaurant_id: str) -> int:
    return zlib.crc32(restaurant_id.encode()) % BUCKETS


def rollup_collection(day: str) -> str:
    return f"history_rollup_{day[:4]}_{day[5:7]}"


def history_db() -> AsyncDatabase[Any]:
    return HistoryHead.get_pymongo_collection().database


def unpack(blob: bytes) -> array[int]:
    values = array("I")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()  # stored little-endian
    return values


def pack(values: array[int]) -> Binary:
    if sys.byteorder == "big":
        values = array("I", values)
        values.byteswap()
    return Binary(values.tobytes())


class Slots:
    """The slot directories, loaded once and kept in memory by the one writer."""

    def __init__(self) -> None:
        self._rids: dict[int, list[str]] = {}
        self._groups: dict[int, list[str]] = {}
        self._index: dict[int, dict[str, int]] = {}
        self._unsaved: set[int] = set()  # changed in memory, not yet written (a write failed)

    async def _load(self, bucket: int) -> None:
        if bucket in self._rids:
            return
        doc = await SlotDirectory.get(str(bucket))
        rids = doc.rids.split() if doc else []
        self._rids[bucket], self._groups[bucket] = rids, doc.groups.split() if doc else []
        self._index[bucket] = {rid: n for n, rid in enumerate(rids)}

    async def assign(self, groups: dict[str, str]) -> dict[str, tuple[int, int]]:
        """(bucket, slot) of each restaurant, appending new ones and updating changed groups."""
        out: dict[str, tuple[int, int]] = {}
        for rid, group in groups.items():
            bucket = bucket_of(rid)
            await self._load(bucket)
            slot = self._index[bucket].get(rid)
            if slot is None:
                slot = self._index[bucket][rid] = len(self._rids[bucket])
                self._rids[bucket].append(rid)
                self._groups[bucket].append(group)
                self._unsaved.add(bucket)
            elif self._groups[bucket][slot] != group:
                self._groups[bucket][slot] = group
                self._unsaved.add(bucket)
            out[rid] = (bucket, slot)
        for bucket in sorted(self._unsaved):
            # The whole directory at once: a slot once given is never given to another restaurant.
            await SlotDirectory.get_pymongo_collection().update_one(
                {"_id": str(bucket)},
                {"$set": {"rids": " ".join(self._rids[bucket]), "groups": " ".join(self._groups[bucket])}},
                upsert=True,
            )
            self._unsaved.discard(bucket)
        return out


async def write_totals(totals: dict[tuple[str, str], int], slots: dict[str, tuple[int, int]]) -> int:
    """Set each (day, restaurant) total in its day's bucket rollup; returns the rollups rewritten."""
    by_doc: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for (day, rid), ms in totals.items():
        bucket, slot = slots[rid]
        by_doc[(day, bucket)][slot] = ms
    db = history_db()
    gate = asyncio.Semaphore(WRITES_AT_ONCE)

    async def one(day: str, bucket: int, values: dict[int, int]) -> int:
        async with gate:
            collection = db[rollup_collection(day)]
            doc_id = f"{day}|{bucket}"
            doc = await collection.find_one({"_id": doc_id})
            current = unpack(doc["ms"]) if doc else array("I")
            before = current.tobytes()
            need = max(values) + 1
            if len(current) < need:
                current.extend([0] * (need - len(current)))
            for slot, ms in values.items():
                current[slot] = min(ms, 0xFFFFFFFF)
            if current.tobytes() == before and doc is not None:
                return 0
            await collection.update_one({"_id": doc_id}, {"$set": {"ms": pack(current)}}, upsert=True)
            return 1

    done = await asyncio.gather(*(one(day, b, values) for (day, b), values in by_doc.items()))
    return sum(done)


@dataclass(frozen=True, slots=True)
class RankRow:
    rank: int
    restaurant_id: str
    group: str
    offline_seconds: float


async def _month_rollups(name: str, days: list[str]) -> list[dict[str, Any]]:
    collection = history_db()[name]
    if len(days) < LOOKUP_DAYS_UP_TO:
        ids = [f"{day}|{b}" for day in days for b in range(BUCKETS)]
        return [d for d in await asyncio.gather(*(collection.find_one({"_id": i}) for i in ids)) if d]
    # One pass over the month beats many lookups; large batches save FerretDB round trips.
    return [d async for d in collection.find({}, batch_size=SCAN_BATCH)]


async def _rollups(days: list[date]) -> dict[int, list[int]]:
    """Summed closed DISCONNECTED ms per bucket and slot over the given days."""
    wanted = {d.isoformat() for d in days}
    by_month: dict[str, list[str]] = defaultdict(list)
    for day in sorted(wanted):
        by_month[rollup_collection(day)].append(day)
    months = await asyncio.gather(*(_month_rollups(name, month_days) for name, month_days in by_month.items()))
    per_bucket: dict[int, list[array[int]]] = defaultdict(list)
    for docs in months:
        for doc in docs:
            day, bucket = doc["_id"].split("|")
            if day in wanted:
                per_bucket[int(bucket)].append(unpack(doc["ms"]))
    # Column sums in C (zip and sum) rather than a Python loop over 100,000 × days values.
    return {b: list(map(sum, zip_longest(*arrays, fillvalue=0))) for b, arrays in per_bucket.items()}


def _period_overlap_ms(since: datetime, first: date, last: date, tz: str, now: datetime) -> int:
    lo = max(since, day_start(first, tz))
    hi = min(now, day_start(last + timedelta(days=1), tz))
    return max(0, (hi - lo) // timedelta(milliseconds=1))


async def offline_ranking(
    first: date, last: date, now: datetime, group: str | None = None, limit: int | None = None
) -> list[RankRow]:
    """Restaurants by DISCONNECTED time over local days first..last (inclusive), most first, then by id.

    Closed intervals come from the day rollups, the ongoing ones (OngoingOffline) are clipped to the
    period and to `now`. Every restaurant the history has seen is ranked, with 0 if never offline.
    """
    directories = [doc async for doc in SlotDirectory.find_all()]
    sums = await _rollups([first + timedelta(days=n) for n in range((last - first).days + 1)])
    ongoing: dict[str, int] = {}
    async for item in OngoingOffline.find_all():
        ms = _period_overlap_ms(item.since, first, last, item.timezone, now)
        if ms:
            ongoing[item.id] = ms
    keyed: list[tuple[int, str, str]] = []
    for directory in directories:
        bucket_sums = sums.get(int(directory.id), [])
        for slot, (rid, rid_group) in enumerate(zip(directory.rids.split(), directory.groups.split(), strict=True)):
            if group is not None and rid_group != group:
                continue
            ms = (bucket_sums[slot] if slot < len(bucket_sums) else 0) + ongoing.get(rid, 0)
            keyed.append((-ms, rid, rid_group))
    top = heapq.nsmallest(limit, keyed) if limit is not None and limit < len(keyed) else sorted(keyed)
    return [RankRow(n, rid, g, -neg / 1000) for n, (neg, rid, g) in enumerate(top, start=1)]
