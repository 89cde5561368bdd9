"""Reading and changing a restaurant's profile (group, time zone, opening hours) in MongoDB.

A change reaches the live status at once: the new profile is written to Redis in the same request
and the restaurant is marked due in the `ClockQueue`, whose scheduler settles it (one STATUS_CHANGED
if the status moved) and recomputes its next clock boundary.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from redis.exceptions import LockError

from core.clock_queue import ClockQueue
from core.documents import Restaurant, UnavailabilityLog
from core.errors import PresenceError, UnknownRestaurant
from core.hours import WEEKDAYS, DayHours, zone
from core.ids import is_valid_id
from core.presence_store import PresenceStore
from core.profiles import restaurant_profile

logger = logging.getLogger(__name__)

# Each round is two point lookups; more than a couple only while writers keep racing.
MAX_REFRESH_ROUNDS = 10
LOCK_LEASE_S = 10.0  # a holder that dies blocks its restaurant's writers this long at most
LOCK_WAIT_S = 5.0


class InvalidProfile(PresenceError):
    """A profile change that cannot be applied; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RestaurantBusy(PresenceError):
    """Another change to the same restaurant held its lock for longer than a request waits."""

    def __init__(self, restaurant_id: str) -> None:
        super().__init__(f"another change to restaurant {restaurant_id!r} is in progress; try again")


@asynccontextmanager
async def restaurant_lock(store: PresenceStore, restaurant_id: str) -> AsyncIterator[None]:
    """Serialise the writers of one restaurant's MongoDB documents (its profile and unavailability log).

    FerretDB 1.24 (SQLite) applies an update as read, change, write without isolation: 50 concurrent
    `$inc` on one document left 7, and a filter on `version` matched for several writers at once. A
    compare-and-set in MongoDB alone therefore loses writes there; a Redis lease per restaurant keeps
    the API's writers (on any number of replicas) one at a time, and ends by itself if a holder dies.
    """
    lock = store.redis.lock(
        f"{store.prefix}lock:{restaurant_id}",
        timeout=LOCK_LEASE_S,
        sleep=0.01,
        blocking_timeout=LOCK_WAIT_S,
        thread_local=False,
    )
    if not await lock.acquire():
        raise RestaurantBusy(restaurant_id)
    try:
        yield
    finally:
        try:
            await lock.release()
        except LockError:
            logger.warning("lease on restaurant %s ran out before its change was written", restaurant_id)


async def refresh_profile(store: PresenceStore, clock: ClockQueue, restaurant_id: str) -> Restaurant:
    """Copy the restaurant's profile from MongoDB to Redis, mark it due, and return its document.

    Two writers (an admin change and a new unavailability, say) may each read MongoDB before the
    other's write lands there; whichever writes Redis last would leave a stale copy. So after writing
    we read MongoDB again and write again until the copy equals what MongoDB holds: the last Redis
    write is then always made from a read taken after the last MongoDB change.
    """
    written: str | None = None
    for _ in range(MAX_REFRESH_ROUNDS):
        found, log = await asyncio.gather(Restaurant.get(restaurant_id), UnavailabilityLog.get(restaurant_id))
        if found is None:
            raise UnknownRestaurant(restaurant_id)
        doc, profile = found, restaurant_profile(found, log)
        if profile == written:
            break
        await store.set_profiles({restaurant_id: profile})
        written = profile
    else:
        logger.warning("profile of %s kept changing while being copied to Redis", restaurant_id)
    await clock.mark_now([restaurant_id])
    return doc


class RestaurantAdmin:
    """The admin side of a restaurant's profile; identities and secrets stay with core.provisioning."""

    def __init__(
        self,
        store: PresenceStore,
        clock: ClockQueue,
        moved: Callable[[str, str | None, str], Awaitable[object]] | None = None,
    ) -> None:
        """`moved(restaurant_id, old_group, new_group)` is told of a group change once it is stored
        (the API moves the dashboards' tile: feed/regroup.py)."""
        self.store = store
        self.clock = clock
        self.moved = moved

    async def get(self, restaurant_id: str) -> Restaurant:
        doc = await Restaurant.get(restaurant_id)
        if doc is None:
            raise UnknownRestaurant(restaurant_id)
        return doc

    async def change(
        self,
        restaurant_id: str,
        *,
        group: str | None = None,
        timezone: str | None = None,
        hours: Mapping[str, DayHours | None] | None = None,
    ) -> Restaurant:
        """Set what is given; in `hours`, a day mapped to None is closed and a day left out keeps its hours."""
        changes = _checked_changes(group, timezone, hours)
        if not changes:
            raise InvalidProfile("body", "nothing to change: give group, timezone or hours")
        async with restaurant_lock(self.store, restaurant_id):
            before = await self.get(restaurant_id)
            # `$set` of single fields (a day as `hours.mon`), never a whole-document replace: on MongoDB
            # a secret rotated by provisioning meanwhile survives (FerretDB gives no such promise).
            result = await Restaurant.get_pymongo_collection().update_one({"_id": restaurant_id}, {"$set": changes})
            if result.matched_count == 0:
                raise UnknownRestaurant(restaurant_id)
            logger.info("restaurant %s profile changed: %s", restaurant_id, ", ".join(sorted(changes)))
            doc = await refresh_profile(self.store, self.clock, restaurant_id)
            if self.moved is not None and doc.group != before.group:
                await self.moved(restaurant_id, before.group, doc.group)
            return doc


def _checked_changes(
    group: str | None, timezone: str | None, hours: Mapping[str, DayHours | None] | None
) -> dict[str, object]:
    changes: dict[str, object] = {}
    if group is not None:
        if not is_valid_id(group):
            raise InvalidProfile("group", f"invalid group {group!r}: use 1-64 of A-Z a-z 0-9 _ -")
        changes["group"] = group
    if timezone is not None:
        try:
            zone(timezone)
        except ValueError as exc:
            raise InvalidProfile("timezone", str(exc)) from exc
        changes["timezone"] = timezone
    for day, window in (hours or {}).items():
        if day not in WEEKDAYS:
            raise InvalidProfile("hours", f"unknown weekday {day!r}: use one of {', '.join(WEEKDAYS)}")
        changes[f"hours.{day}"] = window.model_dump() if window is not None else None
    return changes
