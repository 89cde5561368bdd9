"""The scheduler: clock boundaries (opening, closing, unavailability start and end) → STATUS_CHANGED.

No job per restaurant. The restaurants wait in the Redis clock queue (core/clock_queue.py), scored
by their next boundary; APScheduler holds one date job for the earliest score, a safety interval job
and the periodic rebuild. When a job fires, one drain loop claims what is due in batches (a lease),
settles each restaurant with `StatusService.settle` (bounded concurrency), publishes what changed,
and queues each at its next boundary. At 10:00, when 100,000 restaurants open at once, that is 100
claims of 1,000, not 100,000 jobs. Only the holder of the leader lock does any of it.
"""

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, timedelta
from functools import partial

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import start_http_server
from redis.asyncio import BlockingConnectionPool, Redis

from core.clock_queue import ClockQueue
from core.db import open_mongo
from core.horizons import PUBLISH_EVERY_S
from core.presence_store import PresenceStore, from_ms, now_ms
from core.settings import Settings
from core.status_service import StatusService
from core.task_stop import cancel_and_wait
from scheduler.drain import Drainer
from scheduler.leader import LeaderLock
from scheduler.metrics import SchedulerMetrics
from scheduler.rebuild import Rebuilder
from scheduler.retry import OUTAGES, Abandoned, Retrier
from scheduler.status_publisher import StatusPublisher
from scheduler.wakes import listen_for_wakes

logger = logging.getLogger(__name__)

STEP_DOWN_WAIT_S = 30.0  # in-flight batches finish within this when the scheduler stops leading
REDIS_TIMEOUT_S = 10.0
HORIZON_RECHECK_MS = int(PUBLISH_EVERY_S * 1000)  # a boundary held by a bridge's horizon: claimed again after


