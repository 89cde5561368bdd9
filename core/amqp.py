"""RabbitMQ topology and confirmed publishing of platform events (DESIGN.md §4)."""

import logging

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from core.lean_publisher import LeanPublisher
from core.messages import Event
from core.settings import Settings

logger = logging.getLogger(__name__)

# aio-pika's robust connection waits 5 s between attempts by default: after a RabbitMQ restart the
# scheduler then sat on its due boundaries for up to 5 s more. One second is cheap on loopback and LAN.
RECONNECT_INTERVAL_S = 1.0

# A publish that failed because RabbitMQ is away or the robust channel is being reopened: aio-pika's
# own list (AMQP errors, OSError and so TimeoutError, RuntimeError of a closed connection).
PUBLISH_OUTAGES = aio_pika.exceptions.CONNECTION_EXCEPTIONS


async def connect_robust(settings: Settings) -> AbstractRobustConnection:
    """A robust connection to the platform's RabbitMQ: it reconnects by itself, every second."""
    return await aio_pika.connect_robust(settings.amqp_url, reconnect_interval=RECONNECT_INTERVAL_S)


def dead_letter_name(queue: str) -> str:
    return f"{queue}.DLQ"


async def declare_topology(channel: AbstractChannel, settings: Settings) -> AbstractExchange:
    """Exchange, the two stream queues with their dead-letter queues, and the MQTT dead letters."""
    exchange = await channel.declare_exchange(
        settings.exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    for base in (settings.dashboard_queue, settings.aggregator_queue):
        name = settings.amqp_name(base)
        await channel.declare_queue(dead_letter_name(name), durable=True)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_name(name)},
        )
        await queue.bind(exchange)
    await channel.declare_queue(settings.amqp_name(settings.mqtt_dead_letter_queue), durable=True)
    return exchange


class EventPublisher:
    """Persistent messages with publisher confirms: `publish` returns once RabbitMQ has the event.

    Events go over a connection of their own (core/lean_publisher.py: aio-pika cost ~500 µs of CPU per
    confirmed publish here); the topology and the dead letters over aio-pika's robust connection, which
    also declares the topology again after RabbitMQ comes back empty.
    """

    def __init__(self, settings: Settings, confirm_timeout_s: float | None = None) -> None:
        """`confirm_timeout_s`: a publish whose confirm is not back by then fails with a `TimeoutError`."""
        self.settings = settings
        self.confirm_timeout_s = confirm_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._events: LeanPublisher | None = None

    async def open(self) -> None:
        self._connection = await connect_robust(self.settings)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await declare_topology(self._channel, self.settings)
        self._events = LeanPublisher(self.settings.amqp_url, self.settings.exchange, retry_after_s=RECONNECT_INTERVAL_S,
                                     confirm_timeout_s=self.confirm_timeout_s)  # fmt: skip
        await self._events.connect()

    async def close(self) -> None:
        if self._events is not None:
            # Kept: a publish after close is refused as an outage, as one to a RabbitMQ gone away.
            await self._events.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, event: Event) -> None:
        assert self._events is not None, "open() first"
        await self._events.publish(event.to_bytes(), event.event_id, event.type.value)

    async def dead_letter(self, body: bytes, headers: dict[str, str]) -> None:
        """Keep a message the bridge could not use, byte for byte, with why."""
        assert self._channel is not None, "open() first"
        await self._channel.default_exchange.publish(
            aio_pika.Message(body, headers=dict(headers), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self.settings.amqp_name(self.settings.mqtt_dead_letter_queue),
        )
