"""Unavailability events committed in MongoDB with their change, until Redis's outbox holds them.

A change to a restaurant's unavailabilities is one MongoDB update of its `UnavailabilityLog`, and
that same update appends the change's UNAVAILABILITY_* event to the log's `unannounced` list, so the
change and its event commit together. Then, under the restaurant's lock, the Redis profile is
refreshed and `hand_over` moves the entries into the restaurant's Redis outbox, whose publishers
(the request itself, or the scheduler's outbox recovery) take over, and empties the list.

If Redis goes away between the commit and the hand-over, or the API dies there, the entries stay in
MongoDB and the next `hand_over` of that restaurant finishes the job: the API retrying in the
background, the restaurant's next change, or the scheduler's rebuild (`pending_restaurants`).
Without this the change stood with no event at all, and its boundaries reached the clock queue only
at the next rebuild.

FerretDB 1.24 applies `$pull` with a condition as a no-op, so the list is rewritten whole with
`$set`, under the lock, against the version it was read at.
"""

from collections.abc import AsyncIterator
from typing import Any

from core.clock_queue import ClockQueue
from core.documents import Unannounced, UnavailabilityLog
from core.messages import Event
from core.presence_store import PresenceStore, outbox_field
from core.restaurant_admin import refresh_profile


def unannounced(event: Event) -> Unannounced:
    """The entry to commit with the change: its outbox field is named now, at the commit."""
    return Unannounced(field=outbox_field(), event=event.model_dump_json())


async def take_effect(store: PresenceStore, clock: ClockQueue, restaurant_id: str) -> list[tuple[str, Event]]:
    """Under the restaurant's lock: the profile to Redis (marked due), then `hand_over`; returns its events."""
    await refresh_profile(store, clock, restaurant_id)
    return await hand_over(store, restaurant_id)


async def hand_over(store: PresenceStore, restaurant_id: str) -> list[tuple[str, Event]]:
    """Move the log's unannounced events into the Redis outbox; returns them (field, event), oldest first.

    Call it under the restaurant's lock, after the profile is refreshed: once an event is in the
    outbox, a republished event must find the status it speaks of already in force.
    """
    log = await UnavailabilityLog.get(restaurant_id)
    if log is None or not log.unannounced:
        return []
    entries = sorted(log.unannounced, key=lambda entry: entry.field)
    await store.redis.hset(store.key(restaurant_id), mapping={entry.field: entry.event for entry in entries})
    # Only what was read goes: a writer whose lease ran out and who appended meanwhile bumped the version.
    await UnavailabilityLog.get_pymongo_collection().update_one(
        {"_id": restaurant_id, "version": log.version}, {"$set": {"unannounced": []}}
    )
    return [(entry.field, Event.model_validate_json(entry.event)) for entry in entries]


async def pending_restaurants() -> AsyncIterator[str]:
    """Restaurants whose log holds unannounced events (a scan: FerretDB indexes only `_id`)."""
    query: dict[str, Any] = {"unannounced.0": {"$exists": True}}
    async for raw in UnavailabilityLog.get_pymongo_collection().find(query, {"_id": 1}):
        yield str(raw["_id"])
