"""The feed worker: STATUS_CHANGED events → a global sequence, the Redis stream and the cold cache.

Per batch: groups are read (Redis profile, else MongoDB), one script call per event gives it its seq
and appends it to the stream (or recognises a redelivery or an older status), the cold cache keeps the
newest status per restaurant, and only then are the messages acknowledged. Every step is idempotent,
so a batch that fails half-way is simply done again.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pymongo.errors
import redis.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import start_http_server
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from core.amqp import connect_robust, declare_topology
from core.batch_writes import write_batch
from core.errors import InvalidMessage, ServiceUnavailable
from core.presence_store import PresenceStore, parse_profile
from core.queue_consumer import OnMessage, Subscription, consume_batches, retry_while_away
from core.settings import Settings
from core.status_events import decode_status_event, settle
from feed.cold_cache import ColdCache
from feed.events import StatusEvent, ts_micros
from feed.metrics import FeedMetrics
from feed.stream import DUPLICATE, NO_COUNTER, SEQUENCED, STALE, FeedStream

logger = logging.getLogger(__name__)

OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPError,
    pymongo.errors.ConnectionFailure,
    ServiceUnavailable,
    ConnectionError,
    TimeoutError,
)
# When Redis has lost the counter, numbering resumes this far above the cold cache's highest seq: seqs
# given out but not yet in the cache (a batch per worker at most) must never be given out again, or a
# dashboard resuming after one of them would skip the status that now carries it.
SEQ_JUMP = 1_000_000
LOG_EVERY_S = 10.0  # a flood of poison messages is summarised, not logged line by line


class FeedConsumer:
    """`run()` until `request_stop()`; the batch in hand is finished, then connections close in reverse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = FeedMetrics()
        self.ready = asyncio.Event()  # set once consuming
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._last_log = 0.0
        self._suppressed = 0

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(
            self.settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True
        )
        self.stream = FeedStream(redis, self.settings.redis_prefix)
        self.append = self.stream.append_script()
        self.profiles = PresenceStore(redis, self.settings.redis_prefix)
        self.cache = ColdCache(mongo[self.settings.mongo_db])
        httpd = None
        if self.settings.feed_metrics_port >= 0:
            httpd, _ = start_http_server(self.settings.feed_metrics_port, "127.0.0.1", self.metrics.registry)
            self.metrics_port = httpd.server_port
        connection: AbstractRobustConnection | None = None
        try:
            connection = await retry_while_away("RabbitMQ", lambda: connect_robust(self.settings), OUTAGES, self._stop)
            if connection is not None:
                await self._consume(connection)
        finally:
            if connection is not None:
                await connection.close()
            await mongo.close()
            await redis.aclose()
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()
            logger.info("feed stopped: %s", {o: self.metrics.value(o) for o in ("sequenced", "dead_lettered")})

    async def _consume(self, connection: AbstractRobustConnection) -> None:
        name = self.settings.amqp_name(self.settings.dashboard_queue)

        async def subscribe(on_message: OnMessage) -> Subscription:
            channel = await connection.channel()
            try:
                await channel.set_qos(prefetch_count=self.settings.feed_batch_max)
                await declare_topology(channel, self.settings)
                queue = await channel.get_queue(name)
                return channel, queue, await queue.consume(on_message)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise

        def subscribing(on_message: OnMessage) -> Awaitable[Subscription | None]:
            return retry_while_away(name, lambda: subscribe(on_message), OUTAGES, self._stop)

        await consume_batches(
            connection, name, subscribing, self._handle,
            who="feed", most=self.settings.feed_batch_max, watch_s=self.settings.consumer_watch_s,
            stop=self._stop, ready=self.ready, resubscribed=self.metrics.resubscribed,
        )  # fmt: skip

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        events: list[StatusEvent] = []
        for message in batch:
            try:
                event, status = decode_status_event(message.body)
            except InvalidMessage as exc:
                await self._dead_letter(message, exc.reason, exc.detail)
                continue
            if status is None:
                self.metrics.count("ignored")
                await settle(message.ack())
                continue
            dumped = status.model_dump(mode="json")
            events.append(StatusEvent(message, event.event_id, event.restaurant_id, ts_micros(event.ts), dumped))
        if events:
            await self._apply(events)

    async def _apply(self, events: list[StatusEvent]) -> None:
        """Written with retries while a backing service is away; a poison message is dead-lettered
        (core.batch_writes)."""

        async def poison(event: StatusEvent, exc: Exception) -> None:
            logger.error("event %s could not be fed", event.event_id, exc_info=exc)
            await self._dead_letter(event.message, "feed_error", f"{type(exc).__name__}: {exc}")

        written = await write_batch(events, self._write, outages=OUTAGES, stop=self._stop,
                                    retries=self.metrics.retries, away="a backing service", poison=poison)  # fmt: skip
        for e in written:
            self.metrics.count(e.outcome)
            await settle(e.message.ack())

    async def _write(self, events: list[StatusEvent]) -> None:
        groups = await self._groups({e.restaurant_id for e in events})
        pending = events
        for _ in range(3):
            retry = await self._sequence(pending, groups)
            if not retry:
                break
            await self._start_counter()
            pending = retry
        else:
            raise ServiceUnavailable("the feed's sequence counter keeps disappearing from Redis")
        newest: dict[str, StatusEvent] = {}
        for e in events:
            if e.seq and (e.restaurant_id not in newest or e.ts_us > newest[e.restaurant_id].ts_us):
                newest[e.restaurant_id] = e
        await asyncio.gather(
            *(
                self.cache.put_if_newer(e.restaurant_id, e.seq, e.ts_us, groups.get(e.restaurant_id), e.status)
                for e in newest.values()
            )
        )
        if newest:
            self.metrics.last_seq.set(max(e.seq for e in newest.values()))

    async def _sequence(self, events: list[StatusEvent], groups: dict[str, str | None]) -> list[StatusEvent]:
        """One atomic script call per event, in order, in one round trip; returns those to do again."""
        keys = self.stream.keys
        async with self.stream.redis.pipeline(transaction=False) as pipe:
            for e in events:
                await self.append(
                    keys=[keys.seq, keys.stream, keys.latest, keys.event(e.event_id), keys.moved(e.restaurant_id)],
                    args=[e.restaurant_id, e.ts_us, groups.get(e.restaurant_id) or "",
                          json.dumps(e.status, separators=(",", ":")), self.settings.feed_stream_maxlen,
                          self.settings.feed_dedup_ttl_s],
                    client=pipe,
                )  # fmt: skip
            results = await pipe.execute()
        retry = []
        for e, (code, seq, group) in zip(events, results, strict=True):
            if code == NO_COUNTER:
                retry.append(e)
                continue
            e.seq = int(seq)
            e.outcome = {SEQUENCED: "sequenced", DUPLICATE: "duplicate", STALE: "stale"}[code]
            if code == SEQUENCED:
                groups[e.restaurant_id] = group or None  # a recent move's, for the cold cache too
        return retry

    async def _start_counter(self) -> None:
        """Redis is new or lost its state: start numbering above anything given out before."""
        in_stream = await self.stream.last_entry_seq()
        cached = await self.cache.max_seq()
        start = max(in_stream, cached + SEQ_JUMP if cached is not None else 0)
        if await self.stream.redis.set(self.stream.keys.seq, start, nx=True):
            if start:
                logger.warning(
                    "feed sequence restarted at %d (stream ends at %d, cache at %s)", start, in_stream, cached
                )
            else:
                logger.info("feed sequence starts")

    async def _groups(self, ids: set[str]) -> dict[str, str | None]:
        ordered = sorted(ids)
        async with self.stream.redis.pipeline(transaction=False) as pipe:
            for rid in ordered:
                pipe.hget(self.profiles.key(rid), "p")
            raws = await pipe.execute()
        groups: dict[str, str | None] = {}
        for rid, raw in zip(ordered, raws, strict=True):
            if raw is not None:
                groups[rid] = parse_profile(raw)[1]
        missing = [rid for rid in ordered if rid not in groups]
        if missing:
            groups.update(await self.cache.groups(missing))
        return groups

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str, detail: str = "") -> None:
        """Counted, logged (a flood summarised), and rejected: the queue moves it to its DLQ."""
        self.metrics.count("dead_lettered")
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            logger.warning(
                "dead-lettered message %s: %s %s (%d more since the last line)",
                message.message_id, reason, detail[:200], self._suppressed,
            )  # fmt: skip
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1
        await settle(message.nack(requeue=False))
