"""The aggregator: STATUS_CHANGED events from STREAM_EVENT_AGGREGATOR into the history in MongoDB.

Per batch: events are decoded (poison ones are dead-lettered at once), the restaurants' zones and
groups read, the history written (aggregator/history_writer.py), and only then are the messages
acknowledged. Writing is idempotent, so a batch that fails half-way is simply done again; while
MongoDB is away it is retried with backoff and nothing is acknowledged. One aggregator runs at a
time: the ranking's rollups are read-modify-write and FerretDB has no transactions.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pymongo.errors
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import start_http_server
from pymongo import AsyncMongoClient

from aggregator.events import decode
from aggregator.history_writer import HistoryWriter, ProfileCache
from aggregator.metrics import AggregatorMetrics
from core.amqp import connect_robust, declare_topology
from core.batch_writes import write_batch
from core.db import open_mongo
from core.errors import InvalidMessage
from core.history_store import StatusChange
from core.queue_consumer import OnMessage, Subscription, consume_batches, retry_while_away
from core.settings import Settings
from core.status_events import settle

logger = logging.getLogger(__name__)

OUTAGES = (
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPError,
    pymongo.errors.ConnectionFailure,  # ServerSelectionTimeoutError and AutoReconnect included
    ConnectionError,
    TimeoutError,
)
LOG_EVERY_S = 10.0  # a flood of poison messages is summarised, not logged line by line
STANDBY_RETRY_S = 2.0  # how often a standing-by aggregator tries to become the consumer


class Aggregator:
    """`run()` until `request_stop()`; the batch in hand is finished, then `close()` in reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = AggregatorMetrics()
        self.ready = asyncio.Event()  # set once consuming
        self.metrics_port: int | None = None
        self.writer = HistoryWriter()
        self.profiles = ProfileCache(settings.aggregator_profile_ttl_s)
        self._stop = asyncio.Event()
        self._mongo: AsyncMongoClient[Any] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._httpd: Any = None
        self._last_log = 0.0
        self._unlogged = 0

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            if self.settings.aggregator_metrics_port >= 0:
                self._httpd, _ = start_http_server(
                    self.settings.aggregator_metrics_port, "127.0.0.1", self.metrics.registry
                )
                self.metrics_port = self._httpd.server_port
            self._mongo = await retry_while_away("MongoDB", lambda: open_mongo(self.settings), OUTAGES, self._stop)
            self._connection = await retry_while_away(
                "RabbitMQ", lambda: connect_robust(self.settings), OUTAGES, self._stop
            )
            if self._connection is not None:
                await self._consume(self._connection)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._mongo is not None:
            await self._mongo.close()
            self._mongo = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        logger.info(
            "aggregator stopped: %s",
            {o: int(self.metrics.value(o)) for o in ("applied", "duplicate", "ignored", "dead_lettered")},
        )

    async def _consume(self, connection: AbstractRobustConnection) -> None:
        await consume_batches(
            connection, self.settings.amqp_name(self.settings.aggregator_queue),
            lambda on_message: self._consume_exclusively(connection, on_message), self._handle,
            who="aggregator", most=self.settings.aggregator_batch_max, watch_s=self.settings.consumer_watch_s,
            stop=self._stop, ready=self.ready, resubscribed=self.metrics.resubscribed,
        )  # fmt: skip

    async def _consume_exclusively(
        self, connection: AbstractRobustConnection, on_message: OnMessage
    ) -> Subscription | None:
        """Become the queue's only consumer, or stand by until the one that is goes away; None if stopped.

        One aggregator writes at a time: the ranking's rollups are read-modify-write and FerretDB has no
        transactions. RabbitMQ enforces it (an exclusive consumer), so a second aggregator started by
        mistake, or as a standby, waits instead of corrupting the rollups, and takes over when the
        active one stops or dies.
        """
        name = self.settings.amqp_name(self.settings.aggregator_queue)

        async def attempt() -> Subscription | None:
            """Consuming, or None when another aggregator is the consumer."""
            channel = await connection.channel()
            try:
                await channel.set_qos(prefetch_count=self.settings.aggregator_batch_max)
                await declare_topology(channel, self.settings)
                queue = await channel.get_queue(name)
                return channel, queue, await queue.consume(on_message, exclusive=True)
            except aiormq.exceptions.ChannelAccessRefused:
                pass  # another aggregator is the consumer
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
            with contextlib.suppress(Exception):
                await channel.close()  # RabbitMQ closed it with the refusal
            return None

        announced = False
        while not self._stop.is_set():
            if (subscription := await retry_while_away(name, attempt, OUTAGES, self._stop)) is not None:
                self.metrics.standby.set(0)
                return subscription
            if self._stop.is_set():
                break
            self.metrics.standby.set(1)
            if not announced:
                logger.info("another aggregator consumes %s; standing by", name)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STANDBY_RETRY_S)
        return None

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        items: list[tuple[AbstractIncomingMessage, StatusChange]] = []
        for message in batch:
            try:
                _event, change = decode(message.body)
            except InvalidMessage as exc:
                await self._dead_letter(message, exc.reason, exc.detail)
                continue
            if change is None:
                self.metrics.count("ignored")  # device and unavailability events: the statuses tell it all
                await settle(message.ack())
                continue
            items.append((message, change))
        if items:
            await self._apply(items)

    async def _apply(self, items: list[tuple[AbstractIncomingMessage, StatusChange]]) -> None:
        """Written with retries while MongoDB is away; a poison message is dead-lettered (core.batch_writes)."""

        async def timed(batch: list[tuple[AbstractIncomingMessage, StatusChange]]) -> None:
            with self.metrics.batch_seconds.time():
                await self._write(batch)

        async def poison(item: tuple[AbstractIncomingMessage, StatusChange], exc: Exception) -> None:
            logger.error("event of %s could not be written", item[1].restaurant_id, exc_info=exc)
            await self._dead_letter(item[0], "write_error", f"{type(exc).__name__}: {exc}")

        written = await write_batch(items, timed, outages=OUTAGES, stop=self._stop, retries=self.metrics.retries,
                                    away="MongoDB", poison=poison)  # fmt: skip
        for message, _change in written:
            await settle(message.ack())

    async def _write(self, items: list[tuple[AbstractIncomingMessage, StatusChange]]) -> None:
        """Write the batch. Events of unknown restaurants are dead-lettered and taken out of `items` at
        once, so a retry of the batch does not settle them a second time."""
        profiles = await self.profiles.get(list(dict.fromkeys(c.restaurant_id for _m, c in items)))
        for message, change in items:
            if change.restaurant_id not in profiles:
                await self._dead_letter(message, "unknown_restaurant", change.restaurant_id)
        items[:] = [(m, c) for m, c in items if c.restaurant_id in profiles]
        written, rollups = await self.writer.write([c for _m, c in items], profiles)
        self.metrics.count("applied", written.applied)
        self.metrics.count("duplicate", written.duplicates)
        self.metrics.rollups.inc(rollups)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str, detail: str) -> None:
        """To the queue's DLQ (its x-dead-letter arguments), counted, and logged once (floods summarised)."""
        self.metrics.count("dead_lettered")
        self.metrics.dead_letters.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            logger.warning("dead-lettered a message: %s: %s%s", reason, detail, more)
            self._last_log, self._unlogged = now, 0
        else:
            self._unlogged += 1
        await settle(message.nack(requeue=False))
