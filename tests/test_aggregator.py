"""The aggregator against real RabbitMQ and FerretDB: STATUS_CHANGED events become the history.

Events are built from core.status DerivedStatus as StatusService publishes them, and published to the
platform's exchange. Each test has its own queue names and database (the `settings` fixture).
"""

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aio_pika
import pytest

from aggregator.worker import Aggregator
from core.amqp import EventPublisher, dead_letter_name
from core.db import open_mongo
from core.documents import Restaurant
from core.history_documents import HistoryDay, HistoryHead, OngoingOffline
from core.history_store import restaurant_timeline
from core.messages import Event, EventType
from core.offline_ranking import offline_ranking
from core.settings import Settings
from core.status import DerivedStatus, OfflineReason
from core.timeline import Point, disconnected_seconds_by_day, intervals
from stack.platform import settings_env
from tests.helpers import ready_or_raise, wait_until

D = OfflineReason.DISCONNECTED


def status_event(
    rid: str, at: datetime, online: bool, reason: OfflineReason | None = None, detail: str | None = None, **kw: Any
) -> Event:
    status = DerivedStatus(restaurant_id=rid, online=online, reason=reason, detail=detail, since=at)
    return Event(type=EventType.STATUS_CHANGED, restaurant_id=rid, data=status.model_dump(mode="json"), **kw)


async def add_restaurant(
    rid: str, timezone: str = "UTC", group: str = "A", created_at: datetime = datetime(2020, 1, 1, tzinfo=UTC)
) -> None:
    await Restaurant(
        restaurant_id=rid, secret_hash="-", mqtt_hash="-", timezone=timezone, group=group, created_at=created_at
    ).insert()


@contextlib.asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[Aggregator]:
    aggregator = Aggregator(settings.model_copy(update={"aggregator_metrics_port": -1, **overrides}))
    task = asyncio.create_task(aggregator.run())
    await ready_or_raise(task, aggregator.ready.is_set, "aggregator", 30)
    try:
        yield aggregator
    finally:
        aggregator.request_stop()
        await asyncio.wait_for(task, 60)


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[None]:
    client = await open_mongo(settings)
    yield
    await client.close()


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    pub = EventPublisher(settings)
    await pub.open()
    yield pub
    await pub.close()


