"""Draining the clock queue: claim what is due in batches, settle and publish each, queue its next boundary."""

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial

from core.clock_queue import ClockQueue
from core.presence_store import PresenceStore, RestaurantSnapshot, from_ms, now_ms, parse_profile
from core.settings import Settings
from core.status_service import Settled, StatusService
from scheduler.metrics import SchedulerMetrics
from scheduler.rebuild import next_due_ms
from scheduler.retry import Abandoned, Retrier
from scheduler.status_publisher import StatusPublisher

logger = logging.getLogger(__name__)


class Drainer:
    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        status: StatusService,
        clock: ClockQueue,
        publisher: StatusPublisher,
        metrics: SchedulerMetrics,
        retry: Retrier,
        acting: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.store = store
        self.status = status
        self.clock = clock
        self.publisher = publisher
        self.metrics = metrics
        self.retry = retry
        self.acting = acting
        self.lease_ms = int(settings.scheduler_lease_s * 1000)
        self._gate = asyncio.Semaphore(settings.scheduler_concurrency)  # shared by the drain and the rebuild
        self._failing: set[str] = set()

    async def drain(self) -> None:
        """Until nothing is due (or this scheduler stops leading).

        One batch at a time: inside a batch the confirms already overlap the next settles, and
        several batches at once measured slower here (the event loop is the bottleneck).
        """
        while self.acting():
            claimed_at, ids = await self.retry(self._claim, "claiming due restaurants")
            if not ids:
                return
            self.metrics.claimed.inc(len(ids))
            self.metrics.batch_size.observe(len(ids))
            with self.metrics.batch_seconds.time():
                await self._process(ids, claimed_at, claimed_at + self.lease_ms)

    async def _claim(self) -> tuple[int, list[str]]:
        at = now_ms()
        return at, await self.clock.claim(at, self.lease_ms, self.settings.scheduler_batch_size)

    async def _process(self, ids: list[str], claimed_at: int, lease_until: int) -> None:
        profiles = await self.retry(partial(self._profiles, ids), "reading claimed restaurants")
        snaps = [_snapshot(rid, p) for rid, p in zip(ids, profiles, strict=True)]
        missing = [snap for snap in snaps if snap.rules is None]
        unknown = set(await self.retry(partial(self.status.fill_profiles, missing), "loading profiles"))
        known = [snap for snap in snaps if snap.restaurant_id not in unknown]
        settled = set(await self.settle_many([snap.restaurant_id for snap in known]))
        # From the claim instant, not later: settle used a `now` at or after it, so no boundary in between is lost.
        at = from_ms(claimed_at)
        next_due: list[tuple[str, int | None]] = [(rid, None) for rid in unknown]  # never provisioned: dropped
        for snap in known:
            if snap.restaurant_id not in settled:
                continue  # failed: it stays leased and is due again when the lease ends
            try:
                next_due.append((snap.restaurant_id, next_due_ms(snap, at)))
            except Exception:
                self._failed(snap.restaurant_id, "its next boundary cannot be computed")
        await self.retry(partial(self.clock.reschedule, lease_until, next_due), "rescheduling")

    async def _profiles(self, ids: Sequence[str]) -> list[str | None]:
        """Only the profiles (not whole snapshots): the next boundary needs nothing else."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hget(self.store.key(rid), "p")
            return list(await pipe.execute())

    async def settle_many(self, ids: Sequence[str]) -> list[str]:
        """Settle each restaurant (`scheduler_concurrency` at a time) and publish what changed.

        A restaurant's STATUS_CHANGED is published as soon as it is committed, outside the gate, so
        the wait for RabbitMQ's confirms overlaps the next settles; clearing the outbox fields and
        the retained statuses then go for the whole batch together. Returns the restaurants that
        went through; a failing one is logged, counted and left out.
        """

        async def one(rid: str) -> tuple[str, Settled | None] | None:
            async with self._gate:
                try:
                    settled = await self.retry(partial(self.status.settle, rid), f"settling {rid}")
                except Abandoned:
                    raise
                except Exception:
                    self._failed(rid, "settling failed")
                    return None
            if settled is not None and not await self.publisher.confirm(rid, settled, self.retry):
                return rid, None
            return rid, settled

        outcomes = await asyncio.gather(*(one(rid) for rid in ids), return_exceptions=True)
        done = [o for o in outcomes if isinstance(o, tuple)]
        await self.publisher.complete([(rid, s) for rid, s in done if s is not None], self.retry)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # Abandoned (no longer acting), once what did settle is published
        for rid, _ in done:
            self._failing.discard(rid)
        return [rid for rid, _ in done]

    def _failed(self, rid: str, what: str) -> None:
        """Logged with its traceback the first time, counted every time; never fatal."""
        self.metrics.failures.inc()
        if rid not in self._failing:
            self._failing.add(rid)
            logger.exception("restaurant %s: %s; retried when its lease ends", rid, what)


def _snapshot(restaurant_id: str, profile: str | None) -> RestaurantSnapshot:
    if profile is None:
        return RestaurantSnapshot(restaurant_id)  # Redis lacks it: `fill_profiles` asks MongoDB
    rules, group = parse_profile(profile)
    return RestaurantSnapshot(restaurant_id, rules=rules, group=group)
