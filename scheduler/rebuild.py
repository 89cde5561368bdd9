"""The scheduler's view rebuilt from MongoDB, and the outbox left by a writer that died.

Rebuild: every profile MongoDB holds is compared with Redis's copy and copied again only where it
differs (so 100,000 restaurants do not all get a version bump), every restaurant's next clock
boundary is queued, and every restaurant whose committed status is not what the rules say now is
settled. A restart therefore misses nothing (a boundary that passed while no scheduler ran is
settled here or by the queue) and doubles nothing (settling an already right status commits nothing).

Before each rebuild, the unavailability changes an API committed but could not bring to Redis (it
died, or Redis stayed away longer than it retried) take effect and their events go out
(core/unannounced.py).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from core.clock_queue import ClockQueue
from core.errors import PresenceError
from core.presence_store import PresenceStore, RestaurantSnapshot, from_ms, parse_profile
from core.profiles import all_profiles
from core.restaurant_admin import refresh_profile, restaurant_lock
from core.status import next_clock_boundary
from core.status_service import StatusService
from core.unannounced import pending_restaurants, take_effect
from scheduler.metrics import SchedulerMetrics
from scheduler.retry import Abandoned
from scheduler.status_publisher import Retry, StatusPublisher

logger = logging.getLogger(__name__)

SCAN_CHUNK = 1000
REFRESHES_AT_ONCE = 16
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ceil_ms(at: datetime) -> int:
    """Epoch ms rounded up: a restaurant claimed at its boundary's millisecond must be past the boundary."""
    micros = (at - EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


def next_due_ms(snap: RestaurantSnapshot, at: datetime) -> int | None:
    assert snap.rules is not None
    boundary = next_clock_boundary(snap.rules, at)
    return None if boundary is None else ceil_ms(boundary)


class Rebuilder:
    def __init__(
        self,
        store: PresenceStore,
        clock: ClockQueue,
        status: StatusService,
        publisher: StatusPublisher,
        metrics: SchedulerMetrics,
        settle: Callable[[Sequence[str], int], Awaitable[object]],
        acting: Callable[[], bool],
        instant: Callable[[], Awaitable[int]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.status = status
        self.publisher = publisher
        self.metrics = metrics
        self.settle = settle
        self.acting = acting
        self.instant = instant  # the drain's clock: now, or the bridges' horizon if earlier

    async def recover_outbox(self, retry: Retry[None], older_than_ms: int | None = None) -> int:
        """Republish outbox entries (all of them when taking over; only old ones on the periodic sweep)."""
        ids = await self.store.restaurant_ids()
        republished = 0
        for start in range(0, len(ids), SCAN_CHUNK):
            if not self.acting():
                raise Abandoned("outbox recovery")
            for snap in await self.store.snapshots(ids[start : start + SCAN_CHUNK]):
                if snap.outbox or (older_than_ms is None and snap.pending_status is not None):
                    republished += await self.publisher.republish(snap, retry, older_than_ms)
        if republished:
            logger.info("republished %d events left in an outbox by an earlier writer", republished)
        return republished

    async def finish_changes(self, retry: Retry[None]) -> int:
        """Bring to Redis the unavailability changes whose events MongoDB still holds, and publish those
        events; returns how many. Idempotent: retried whole on an outage."""
        pending = [rid async for rid in pending_restaurants()]
        published = 0
        for rid in pending:
            if not self.acting():
                raise Abandoned("finishing changes")
            try:
                async with restaurant_lock(self.store, rid):
                    handed = await take_effect(self.store, self.clock, rid)
            except PresenceError as exc:  # removed, or its lock held longer than we wait: the next rebuild
                logger.info("rebuild: the change of %s not finished: %s", rid, exc)
                continue
            for name, event in handed:
                await retry(partial(self.publisher.publish_event, event), f"publishing {name} of {rid}")
                await retry(partial(self.store.clear_outbox, rid, [name]), "clearing the outbox")
            published += len(handed)
        if published:
            logger.info("finished %d unavailability changes left in MongoDB by an API", published)
        return published

    async def from_mongo(self, on_chunk: Callable[[], None]) -> int:
        """One pass over MongoDB; returns the number of restaurants seen. Idempotent: retried whole on an outage."""
        started = time.monotonic()
        seen = 0
        async for profiles in all_profiles(SCAN_CHUNK):
            if not self.acting():
                raise Abandoned("rebuild")
            await self._apply(profiles)
            seen += len(profiles)
            on_chunk()  # new boundaries may be earlier than the one the due job waits for
        elapsed = time.monotonic() - started
        self.metrics.rebuilds.inc()
        self.metrics.rebuild_seconds.set(elapsed)
        logger.info("rebuilt from MongoDB: %d restaurants in %.1f s", seen, elapsed)
        return seen

    async def _apply(self, profiles: dict[str, str]) -> None:
        snaps = await self.store.snapshots(list(profiles))
        changed = [
            snap.restaurant_id for snap in snaps
            if (snap.rules, snap.group) != parse_profile(profiles[snap.restaurant_id])
        ]  # fmt: skip
        if changed:
            await self._refresh(changed)
        refreshed = set(changed)
        # As of the drain's instant, not the wall clock: a boundary the bridges' backlog still holds back
        # is queued, not settled here ahead of the device facts received before it (the full churn
        # run's last two misses, both settled by the rebuild that ran during the final stop).
        at = await self.instant()
        now = from_ms(at)
        due: dict[str, int] = {}
        stale: list[str] = []
        for snap in snaps:
            if snap.restaurant_id in refreshed:
                continue  # marked due now by the refresh: the drain settles it and queues its next boundary
            try:
                nxt = next_due_ms(snap, now)
                if nxt is not None:
                    due[snap.restaurant_id] = nxt
                last = snap.last_status
                if last is None or self.status.derive(snap, now).core != last.core:
                    stale.append(snap.restaurant_id)
            except Exception:
                logger.exception("rebuild: the profile of %s cannot be evaluated", snap.restaurant_id)
                self.metrics.failures.inc()
        await self.clock.schedule(due)
        if stale:
            await self.settle(stale, at)

    async def _refresh(self, restaurant_ids: Sequence[str]) -> None:
        """Copy these profiles from MongoDB again, not from the scan: the scan's read may predate an API
        change that has since reached both MongoDB and Redis, and writing it would undo that change in
        Redis until the next rebuild. `refresh_profile` re-reads until its copy equals MongoDB."""
        gate = asyncio.Semaphore(REFRESHES_AT_ONCE)

        async def one(rid: str) -> None:
            async with gate:
                try:
                    await refresh_profile(self.store, self.clock, rid)
                except PresenceError as exc:  # removed meanwhile
                    logger.info("rebuild: %s not refreshed: %s", rid, exc)

        await asyncio.gather(*(one(rid) for rid in restaurant_ids))
        self.metrics.profiles_written.inc(len(restaurant_ids))
