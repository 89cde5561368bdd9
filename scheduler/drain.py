"""Draining the clock queue: claim what is due in batches, settle and publish each, queue its next boundary."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from core.clock_queue import ClockQueue
from core.horizons import Horizons
from core.presence_store import PresenceStore, RestaurantSnapshot, from_ms, now_ms
from core.settings import Settings
from core.state_marker import StateLost, StateMarker
from core.status_service import BatchSettled, Settled, StatusService, as_of
from scheduler.metrics import SchedulerMetrics
from scheduler.rebuild import next_due_ms
from scheduler.retry import OUTAGES, Abandoned, Retrier
from scheduler.status_publisher import StatusPublisher

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SettledBatch:
    transitions: list[tuple[str, Settled]]  # committed, to publish
    through: list[RestaurantSnapshot]  # went through (as read): to reschedule at their next boundary
    unknown: list[str]  # never provisioned: dropped from the queue


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
        self.state = StateMarker(store.redis, settings.redis_prefix, guarded=store)
        self.horizons = Horizons(store.redis, settings.redis_prefix)
        self._failing: set[str] = set()

    async def drain(self) -> None:
        """Until nothing is due (or this scheduler stops leading).

        Two batches overlap, no more: while one batch's events wait for RabbitMQ's confirms and its
        restaurants are rescheduled, the next batch is claimed and settled. The event loop is the
        bottleneck, so more batches at once would only queue behind each other.
        """
        finishing: asyncio.Task[None] | None = None
        try:
            while self.acting():
                claimed_at, due = await self.retry(self._claim, "claiming due restaurants")
                if not due:
                    break
                self.metrics.claimed.inc(len(due))
                self.metrics.batch_size.observe(len(due))
                started = time.perf_counter()
                settled = await self._settle(list(due), claimed_at, due)
                if finishing is not None:
                    await finishing
                finishing = asyncio.create_task(self._finish(settled, claimed_at, due, started), name="drain-finish")
        except BaseException:
            if finishing is not None:  # the batch in hand still goes out (cancelled: given up); this error wins
                if not finishing.done() and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    finishing.cancel()
                await asyncio.gather(finishing, return_exceptions=True)
            raise
        if finishing is not None:
            await finishing

    async def instant(self) -> int:
        """Now, or the bridges' horizon if it is earlier: the clock goes no further than the device
        messages received before it are applied (core/horizons.py)."""
        now = now_ms()
        at = min(now, await self.horizons.lowest(now))
        self.metrics.horizon_lag.set((now - at) / 1000)
        return at

    async def _claim(self) -> tuple[int, dict[str, int]]:
        """What is due up to `instant`, each restaurant with the instant it was due (never after the claim's)."""
        at = await self.instant()
        claimed = await self.clock.claim(at, self.lease_ms, self.settings.scheduler_batch_size)
        return at, {rid: min(due, at) for rid, due in claimed}

    async def _finish(self, settled: SettledBatch, claimed_at: int, due: dict[str, int], started: float) -> None:
        """Publish a settled batch, then queue each of its restaurants at its next boundary."""
        await self.publisher.publish_settled(settled.transitions, self.retry)
        # From the instant each was settled as of, not later, so no boundary in between is lost. One that
        # is already behind the claim (two boundaries in one jump of the horizon) is claimed again at once.
        # That instant is `as_of`'s: a boundary before the restaurant's committed status or its newest fact
        # would be settled as of that later instant again, committing nothing. Counting from the due time
        # instead walked a restaurant queued at a boundary long past through every one since, a claim each
        # (from 1970, 1,024 claims over 27 s, while the day's boundaries waited behind them).
        next_due: list[tuple[str, int | None]] = [(rid, None) for rid in settled.unknown]  # never provisioned: dropped
        for snap in settled.through:  # those that failed are not here: they stay leased and are due again when it ends
            at = as_of(snap, from_ms(due.get(snap.restaurant_id, claimed_at)))
            try:
                next_due.append((snap.restaurant_id, next_due_ms(snap, at)))
            except Exception:
                self._failed(snap.restaurant_id, "its next boundary cannot be computed")
        await self.retry(partial(self.clock.reschedule, claimed_at + self.lease_ms, next_due), "rescheduling")
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def settle_many(self, ids: Sequence[str], as_of_ms: int | None = None) -> list[str]:
        """Settle the restaurants and publish what changed; returns those that went through (the rebuild's path)."""
        settled = await self._settle(ids, as_of_ms)
        await self.publisher.publish_settled(settled.transitions, self.retry)
        return [snap.restaurant_id for snap in settled.through]

    async def _settle(
        self, ids: Sequence[str], as_of_ms: int | None = None, each_ms: dict[str, int] | None = None
    ) -> SettledBatch:
        """Settle a batch with `StatusService.settle_batch`: its transitions, to publish together.

        A claimed restaurant is settled as of the instant it was due (`each_ms`, never after the claim's
        instant, the bridges' horizon), not the wall clock (`core.status_service.as_of`):
        - by the wall clock, a boundary held back by a bridge's backlog was settled together with whatever
          came after it (a new restaurant's first DISCONNECTED skipped to the end of an unavailability; a
          device's window ran out before its graceful stop, still in the backlog, counted);
        - as of the claim's instant, two boundaries passed in one jump of the horizon were settled as one:
          an unavailability's end and the next one's start 9 s later committed UNAVAILABLE after
          UNAVAILABLE, and the DISCONNECTED stretch between them never reached the history.

        One that failed is logged, counted and left out; one that failed because a backing service
        went away meanwhile is settled again on its own, with backoff.
        """
        each = {rid: from_ms(ms) for rid, ms in (each_ms or {}).items()}
        batch = await self._settle_when_ready(ids, as_of_ms, each)
        transitions = list(batch.settled.items())
        failed = set(batch.failed)
        outages = [rid for rid, exc in batch.failed.items() if isinstance(exc, OUTAGES)]
        for rid, exc in batch.failed.items():
            if rid not in outages:
                self._failed(rid, "settling failed", exc)
        instant = None if as_of_ms is None else from_ms(as_of_ms)
        for again, settled in await asyncio.gather(*(self._settle_one(rid, each.get(rid, instant)) for rid in outages)):
            if again is not None:
                failed.discard(again)
                if settled is not None:
                    transitions.append((again, settled))
        through = [snap for snap in batch.snapshots if snap.restaurant_id not in failed]
        for snap in through:
            self._failing.discard(snap.restaurant_id)
        return SettledBatch(transitions, through, batch.unknown)

    async def _settle_when_ready(
        self, ids: Sequence[str], as_of_ms: int | None, each: dict[str, datetime]
    ) -> BatchSettled:
        """`settle_batch` once the state is ready. What the guard refused (Redis restarted empty after the
        check, or a bridge began rebuilding it) waits for the rebuild and is settled again."""
        out = BatchSettled()
        todo = list(ids)
        as_of = None if as_of_ms is None else from_ms(as_of_ms)
        while True:
            await self._wait_for_state()
            batch = await self.retry(partial(self.status.settle_batch, todo, as_of, each),
                                     f"settling {len(todo)} restaurants")  # fmt: skip
            lost = {rid for rid, exc in batch.failed.items() if isinstance(exc, StateLost)}
            out.settled.update(batch.settled)
            out.unknown += batch.unknown
            out.failed.update((rid, exc) for rid, exc in batch.failed.items() if rid not in lost)
            out.snapshots += [snap for snap in batch.snapshots if snap.restaurant_id not in lost]
            if not lost:
                return out
            logger.warning("%d restaurants not settled: Redis lost its state meanwhile; waiting for the rebuild",
                           len(lost))  # fmt: skip
            todo = [rid for rid in todo if rid in lost]

    async def _wait_for_state(self) -> None:
        """Settle nothing while a bridge rebuilds Redis's lost state (core/state_marker.py)."""
        if await self.retry(self.state.ready, "reading the state marker"):
            return
        logger.warning("Redis lost the platform's state; settling waits for the bridge's rebuild")
        started = time.monotonic()
        if not await self.retry(partial(self.state.wait_ready, self.acting), "waiting for the rebuild"):
            raise Abandoned("waiting for the rebuild")
        logger.info("the bridge rebuilt Redis's state; settling again after %.1f s", time.monotonic() - started)

    async def _settle_one(self, rid: str, instant: datetime | None) -> tuple[str | None, Settled | None]:
        """(rid, what to publish) once settled, (None, None) if it failed."""
        async with self._gate:
            try:
                return rid, await self.retry(partial(self.status.settle, rid, instant), f"settling {rid}")
            except Abandoned:
                raise
            except StateLost:
                return None, None  # still leased: due again when the lease ends, after the rebuild
            except Exception as exc:
                self._failed(rid, "settling failed", exc)
                return None, None

    def _failed(self, rid: str, what: str, exc: BaseException | None = None) -> None:
        """Logged with its traceback the first time, counted every time; never fatal."""
        self.metrics.failures.inc()
        if rid not in self._failing:
            self._failing.add(rid)
            logger.error("restaurant %s: %s; retried when its lease ends", rid, what, exc_info=exc or True)
