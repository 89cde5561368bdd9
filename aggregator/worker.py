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
TAKE_WAIT_S = 0.5  # how often an idle worker looks at its stop flag
CANCEL_TIMEOUT_S = 5.0
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
            self._mongo = await self._retry("MongoDB", lambda: open_mongo(self.settings))
            self._connection = await self._retry("RabbitMQ", lambda: connect_robust(self.settings))
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

    async def _retry(self, what: str, connect: Any) -> Any:
        delay = 0.5
        while not self._stop.is_set():
            try:
                return await connect()
            except OUTAGES as exc:
                logger.warning("%s not reachable (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return None

    async def _consume(self, connection: AbstractRobustConnection) -> None:
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)  # prefetch_count bounds what can wait here

        consuming = await self._consume_exclusively(connection, on_message)
        if consuming is None:
            return  # stopped while standing by
        queue, tag = consuming
        self.metrics.standby.set(0)
        self.ready.set()
        logger.info("aggregator consuming %s", queue.name)
        while not self._stop.is_set():
            if batch := await self._take(inbox, TAKE_WAIT_S):
                await self._handle(batch)
        try:
            await asyncio.wait_for(queue.cancel(tag), CANCEL_TIMEOUT_S)
        except (*OUTAGES, aio_pika.exceptions.AMQPError) as exc:
            logger.info("could not cancel the consumer (%s); closing anyway", exc)
        # Drain: what was delivered before the cancel is written and acknowledged, not redelivered.
        while batch := await self._take(inbox, None):
            await self._handle(batch)

    async def _consume_exclusively(
        self, connection: AbstractRobustConnection, on_message: Any
    ) -> tuple[Any, str] | None:
        """Become the queue's only consumer, or stand by until the one that is goes away.

        One aggregator writes at a time: the ranking's rollups are read-modify-write and FerretDB has no
        transactions. RabbitMQ enforces it (an exclusive consumer), so a second aggregator started by
        mistake, or as a standby, waits instead of corrupting the rollups, and takes over when the
        active one stops or dies.
        """
        announced = False
        while not self._stop.is_set():
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.settings.aggregator_batch_max)
            await declare_topology(channel, self.settings)
            queue = await channel.get_queue(self.settings.amqp_name(self.settings.aggregator_queue))
            try:
                return queue, await queue.consume(on_message, exclusive=True)
            except aiormq.exceptions.ChannelAccessRefused:
                self.metrics.standby.set(1)
                if not announced:
                    logger.info("another aggregator consumes %s; standing by", queue.name)
                    announced = True
            with contextlib.suppress(Exception):
                await channel.close()  # RabbitMQ closed it with the refusal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STANDBY_RETRY_S)
        return None

    async def _take(self, inbox: asyncio.Queue[AbstractIncomingMessage], wait_s: float | None) -> list[Any]:
        batch: list[AbstractIncomingMessage] = []
        if wait_s is not None:
            try:
                batch.append(await asyncio.wait_for(inbox.get(), wait_s))
            except TimeoutError:
                return batch
        while len(batch) < self.settings.aggregator_batch_max and not inbox.empty():
            batch.append(inbox.get_nowait())
        return batch

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
