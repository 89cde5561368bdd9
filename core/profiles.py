"""A restaurant's profile (group, zone, hours, unavailabilities) built from MongoDB for Redis.

The profile is what the status function needs besides device facts. MongoDB is the truth; Redis
holds a copy in field `p` of the restaurant's hash. Whoever changes a profile in MongoDB writes the
new copy with `PresenceStore.set_profiles` and marks the restaurant due in the `ClockQueue`, so the
scheduler settles it (one STATUS_CHANGED if the status moved) and the next boundary is recomputed.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

from core.documents import Restaurant, UnavailabilityLog, UnavailabilityRecord
from core.messages import utc_now
from core.status_codec import profile_json

# Past unavailabilities still matter to `since` (an online status began when one ended), but only
# within the current opening window: two days back is enough and keeps the profile small.
KEEP_PAST = timedelta(days=2)
POINT_LOOKUPS_UP_TO = 50
SCAN_CHUNK = 1000


def live_unavailabilities(items: Sequence[UnavailabilityRecord], now: datetime) -> list[UnavailabilityRecord]:
    """The ones the status function can still need: not over for two days, not cancelled before starting."""
    kept = []
    for item in items:
        rule = item.as_rule()
        if rule.effective_end <= rule.start or rule.effective_end < now - KEEP_PAST:
            continue
        kept.append(item)
    return kept


def restaurant_profile(
    doc: Restaurant, log: UnavailabilityLog | None = None, now: datetime | None = None
) -> str:
    items = live_unavailabilities(log.items, now or utc_now()) if log is not None else []
    return profile_json(doc.group, doc.timezone, doc.hours, [item.as_rule() for item in items])


async def load_profiles(restaurant_ids: Sequence[str]) -> dict[str, str]:
    """Profiles of the given restaurants that exist in MongoDB."""
    ids = list(dict.fromkeys(restaurant_ids))
    if not ids:
        return {}
    if len(ids) <= POINT_LOOKUPS_UP_TO:
        # FerretDB (SQLite) uses an index only for `_id` equality; `$in` scans the collection.
        docs = await asyncio.gather(*(Restaurant.get(rid) for rid in ids))
        logs = await asyncio.gather(*(UnavailabilityLog.get(rid) for rid in ids))
        return {
            doc.restaurant_id: restaurant_profile(doc, log)
            for doc, log in zip(docs, logs, strict=True)
            if doc is not None
        }
    found: dict[str, str] = {}
    for start in range(0, len(ids), SCAN_CHUNK):
        chunk = ids[start : start + SCAN_CHUNK]
        by_id = {log.id: log async for log in UnavailabilityLog.find({"_id": {"$in": chunk}})}
        async for doc in Restaurant.find({"_id": {"$in": chunk}}):
            found[doc.restaurant_id] = restaurant_profile(doc, by_id.get(doc.restaurant_id))
    return found


async def all_profiles(batch: int = SCAN_CHUNK) -> AsyncIterator[dict[str, str]]:
    """Every restaurant's profile, in batches: one scan of each collection (the scheduler's rebuild)."""
    now = utc_now()
    logs = {log.id: log async for log in UnavailabilityLog.find_all()}
    out: dict[str, str] = {}
    async for doc in Restaurant.find_all():
        out[doc.restaurant_id] = restaurant_profile(doc, logs.get(doc.restaurant_id), now)
        if len(out) >= batch:
            yield out
            out = {}
    if out:
        yield out
