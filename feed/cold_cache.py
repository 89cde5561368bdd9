"""MongoDB side of the feed: the cold cache of current statuses and the restaurants' groups.

The worker writes through pymongo on a client of its own rather than through Beanie: Beanie binds its
documents to one client per process, and an API running in the same process (tests) owns that one.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from core.documents import Restaurant
from feed.documents import DashboardStatus


class ColdCache:
    def __init__(self, database: AsyncDatabase[Any]) -> None:
        self.statuses: AsyncCollection[Any] = database[DashboardStatus.Settings.name]
        self.restaurants: AsyncCollection[Any] = database[Restaurant.Settings.name]

    async def put_if_newer(self, rid: str, seq: int, ts_us: int, group: str | None, status: dict[str, Any]) -> bool:
        """Keep this status unless the cache already holds one derived at the same time or later.

        The filter on `_id` and `ts_us` either matches the older document or, failing that, makes the
        upsert insert a second `_id`, which the unique `_id` index refuses: then a newer (or the same)
        status is already there. Idempotent, so a redelivered event rewrites nothing.
        """
        values = {"seq": seq, "ts_us": ts_us, "group": group, "status": status}
        try:
            await self.statuses.update_one({"_id": rid, "ts_us": {"$lt": ts_us}}, {"$set": values}, upsert=True)
            return True
        except DuplicateKeyError:
            # Also what two writers inserting the first status at once see: the loser tries as an update.
            result = await self.statuses.update_one({"_id": rid, "ts_us": {"$lt": ts_us}}, {"$set": values})
            return result.modified_count == 1

    async def max_seq(self) -> int | None:
        """The highest seq in the cache (one scan: only when Redis has lost the counter)."""
        doc = await self.statuses.find_one({}, projection={"seq": 1}, sort=[("seq", -1)])
        return int(doc["seq"]) if doc else None

    async def groups(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Groups of restaurants Redis holds no profile for, by point lookups (FerretDB indexes only `_id`)."""
        wanted = list(ids)
        docs = await asyncio.gather(
            *(self.restaurants.find_one({"_id": rid}, projection={"group": 1}) for rid in wanted)
        )
        return {rid: doc.get("group") for rid, doc in zip(wanted, docs, strict=True) if doc is not None}
