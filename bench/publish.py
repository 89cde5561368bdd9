"""`python -m bench publish`: CPU per confirmed, persistent event publish, the platform's publisher
(core/lean_publisher.py) against aio-pika's, which it replaced on the events' path.

Both publish the same events (built beforehand) to the platform's exchange, 500 in flight as the
bridge's outbox does (a fixed set of coroutines, each waiting for its confirm before its next), and
the CPU of this process is read around each run: the publisher is all it does. Each run must leave
every event in both stream queues, which are purged between runs.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika

from bench.harness import private_servers, tree_cpu_seconds
from bench.report import Row
from core.amqp import EventPublisher, declare_topology
from core.messages import Event, EventType
from core.settings import Settings

IN_FLIGHT = 500


@dataclass
class PublishRun:
    publisher: str
    events: int
    seconds: float
    cpu_s: float
    rabbitmq_cpu_s: float
    queued: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_us_each(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class PublishResult:
    runs: list[PublishRun] = field(default_factory=list)


def _events(count: int) -> list[Event]:
    return [
        Event(type=EventType.DEVICE_ONLINE, restaurant_id=f"bench{i:06d}", device_id="tablet",
              data={"epoch": 1, "cause": "birth"})
        for i in range(count)
    ]  # fmt: skip


async def _in_flight(events: list[Event], publish: Callable[[Event], Awaitable[None]]) -> None:
    todo = iter(events)

    async def one_at_a_time() -> None:
        for event in todo:
            async with asyncio.timeout(30):
                await publish(event)

    await asyncio.gather(*(one_at_a_time() for _ in range(IN_FLIGHT)))


async def _queued(settings: Settings, purge: bool) -> dict[str, int]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        out = {}
        for base in (settings.dashboard_queue, settings.aggregator_queue):
            queue = await channel.declare_queue(settings.amqp_name(base), passive=True)
            out[base] = queue.declaration_result.message_count or 0
            if purge:
                await queue.purge()
        return out


async def _aio_pika_run(settings: Settings, events: list[Event], rabbitmq_pid: int) -> PublishRun:
    """The platform's publisher before 2026-11-27: aio-pika's robust connection and channel."""
    connection = await aio_pika.connect_robust(settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await declare_topology(channel, settings)

    async def publish(event: Event) -> None:
        message = aio_pika.Message(event.to_bytes(), content_type="application/json", message_id=event.event_id,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type=event.type.value)  # fmt: skip
        await exchange.publish(message, routing_key="")

    try:
        return await _timed("aio-pika (before)", events, publish, rabbitmq_pid)
    finally:
        await connection.close()


async def _lean_run(settings: Settings, events: list[Event], rabbitmq_pid: int) -> PublishRun:
    publisher = EventPublisher(settings)
    await publisher.open()
    try:
        return await _timed("core/lean_publisher.py", events, publisher.publish, rabbitmq_pid)
    finally:
        await publisher.close()


async def _timed(
    name: str, events: list[Event], publish: Callable[[Event], Awaitable[None]], rabbitmq_pid: int
) -> PublishRun:
    await _in_flight(events[:IN_FLIGHT], publish)  # warm-up, not counted
    measured = events[IN_FLIGHT:]
    cpu, rabbit, wall = time.process_time(), _cpu(rabbitmq_pid), time.perf_counter()
    await _in_flight(measured, publish)
    return PublishRun(name, len(measured), time.perf_counter() - wall, time.process_time() - cpu,
                      _cpu(rabbitmq_pid) - rabbit)  # fmt: skip


def _cpu(pid: int) -> float:
    return tree_cpu_seconds(pid) if pid else 0.0


def publish_benchmark(count: int, keep: bool = False) -> PublishResult:
    result = PublishResult()
    with private_servers("publish", keep) as servers:
        rabbitmq_pid = servers.backends.rabbitmq.signal_pid() or 0
        settings = servers.settings("publish")
        for run in (_aio_pika_run, _lean_run, _aio_pika_run, _lean_run):  # alternated: the machine's pace drifts
            outcome = asyncio.run(run(settings, _events(count + IN_FLIGHT), rabbitmq_pid))
            outcome.queued = asyncio.run(_queued(settings, purge=True))
            result.runs.append(outcome)
    return result


def publish_rows(result: PublishResult) -> list[Row]:
    rows = []
    for run in result.runs:
        queued = " / ".join(f"{n:,}" for n in run.queued.values())
        whole = all(n == run.events + IN_FLIGHT for n in run.queued.values())
        rows.append(Row(
            "publish", f"{run.publisher}: {run.events:,} confirmed persistent events, {IN_FLIGHT} in flight",
            f"{run.cpu_us_each:.0f} µs CPU each; {run.rate:,.0f}/s",
            f"RabbitMQ {run.rabbitmq_cpu_s / run.seconds:.2f} cores; queued {queued}",
            "all queued in both" if whole else "MISSING EVENTS",
        ))  # fmt: skip
    return rows
