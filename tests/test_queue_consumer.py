"""The workers' shared consume loop on real RabbitMQ: a consumer RabbitMQ no longer has is noticed and
replaced, and a worker that is merely idle or busy is left alone."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import CollectorRegistry, Counter

from core.amqp import connect_robust
from core.queue_consumer import OnMessage, Subscription, consume_batches
from core.settings import Settings
from core.status_events import settle
from tests.helpers import wait_until
from tests.tcp_cut import CuttableRelay

WATCH_S = 0.5


@dataclass
class Worker:
    """consume_batches as the feed and the aggregator run it, with what it did laid open."""

    connection: AbstractRobustConnection
    queue: str
    handle_s: float = 0.0  # how long each batch takes to handle
    handled: list[bytes] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.resubscribed = Counter("resubscribed", "", registry=self.registry)

    async def subscribe(self, on_message: OnMessage) -> Subscription:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue(self.queue)  # not auto-deleted: it outlives a lost consumer
        subscription = (channel, queue, await queue.consume(on_message))
        self.subscriptions.append(subscription)
        return subscription

    async def handle(self, batch: list[AbstractIncomingMessage]) -> None:
        await asyncio.sleep(self.handle_s)
        for message in batch:
            self.handled.append(message.body)
            await message.ack()

    def times_resubscribed(self) -> float:
        return self.registry.get_sample_value("resubscribed_total") or 0.0

    async def run(self) -> None:
        await consume_batches(self.connection, self.queue, self.subscribe, self.handle, who="test", most=10,
                              watch_s=WATCH_S, stop=self.stop, ready=self.ready,
                              resubscribed=self.resubscribed)  # fmt: skip


@asynccontextmanager
async def running(
    settings: Settings, handle_s: float = 0.0
) -> AsyncIterator[tuple[Worker, Callable[[int], Awaitable[None]]]]:
    connection = await connect_robust(settings)
    worker = Worker(connection, settings.amqp_name("watched"), handle_s)
    task = asyncio.create_task(worker.run())
    channel = await connection.channel()

    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            await channel.default_exchange.publish(aio_pika.Message(str(sent).encode()), routing_key=worker.queue)

    try:
        await wait_until(lambda: worker.ready.is_set() or task.done(), 10, message="never consumed")
        yield worker, publish
    finally:
        worker.stop.set()
        await asyncio.wait_for(task, 10)
        await channel.queue_delete(worker.queue)
        await connection.close()


async def test_a_consumer_rabbitmq_forgot_is_replaced_and_nothing_is_lost(settings: Settings) -> None:
    async with running(settings) as (worker, publish):
        await publish(3)
        await wait_until(lambda: len(worker.handled) == 3, 10, message="the first three handled")
        # The consumer goes while its channel and connection stay up: what a restore that failed
        # half-way leaves behind. Nothing tells the worker.
        _channel, queue, tag = worker.subscriptions[0]
        await queue.cancel(tag)
        await publish(5)
        await wait_until(lambda: len(worker.handled) == 8, 10, message="the five sent after the loss handled")
        assert sorted(int(b) for b in worker.handled) == list(range(1, 9))
        assert worker.times_resubscribed() == 1
        assert len(worker.subscriptions) == 2
        assert worker.subscriptions[0][0].is_closed  # the old channel is given up, not left open


async def test_an_idle_or_busy_worker_is_not_resubscribed(settings: Settings) -> None:
    async with running(settings, handle_s=2.5 * WATCH_S) as (worker, publish):
        await asyncio.sleep(3 * WATCH_S)  # idle, nothing ready: looks find nothing wrong
        # Busy: each batch takes longer than two looks while the rest wait, ready, in the queue.
        await publish(20)
        await wait_until(lambda: len(worker.handled) == 20, 30, message="all handled")
        assert worker.times_resubscribed() == 0
        assert len(worker.subscriptions) == 1


async def test_looks_unanswered_for_a_while_are_logged_and_so_is_their_end(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Whether RabbitMQ is away or the worker's connection is stuck (aio-pika's robust connection once did
    # not come back from a restart), an idle worker that cannot look at its queue must say so.
    amqp = urlsplit(settings.amqp_url)
    relay = CuttableRelay(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await relay.open()
    relayed = settings.model_copy(update={"amqp_url": settings.amqp_url.replace(f":{amqp.port}/", f":{relay.port}/")})
    caplog.set_level(logging.WARNING, logger="core.queue_consumer")
    try:
        async with running(relayed) as (worker, _publish):
            await relay.cut()
            await wait_until(lambda: "could not look at" in caplog.text, 40, message="no word of the unanswered looks")
            assert worker.queue in caplog.text
            await relay.open()
            await wait_until(lambda: "answers again" in caplog.text, 40, message="no word of the answer")
    finally:
        await relay.close()


async def test_a_message_settled_after_its_channel_closed_is_redelivered_not_fatal(settings: Settings) -> None:
    # RabbitMQ restarting while the aggregator or the feed handles a batch: the ack that ends the batch
    # finds its channel gone. aiormq raises ChannelInvalidStateError (a RuntimeError), which ended both
    # workers before `settle` took it for what it is.
    connection = await connect_robust(settings)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(settings.amqp_name("settle-closed"))
        await channel.default_exchange.publish(aio_pika.Message(b"once"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        await channel.close()
        await settle(message.ack())  # logged, not raised
        await settle(message.nack(requeue=False))
        again = await (await connection.channel()).get_queue(queue.name)
        redelivered = await again.get(timeout=5)
        assert redelivered.body == b"once" and redelivered.redelivered
        await redelivered.ack()
        await again.delete()
    finally:
        await connection.close()
