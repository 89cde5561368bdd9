"""Publishing what the scheduler settled: STATUS_CHANGED to RabbitMQ, the retained status to MQTT.

Both are committed first to the restaurant's Redis hash by `StatusService.settle` (the outbox), and
each outbox field is cleared only once its copy is confirmed: the event by RabbitMQ's publisher
confirm, the retained status by the broker's PUBACK. What a crashed scheduler leaves behind is
republished by the next leader (`republish`).

While RabbitMQ is away the scheduler does not wait for it: the events of a batch it could not publish
stay in their outboxes, their restaurants are held, and the drain goes on committing the boundaries
that fall due meanwhile (with their right `since`); the devices still get the retained status at once.
A held restaurant's newer events wait behind its older ones, and `flush_held` publishes them in commit
order once RabbitMQ answers. Waiting instead (as it once did) left every later boundary uncommitted
until RabbitMQ came back, and a heartbeat settled in that gap took the boundary's place in the history.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from core import amqp
from core.amqp import EventPublisher
from core.held_outbox import publish_held
from core.ids import status_topic
from core.messages import Event, EventType
from core.presence_store import PresenceStore, RestaurantSnapshot
from core.settings import Settings
from core.shards import shard_of
from core.status_service import Settled
from core.task_stop import cancel_and_wait
from scheduler.metrics import SchedulerMetrics
from scheduler.retained_link import RetainedLink
from scheduler.retry import OUTAGES, Abandoned, Retrier

logger = logging.getLogger(__name__)

T = TypeVar("T")
Retry = Callable[[Callable[[], Awaitable[T]], str], Awaitable[T]]

CONFIRM_TIMEOUT_S = 30.0  # a confirm that never comes (connection half dead) is retried; consumers dedupe
MAX_PENDING_RETAINED = 20_000  # unacknowledged retained statuses, all shards (each link sends a window of them)
CLEAR_BATCH = 1000  # acknowledged retained statuses cleared per Redis round trip
FLUSH_EVERY_S = 0.5  # held restaurants offered to RabbitMQ again

# A publish lost to RabbitMQ being away (core.amqp's list, which has the RuntimeError of a closed
# connection) or to Redis/MongoDB is an outage, not a refusal.
PUBLISH_OUTAGES = (*OUTAGES, *amqp.PUBLISH_OUTAGES)
OUTBOX_TIME = slice(2, 15)  # `o:<13-digit ms>:<sequence>:<uuid>`: when the event was committed


class StatusPublisher:
    def __init__(self, settings: Settings, store: PresenceStore, metrics: SchedulerMetrics, instance: str) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.instance = instance
        self.events = EventPublisher(settings)
        self.links: list[RetainedLink] = []
        self._pending: dict[int, tuple[str, str]] = {}  # token → (rid, status json), until its PUBACK
        self._tokens = itertools.count()
        self._slots = asyncio.Semaphore(MAX_PENDING_RETAINED)
        self._acked: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._clearer: asyncio.Task[None] | None = None
        self._clearing = 0
        self._retry: Retrier | None = None
        self.held: set[str] = set()  # restaurants whose events wait in their outbox for RabbitMQ
        self._flusher: asyncio.Task[None] | None = None

    async def open(self, retry: Retrier) -> None:
        """Connect to RabbitMQ (retried while it is away) and start one MQTT link per broker shard."""
        self._retry = retry
        await retry(self.events.open, "opening RabbitMQ")
        self.links = [
            RetainedLink(url, i, self.settings, self.instance, self._on_acked)
            for i, url in enumerate(self.settings.mqtt_brokers)
        ]
        for link in self.links:
            link.start()
        self._clearer = asyncio.create_task(self._clear_acked(), name="retained-clearer")
        self._flusher = asyncio.create_task(self._flush_loop(), name="held-flusher")

    async def close(self, wait_s: float = 5.0) -> None:
        """Give the brokers a moment to acknowledge what is queued; the rest stays in Redis for the next leader."""
        deadline = time.monotonic() + wait_s
        while (self._pending or self._clearing or not self._acked.empty()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._pending:
            logger.warning("%d retained statuses unacknowledged at stop; the next leader republishes them",
                           len(self._pending))  # fmt: skip
        await cancel_and_wait([task for task in (self._clearer, self._flusher) if task is not None])
        if self.held:
            logger.warning("%d restaurants' events left in Redis for the next leader", len(self.held))
        for link in reversed(self.links):
            await link.stop()
        await self.events.close()

    @property
    def pending_retained(self) -> int:
        return len(self._pending)

    async def publish_event(self, event: Event) -> None:
        await asyncio.wait_for(self.events.publish(event), CONFIRM_TIMEOUT_S)

    async def publish_settled(self, settled: Sequence[tuple[str, Settled]], retry: Retry[None]) -> None:
        """A batch's STATUS_CHANGED all in flight at once, then `complete` for those RabbitMQ confirmed.

        The confirms are awaited together, under one deadline, not one publish after the other. Those
        lost to an outage stay in their outboxes and their restaurants are held (see the module's
        docstring), as are the new events of restaurants already held; one refused for another reason
        stays in the outbox for the periodic sweep. Abandoned (no longer acting): what was confirmed is
        still completed, the rest stays in the outbox for the next leader.
        """
        pending = [item for item in settled if item[0] not in self.held]
        waiting = [item for item in settled if item[0] in self.held]
        confirmed: list[tuple[str, Settled]] = []
        if pending:
            try:
                await self._publish_round(pending, confirmed)
            except PUBLISH_OUTAGES as exc:
                if not self.held:
                    logger.warning("RabbitMQ is away (%s: %s); STATUS_CHANGED wait in Redis", type(exc).__name__, exc)
                waiting += pending  # what the round left in `pending`: not confirmed
                self.held.update(rid for rid, _ in pending)
                self.metrics.held_restaurants.set(len(self.held))
        await self.complete(confirmed, retry)
        for rid, s in waiting:  # the devices need not wait for RabbitMQ
            await self.publish_retained(rid, s.status_json)

    async def flush_held(self) -> int:
        """Publish the held restaurants' outboxes (`core.held_outbox`); returns the events published."""
        published, through = await publish_held(self.store, self.held, self._publish_counted, PUBLISH_OUTAGES)
        self.metrics.held_restaurants.set(len(self.held))
        if through:
            logger.info("RabbitMQ answers again: published %d events held in Redis", published)
        return published

    async def _publish_counted(self, event: Event) -> None:
        await self.publish_event(event)
        if event.type is EventType.STATUS_CHANGED:
            self.metrics.status_changes.inc()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            if self.held:
                try:
                    await self.flush_held()
                except OUTAGES as exc:  # Redis away: the next round tries again
                    logger.info("could not flush held events (%s)", exc)

    async def _publish_round(self, pending: list[tuple[str, Settled]], confirmed: list[tuple[str, Settled]]) -> None:
        """Publish every pending event; move the confirmed ones out of `pending`, raise if an outage hit any."""
        tasks = [asyncio.ensure_future(self.events.publish(s.event)) for _, s in pending]
        try:
            _done, late = await asyncio.wait(tasks, timeout=CONFIRM_TIMEOUT_S)  # one deadline for the round
        finally:
            for task in tasks:
                task.cancel()  # no-op for those done; the late ones count as an outage
        if late:
            await asyncio.wait(late)
        again: list[tuple[str, Settled]] = []
        outage: BaseException | None = None
        done = len(confirmed)
        for item, task in zip(pending, tasks, strict=True):
            if task in late:
                error: BaseException | None = TimeoutError("no confirm in time")
            elif task.cancelled():  # the channel closed under it
                error = ConnectionError("publish cancelled")
            else:
                error = task.exception()
            if error is None:
                confirmed.append(item)
            elif isinstance(error, PUBLISH_OUTAGES):
                again.append(item)
                outage = outage or error
            else:
                logger.error("STATUS_CHANGED of %s not published; left in the outbox", item[0], exc_info=error)
        self.metrics.status_changes.inc(len(confirmed) - done)
        pending[:] = again
        if outage is not None:
            raise outage

    async def complete(self, published: Sequence[tuple[str, Settled]], retry: Retry[None]) -> None:
        """After the confirms: their outbox fields cleared in one round trip, the retained statuses handed to MQTT."""
        if published:
            await retry(partial(self._clear_events, published), "clearing the outbox")
        for rid, s in published:
            await self.publish_retained(rid, s.status_json)

    async def _clear_events(self, published: Sequence[tuple[str, Settled]]) -> None:
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for rid, s in published:
                pipe.hdel(self.store.key(rid), s.outbox_field)
            await pipe.execute()

    async def publish_retained(self, restaurant_id: str, status_json: str) -> None:
        """Hand the status to its shard's MQTT link; its outbox field is cleared when the PUBACK comes."""
        await self._slots.acquire()  # backpressure while a broker is away: its link would hold them without bound
        self._send(restaurant_id, status_json)

    def _send(self, restaurant_id: str, status_json: str) -> None:
        """Publish on the restaurant's shard, in a slot already taken."""
        link = self.links[shard_of(restaurant_id, len(self.links))]
        token = next(self._tokens)
        self._pending[token] = (restaurant_id, status_json)
        link.publish(status_topic(restaurant_id), status_json.encode(), token)
        self.metrics.retained_pending.set(len(self._pending))

    async def republish(self, snap: RestaurantSnapshot, retry: Retry[None], older_than_ms: int | None = None) -> int:
        """Publish what an earlier writer committed but never saw confirmed; returns the events republished.

        With `older_than_ms` only events committed before then are taken (a periodic sweep: a live
        writer may be publishing the newer ones right now) and the retained status is left alone.
        """
        names = sorted(n for n in snap.outbox if older_than_ms is None or _committed_ms(n) < older_than_ms)
        for name in names:
            await retry(partial(self.publish_event, Event.model_validate_json(snap.outbox[name])),
                        f"republishing {name} of {snap.restaurant_id}")  # fmt: skip
            self.metrics.outbox_republished.inc()
        if names:
            await retry(lambda: self.store.clear_outbox(snap.restaurant_id, names), "clearing the outbox")
        if older_than_ms is None and snap.pending_status is not None:
            await self.publish_retained(snap.restaurant_id, snap.pending_status)
        return len(names)

    # --- PUBACKs (on the loop: the links hand them over with call_soon_threadsafe)

    def _on_acked(self, tokens: list[int]) -> None:
        for token in tokens:
            item = self._pending.pop(token, None)
            if item is not None:
                self._acked.put_nowait(item)
        self.metrics.retained_pending.set(len(self._pending))

    async def _clear_acked(self) -> None:
        """Forget the retained statuses the broker has, a batch per round trip; a newer one queued meanwhile
        stays. Where a newer one was committed (by a bridge, say), publish it again: the broker may have
        taken its copy before this older one (`PresenceStore.clear_status_outboxes`).
        """
        assert self._retry is not None
        while True:
            batch = [await self._acked.get()]
            while len(batch) < CLEAR_BATCH and not self._acked.empty():
                batch.append(self._acked.get_nowait())
            self._clearing = len(batch)
            again: list[tuple[str, str]] = []
            # Abandoned (stopping): the fields stay, and the next leader publishes the same statuses again.
            with contextlib.suppress(Abandoned):
                again = await self._retry(partial(self.store.clear_status_outboxes, batch),
                                          "clearing retained statuses")  # fmt: skip
            self.metrics.retained_acked.inc(len(batch))
            for rid, committed in again:  # each in the slot of the one it follows, taken already
                self._send(rid, committed)
            self.metrics.retained_republished.inc(len(again))
            for _ in range(len(batch) - len(again)):
                self._slots.release()
            self._clearing = 0


def _committed_ms(outbox_field: str) -> int:
    """When an outbox entry was written (`o:<13-digit ms>:…`); an unknown format counts as old."""
    try:
        return int(outbox_field[OUTBOX_TIME])
    except ValueError:
        return 0