class Scheduler:
    """`run()` until `request_stop()`: follow, lead while holding the lock, then drain and close."""

    def __init__(self, settings: Settings, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or uuid.uuid4().hex[:8]
        self.metrics = SchedulerMetrics()
        self.metrics_port: int | None = None
        self.leading = asyncio.Event()  # set while this scheduler leads
        self.rebuilt = asyncio.Event()  # set once the current tenure's first rebuild is done
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self._leader = False
        self._wake = asyncio.Event()
        self._rebuild_wanted = asyncio.Event()
        self._aps: AsyncIOScheduler | None = None
        self._due_at: int | None = None
        self._redis_away = False
        self.retry_running = Retrier(lambda: not self._stop.is_set(), self.metrics.retries.inc)
        self.retry_acting = Retrier(lambda: self.acting, self.metrics.retries.inc)

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._rebuild_wanted.set()

    @property
    def acting(self) -> bool:
        return self._leader and self.lock.valid() and not self._stop.is_set()

    async def run(self) -> None:
        s = self.settings
        pool = BlockingConnectionPool.from_url(
            # The drain and the rebuild may each retry `scheduler_concurrency` one by one; a few more for the rest.
            s.redis_url, max_connections=2 * s.scheduler_concurrency + 16, timeout=30, decode_responses=True,
            # A Redis that stops answering (not only one that refuses) is an outage too, not a hang.
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        )  # fmt: skip
        self.redis = Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
        self.store = PresenceStore(self.redis, s.redis_prefix)
        self.status = StatusService(self.store, timedelta(seconds=s.stale_after_s))
        self.clock = ClockQueue(self.redis, s.redis_prefix)
        # Unique per process even under a fixed --instance name: two processes must never both hold it.
        holder = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        self.lock = LeaderLock(self.redis, f"{s.redis_prefix}scheduler:leader", holder, s.scheduler_leader_ttl_s)
        self.publisher = StatusPublisher(s, self.store, self.metrics, self.instance)
        self.drainer = Drainer(
            s, self.store, self.status, self.clock, self.publisher, self.metrics, self.retry_acting, lambda: self.acting
        )
        self.rebuilder = Rebuilder(
            self.store, self.clock, self.status, self.publisher, self.metrics, self.drainer.settle_many,
            lambda: self.acting, self.drainer.instant,
        )  # fmt: skip
        httpd = None
        try:
            await self.publisher.open(self.retry_running)
            if s.scheduler_metrics_port >= 0:
                httpd, _ = start_http_server(s.scheduler_metrics_port, "127.0.0.1", self.metrics.registry)
                self.metrics_port = httpd.server_port
            logger.info("scheduler %s ready; waiting for the leader lock", self.instance)
            while not self._stop.is_set():
                if await self._try_acquire():
                    await self._lead()
                await self._pause(max(0.1, s.scheduler_leader_ttl_s / 4))
        except Abandoned:
            logger.warning("scheduler %s stopped before its backing services answered", self.instance)
        finally:
            await self.close(httpd)

    async def close(self, httpd: object) -> None:
        await self.publisher.close()
        await self.redis.aclose()
        if httpd is not None:
            httpd.shutdown()  # type: ignore[attr-defined]
            httpd.server_close()  # type: ignore[attr-defined]
        logger.info("scheduler %s stopped", self.instance)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _try_acquire(self) -> bool:
        try:
            acquired = await self.lock.acquire()
        except OUTAGES as exc:
            if not self._redis_away:
                logger.warning("leader lock: Redis is away (%s); trying again", exc)
            self._redis_away = True
            return False
        self._redis_away = False
        return acquired

    # --- leading

    async def _lead(self) -> None:
        s = self.settings
        self._leader = True
        self._lost.clear()
        self.metrics.leader.set(1)
        logger.info("scheduler %s leads", self.instance)
        helpers = [asyncio.create_task(self._keep_lease(), name="leader-lease")]  # cancelled on stepping down
        workers: list[asyncio.Task[None]] = []  # drained on stepping down
        try:
            # Before anything new is published: events a crashed leader committed go out first, in order.
            await self.retry_acting(lambda: self.rebuilder.recover_outbox(self.retry_acting), "outbox recovery")
            self._aps = AsyncIOScheduler(
                timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
            )
            self._aps.add_job(self._wake_drain, IntervalTrigger(seconds=s.scheduler_safety_interval_s), id="safety")
            self._aps.add_job(self._want_rebuild, IntervalTrigger(seconds=s.scheduler_rebuild_interval_s), id="rebuild")
            self._aps.start()
            self.leading.set()
            self._wake.set()
            self._rebuild_wanted.set()
            helpers.append(
                asyncio.create_task(listen_for_wakes(self.redis, self.clock.wake_channel, self._due_now), name="wakes")
            )
            workers = [
                asyncio.create_task(self._drain_loop(), name="drain"),
                asyncio.create_task(self._rebuild_loop(), name="rebuild"),
            ]
            stop, lost = asyncio.create_task(self._stop.wait()), asyncio.create_task(self._lost.wait())
            await asyncio.wait([stop, lost, *workers], return_when=asyncio.FIRST_COMPLETED)
            for task in (stop, lost):
                task.cancel()
        except Abandoned:
            pass
        except Exception:
            logger.exception("scheduler %s failed while leading; stepping down", self.instance)
        finally:
            await self._step_down(helpers, workers)

    async def _step_down(self, helpers: list[asyncio.Task[None]], workers: list[asyncio.Task[None]]) -> None:
        self._leader = False
        self.leading.clear()
        self.rebuilt.clear()
        self.metrics.leader.set(0)
        self._wake.set()
        self._rebuild_wanted.set()
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps, self._due_at = None, None
        # The drain and the rebuild finish the batch in hand (that is the drain on SIGTERM); the rest stays due.
        done, pending = await asyncio.wait(workers, timeout=STEP_DOWN_WAIT_S) if workers else (set(), set())
        await cancel_and_wait([*pending, *helpers])
        for task in done:
            if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), Abandoned):
                logger.error("%s task failed", task.get_name(), exc_info=task.exception())
        with contextlib.suppress(*OUTAGES):  # unreachable: it expires by itself
            await self.lock.release()
        logger.info("scheduler %s no longer leads", self.instance)

    async def _keep_lease(self) -> None:
        # Often: a loop stalled by a burst (or a busy machine) still renews well before the lease runs out.
        interval = self.settings.scheduler_leader_ttl_s / 5
        while True:
            await asyncio.sleep(interval)
            try:
                held = await asyncio.wait_for(self.lock.renew(), interval)
            except OUTAGES:
                held = self.lock.valid()  # Redis away: we lead only while our lease surely runs
            if not held or not self.lock.valid():
                logger.warning("scheduler %s lost the leader lock", self.instance)
                self._lost.set()
                return

    # --- APScheduler's jobs only wake the loops: the work runs in tasks this class drains on stop.

    async def _wake_drain(self) -> None:
        self._wake.set()

    async def _due_fired(self) -> None:
        self._due_at = None  # the job is gone: the same due time must schedule it again
        self._wake.set()

    async def _want_rebuild(self) -> None:
        self._rebuild_wanted.set()

    def _due_now(self) -> None:
        """The API marked restaurants due (pub/sub wake): move the due job to now."""
        if self._aps is not None:
            self._aps.add_job(self._due_fired, DateTrigger(from_ms(now_ms())), id="due", replace_existing=True)

    def _schedule_due(self, due_ms: int | None) -> None:
        if self._aps is None or due_ms == self._due_at:
            return
        self._due_at = due_ms
        if due_ms is None:
            if self._aps.get_job("due") is not None:
                self._aps.remove_job("due")
            return
        self._aps.add_job(self._due_fired, DateTrigger(from_ms(due_ms)), id="due", replace_existing=True)

    async def _drain_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.acting:
                return
            try:
                await self.drainer.drain()
                due = await self.retry_acting(self.clock.next_due, "reading the next due time")
                if due is not None and due <= now_ms():  # due, but a bridge's horizon is still before it
                    due = now_ms() + HORIZON_RECHECK_MS
                self._schedule_due(due)
            except Abandoned:
                return
            except Exception:
                logger.exception("drain failed; retrying at the next wake-up")

    # --- rebuild

    async def _sweep_outbox(self) -> None:
        old = now_ms() - int(self.settings.scheduler_outbox_grace_s * 1000)
        await self.rebuilder.recover_outbox(self.retry_acting, old)

    async def _rebuild_loop(self) -> None:
        # Opened here, per tenure, so that MongoDB being away holds up only the rebuild, never the
        # drain; a follower holds no connection (and Beanie, bound to one client per process,
        # follows whoever leads when tests run two schedulers side by side).
        try:
            mongo = await self.retry_acting(partial(open_mongo, self.settings), "opening MongoDB")
        except Abandoned:
            return
        try:
            await self._rebuild_forever()
        finally:
            await mongo.close()

    async def _rebuild_forever(self) -> None:
        first = True
        while True:
            await self._rebuild_wanted.wait()
            self._rebuild_wanted.clear()
            if not self.acting:
                return
            try:
                if not first:
                    await self.retry_acting(self._sweep_outbox, "outbox sweep")
                await self.retry_acting(partial(self.rebuilder.finish_changes, self.retry_acting), "finishing changes")
                await self.retry_acting(partial(self.rebuilder.from_mongo, self._wake.set), "rebuild from MongoDB")
                first = False
                self.rebuilt.set()
            except Abandoned:
                return
            except Exception:
                logger.exception("rebuild failed; retrying at the next interval")
