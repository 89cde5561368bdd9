"""Committed events from the restaurants' Redis outboxes to RabbitMQ, without RabbitMQ holding up the bridge.

Every event is written to its restaurant's hash (an outbox field) by the same script that changes the
facts, so once committed it cannot be lost; publishing it is a separate step. If that step waited for
RabbitMQ, an outage of a few seconds would stop the bridge from applying heartbeats, and the devices
would be taken for silent because the event bus was down. So while RabbitMQ is away the events stay
in Redis, their restaurants join a backlog, and the bridge goes on. `flush` publishes the backlog,
oldest field first, once RabbitMQ answers again; until then a restaurant in the backlog has its new
events wait behind its older ones, so each restaurant's events keep their order.
"""

import asyncio
import logging
from collections.abc import Mapping, Sequence

from bridge.metrics import BridgeMetrics
from core.amqp import PUBLISH_OUTAGES, EventPublisher
from core.held_outbox import publish_held
from core.messages import Event
from core.presence_store import PresenceStore

logger = logging.getLogger(__name__)


class EventOutbox:
    def __init__(
        self, store: PresenceStore, publisher: EventPublisher, metrics: BridgeMetrics, timeout_s: float
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.backlog: set[str] = set()
        self.down = False

    async def publish(self, per_restaurant: Mapping[str, Sequence[tuple[str, Event]]], at_once: int) -> None:
        """Publish (outbox field, event) pairs: each restaurant's in order, up to `at_once` restaurants
        at a time so their confirms overlap; then clear what RabbitMQ confirmed, in one pipeline.

        A restaurant's events stay in its outbox for `flush` when RabbitMQ is away or older events of
        the same restaurant still wait there.
        """
        confirmed: list[tuple[str, list[str]]] = []
        todo = iter(per_restaurant.items())

        async def one_at_a_time() -> None:
            # A fixed set of these share one iterator: a semaphore over a coroutine per restaurant cost
            # more than the publishing (Python 3.11 scans its waiters on every release).
            for restaurant_id, items in todo:
                if await self._send(restaurant_id, items):
                    confirmed.append((restaurant_id, [name for name, _event in items]))

        try:
            await asyncio.gather(*(one_at_a_time() for _ in range(min(at_once, len(per_restaurant)))))
        finally:
            await self.store.clear_outboxes(confirmed)  # one round trip, not one per restaurant

    async def _send(self, restaurant_id: str, items: Sequence[tuple[str, Event]]) -> bool:
        if self.down or restaurant_id in self.backlog:
            self._hold(restaurant_id)
            return False
        try:
            # Each confirm is awaited at most the publisher's `confirm_timeout_s` (a TimeoutError then): one
            # timer for all, where an `asyncio.timeout` per restaurant was ~10% of the bridge in a storm.
            for _name, event in items:
                await self.publisher.publish(event)
                self.metrics.events_published.inc()
        except PUBLISH_OUTAGES as exc:
            if not self.down:
                logger.warning("RabbitMQ is away (%s: %s); events wait in Redis", type(exc).__name__, exc)
            self.down = True
            self._hold(restaurant_id)
            return False
        return True

    def _hold(self, restaurant_id: str) -> None:
        self.backlog.add(restaurant_id)
        self.metrics.held_restaurants.set(len(self.backlog))

    async def flush(self) -> int:
        """Publish the backlog; stops at the first failure (to be called again). Returns events published."""
        published, through = await publish_held(self.store, self.backlog, self._publish_one, PUBLISH_OUTAGES)
        self.metrics.held_restaurants.set(len(self.backlog))
        if self.down and through:
            logger.info("RabbitMQ answers again: published %d events held in Redis", published)
            self.down = False
        return published

    async def _publish_one(self, event: Event) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.publisher.publish(event)
        self.metrics.events_published.inc()