async def queue_depth(settings: Settings, name: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


def at(day: str, hhmm: str, tz: str = "+00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00{tz}").astimezone(UTC)


async def test_status_changes_become_timeline_intervals(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    await add_restaurant("r1")
    t0, t1, t2 = at("2026-11-20", "10:00"), at("2026-11-20", "12:00"), at("2026-11-20", "12:30")
    async with running(settings) as aggregator:
        for when, online, reason in ((t0, True, None), (t1, False, D), (t2, True, None)):
            await publisher.publish(status_event("r1", when, online, reason))
        await wait_until(lambda: aggregator.metrics.value("applied") == 3, message="3 events applied")
        now = t2 + timedelta(hours=1)
        timeline = await restaurant_timeline("r1", t0 - timedelta(hours=2), now + timedelta(hours=5), now, "UTC")
        day = await HistoryDay.get("r1|2026-11-20")
    assert [(i.start, i.end, i.online, i.reason) for i in timeline] == [
        (t0, t1, True, None),  # nothing known before the first point: the timeline starts there
        (t1, t2, False, D),
        (t2, now, True, None),  # the open interval ends at "now"
    ]
    assert day is not None and day.offline_ms == 30 * 60 * 1000


async def test_same_event_twice_changes_nothing(settings: Settings, mongo: None, publisher: EventPublisher) -> None:
    await add_restaurant("r2")
    event = status_event("r2", at("2026-11-20", "09:00"), False, D)
    async with running(settings) as aggregator:
        await publisher.publish(event)
        await wait_until(lambda: aggregator.metrics.value("applied") == 1)
        first = [d.model_dump() for d in await HistoryDay.find_all().to_list()]
        head = await HistoryHead.get("r2")
        await publisher.publish(event)
        await wait_until(lambda: aggregator.metrics.value("duplicate") == 1, message="the redelivery seen")
        assert [d.model_dump() for d in await HistoryDay.find_all().to_list()] == first
        assert await HistoryHead.get("r2") == head
        ongoing = await OngoingOffline.get("r2")
    assert aggregator.metrics.value("applied") == 1
    assert ongoing is not None and ongoing.since == at("2026-11-20", "09:00") and ongoing.group == "A"


async def test_out_of_order_arrival_gives_the_same_history(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    tz = "Europe/Berlin"  # a daylight-saving change (2026-10-25) inside the span
    start = at("2026-10-24", "06:00")
    rng = random.Random(7)
    reasons = [(True, None, None), (False, D, None), (False, OfflineReason.CLOSED, None),
               (False, OfflineReason.UNAVAILABLE, "HOLIDAY")]  # fmt: skip
    points = []
    when = start
    for n in range(14):
        points.append((when, *reasons[n % len(reasons)]))
        when += timedelta(minutes=rng.randint(30, 600))
    shuffled = points[:] + points[3:5]  # and two of them delivered twice
    rng.shuffle(shuffled)
    for rid in ("in-order", "shuffled"):
        await add_restaurant(rid, timezone=tz)
    async with running(settings, aggregator_batch_max=3) as aggregator:
        for rid, sequence in (("in-order", points), ("shuffled", shuffled)):
            for when, online, reason, detail in sequence:
                await publisher.publish(status_event(rid, when, online, reason, detail))
        await wait_until(lambda: aggregator.metrics.value("applied") + aggregator.metrics.value("duplicate") == 30)
        now = when + timedelta(hours=3)
        span = (start - timedelta(hours=1), now)
        a = await restaurant_timeline("in-order", *span, now, tz)
        b = await restaurant_timeline("shuffled", *span, now, tz)
        days = {rid: {d.id.split("|")[1]: d.offline_ms for d in await HistoryDay.find_all().to_list()
                      if d.id.startswith(rid)} for rid in ("in-order", "shuffled")}  # fmt: skip
        ranking = await offline_ranking(date(2026, 10, 24), date(2026, 10, 31), now)
    assert a == b
    expected_timeline = intervals([Point(w, DerivedStatus(restaurant_id="x", online=o, reason=r, detail=d).core)
                                   for w, o, r, d in points], *span, now)  # fmt: skip
    assert a == expected_timeline
    # Closed intervals end at the last point; the last one is DISCONNECTED and still open: the ranking
    # adds it up to now, the day documents do not.
    last = points[-1][0]
    assert points[-1][2] is D
    expected_days = disconnected_seconds_by_day(intervals([Point(i.start, i.core) for i in a], start, last, last), tz)
    assert days["in-order"] == days["shuffled"]
    assert {d: ms for d, ms in days["in-order"].items() if ms} == {
        d.isoformat(): round(s * 1000) for d, s in expected_days.items()
    }
    total = sum(expected_days.values()) + (now - last).total_seconds()
    assert {r.restaurant_id: r.offline_seconds for r in ranking} == {"in-order": total, "shuffled": total}


async def test_disconnected_across_local_midnight_counts_on_each_local_day(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    tz = "America/Sao_Paulo"  # UTC-3: local 22:00 is 01:00 UTC of the next day
    await add_restaurant("sp", timezone=tz)
    async with running(settings) as aggregator:
        await publisher.publish(status_event("sp", at("2026-11-20", "20:00", "-03:00"), True))
        await publisher.publish(status_event("sp", at("2026-11-20", "22:00", "-03:00"), False, D))
        await publisher.publish(status_event("sp", at("2026-11-21", "02:30", "-03:00"), True))
        await wait_until(lambda: aggregator.metrics.value("applied") == 3)
        days = {d.id: d.offline_ms for d in await HistoryDay.find_all().to_list()}
        now = datetime.now(UTC)
        first_day = await offline_ranking(date(2026, 11, 20), date(2026, 11, 20), now)
        second_day = await offline_ranking(date(2026, 11, 21), date(2026, 11, 21), now)
        both = await offline_ranking(date(2026, 11, 20), date(2026, 11, 21), now)
    assert days == {"sp|2026-11-20": 2 * 3600_000, "sp|2026-11-21": int(2.5 * 3600_000)}
    assert [r.offline_seconds for r in (*first_day, *second_day, *both)] == [7200.0, 9000.0, 16200.0]


async def test_nothing_is_counted_before_the_restaurant_was_created(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    # Created at 15:00 and never connected: its first status says "disconnected since 10:00" (the
    # opening), but the hours before it existed are nobody's downtime.
    created = at("2026-11-20", "15:00")
    await add_restaurant("new", created_at=created)
    async with running(settings) as aggregator:
        await publisher.publish(status_event("new", at("2026-11-20", "10:00"), False, D))
        await publisher.publish(status_event("new", at("2026-11-20", "16:30"), True))
        await wait_until(lambda: aggregator.metrics.value("applied") == 2)
        now = at("2026-11-20", "18:00")
        timeline = await restaurant_timeline("new", at("2026-11-20", "00:00"), now, now, "UTC")
        ranking = await offline_ranking(date(2026, 11, 20), date(2026, 11, 20), now)
    assert [(i.start, i.end, i.reason) for i in timeline] == [
        (created, at("2026-11-20", "16:30"), D),
        (at("2026-11-20", "16:30"), now, None),
    ]
    assert [(r.restaurant_id, r.offline_seconds) for r in ranking] == [("new", 5400.0)]


async def test_poison_messages_are_dead_lettered_and_the_next_is_processed(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    await add_restaurant("ok")
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running(settings) as aggregator:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.exchange)
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key="")
        bad = Event(type=EventType.STATUS_CHANGED, restaurant_id="ok", data={"online": "perhaps"})
        await exchange.publish(aio_pika.Message(bad.to_bytes()), routing_key="")
        await publisher.publish(status_event("nobody", at("2026-11-20", "10:00"), True))  # never provisioned
        await publisher.publish(Event(type=EventType.DEVICE_ONLINE, restaurant_id="ok", device_id="tablet"))
        await publisher.publish(status_event("ok", at("2026-11-20", "10:00"), True))
        await wait_until(lambda: aggregator.metrics.value("applied") == 1, message="the good one applied")
        assert aggregator.metrics.value("dead_lettered") == 3
        assert aggregator.metrics.value("ignored") == 1
    dlq = dead_letter_name(settings.amqp_name(settings.aggregator_queue))
    assert await queue_depth(settings, dlq) == 3
    assert await queue_depth(settings, settings.amqp_name(settings.aggregator_queue)) == 0


def retries(aggregator: Aggregator) -> float:
    return aggregator.metrics.registry.get_sample_value("aggregator_batch_retries_total") or 0.0


class Proxy:
    """A TCP relay to FerretDB that can be cut: MongoDB "away" for the aggregator, for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.difference_update((writer, up_writer))


async def test_a_failed_write_is_not_acknowledged(
    settings: Settings, stack: Any, mongo: None, publisher: EventPublisher
) -> None:
    await add_restaurant("away")
    proxy = Proxy(int(stack.mongo_url.rsplit(":", 1)[1]))
    await proxy.start()
    queue = settings.amqp_name(settings.aggregator_queue)
    try:
        async with running(settings, mongo_url=f"mongodb://127.0.0.1:{proxy.port}") as aggregator:
            await publisher.publish(status_event("away", at("2026-11-20", "10:00"), True))
            await wait_until(lambda: aggregator.metrics.value("applied") == 1)
            await proxy.cut()
            await publisher.publish(status_event("away", at("2026-11-20", "11:00"), False, D))
            await wait_until(lambda: retries(aggregator) >= 1, timeout=30, message="a retry")
            assert aggregator.metrics.value("applied") == 1
        # Stopped while MongoDB was away: the event went back to the queue, unacknowledged.
        assert await queue_depth(settings, queue) == 1
    finally:
        with contextlib.suppress(Exception):
            await proxy.cut()
    client = await open_mongo(settings)  # Beanie was bound to the stopped aggregator's client
    try:
        async with running(settings) as aggregator:
            await wait_until(lambda: aggregator.metrics.value("applied") == 1, message="redelivered and applied")
            head = await HistoryHead.get("away")
        assert head is not None and head.at == at("2026-11-20", "11:00") and head.status[1] == "DISCONNECTED"
        assert await queue_depth(settings, queue) == 0
    finally:
        await client.close()



async def test_a_second_aggregator_stands_by_and_takes_over(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    await add_restaurant("one")
    second = Aggregator(settings.model_copy(update={"aggregator_metrics_port": -1}))

    def standing_by() -> bool:
        return second.metrics.registry.get_sample_value("aggregator_standby") == 1
    async with running(settings) as first:
        standby = asyncio.create_task(second.run())
        try:
            await wait_until(standing_by, message="the second never stood by")
            await publisher.publish(status_event("one", at("2026-11-20", "10:00"), True))
            await wait_until(lambda: first.metrics.value("applied") == 1)
            assert not second.ready.is_set() and second.metrics.value("applied") == 0  # only one writes
        except BaseException:
            second.request_stop()
            await standby
            raise
    # The first is gone: the second takes the queue and writes what follows.
    try:
        await wait_until(lambda: second.ready.is_set(), timeout=30, message="the standby never took over")
        await publisher.publish(status_event("one", at("2026-11-20", "11:00"), False, D))
        await wait_until(lambda: second.metrics.value("applied") == 1, message="the standby did not write")
    finally:
        second.request_stop()
        await asyncio.wait_for(standby, 60)
    assert not standing_by()


async def test_python_m_aggregator_writes_and_drains_on_sigterm(
    settings: Settings, mongo: None, publisher: EventPublisher
) -> None:
    await add_restaurant("child")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator",
        env=inherited | settings_env(settings.model_copy(update={"aggregator_metrics_port": 0})),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await process.stderr.readline()  # type: ignore[union-attr]
            assert line, f"the aggregator exited before logging {text!r}: {lines}"
            lines.append(line.decode())

    try:
        await asyncio.wait_for(read_until("aggregator consuming"), 30)
        await publisher.publish(status_event("child", at("2026-11-20", "10:00"), False, D))
        await wait_until(lambda: OngoingOffline.get("child"), message="written by the child process")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_until("aggregator stopped"), 20)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert any("'applied': 1" in line for line in lines), lines
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
