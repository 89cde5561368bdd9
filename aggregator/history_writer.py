"""One batch of STATUS_CHANGED points into the history, in the order that keeps it consistent.

Order: the day documents of every restaurant, then the ranking's slots and day rollups, then the
ongoing-offline entries and heads. A head is written last because it says where the next point's
recomputation starts: if the batch stops half-way (MongoDB away, a crash), the heads still point
where they did, the messages are not acknowledged, and doing the batch again rewrites the same days
with the same values.
"""

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from beanie import Document

from core.documents import Restaurant
from core.history_documents import HistoryDay, HistoryHead, OngoingOffline
from core.history_store import Profile, RestaurantWriter, StatusChange, Written
from core.offline_ranking import Slots, write_totals

RESTAURANTS_AT_ONCE = 16
BULK_MAX = 50  # FerretDB 1.24 (SQLite) stops answering, for good, an update command of 100 or more


class ProfileCache:
    """Zone and group of restaurants from their documents, kept `ttl_s` (a group may change)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Profile]] = {}

    async def get(self, restaurant_ids: Sequence[str]) -> dict[str, Profile]:
        """Profiles of the restaurants that exist; unknown ids are left out."""
        now = time.monotonic()
        out = {rid: hit[1] for rid in restaurant_ids if (hit := self._cache.get(rid)) and hit[0] > now}
        ask = [rid for rid in restaurant_ids if rid not in out]
        gate = asyncio.Semaphore(RESTAURANTS_AT_ONCE)

        async def one(rid: str) -> Restaurant | None:
            async with gate:
                return await Restaurant.get(rid)  # by _id: FerretDB has no other index

        for rid, doc in zip(ask, await asyncio.gather(*(one(rid) for rid in ask)), strict=True):
            if doc is not None:
                out[rid] = Profile(doc.timezone, doc.group, doc.created_at)
                self._cache[rid] = (now + self.ttl_s, out[rid])
        if len(self._cache) > 200_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return out


class HistoryWriter:
    """Writes batches; holds the slot directories in memory (it is the only writer of the history)."""

    def __init__(self) -> None:
        self.slots = Slots()

    async def write(self, changes: Sequence[StatusChange], profiles: dict[str, Profile]) -> tuple[Written, int]:
        """Apply the changes (each restaurant's in the order given); returns what changed and rollups written."""
        by_restaurant: dict[str, list[StatusChange]] = defaultdict(list)
        for change in changes:
            by_restaurant[change.restaurant_id].append(change)
        written = Written()
        writers = [RestaurantWriter(rid, profiles[rid]) for rid in by_restaurant]
        gate = asyncio.Semaphore(RESTAURANTS_AT_ONCE)

        async def apply(writer: RestaurantWriter) -> None:
            async with gate:
                await writer.load_head()
                for change in by_restaurant[writer.rid]:
                    await writer.apply(change, written)

        await asyncio.gather(*(apply(w) for w in writers))
        # Bulk writes: FerretDB answers one command of many updates far sooner than as many commands.
        await _bulk(HistoryDay, [op for w in writers for op in w.day_writes()])
        rollups = 0
        if written.totals or written.groups:
            slots = await self.slots.assign(written.groups)
            rollups = await write_totals(written.totals, slots)
        await _bulk(OngoingOffline, [w.ongoing_write() for w in writers])
        await _bulk(HistoryHead, [w.head_write() for w in writers])
        return written, rollups


async def _bulk(model: type[Document], maybe_ops: Sequence[Any]) -> None:
    ops = [op for op in maybe_ops if op is not None]
    for start in range(0, len(ops), BULK_MAX):
        await model.get_pymongo_collection().bulk_write(list(ops[start : start + BULK_MAX]), ordered=False)
