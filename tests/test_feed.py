"""The dashboard feed worker on real RabbitMQ, Redis and FerretDB."""

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import aio_pika
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from core.amqp import EventPublisher, dead_letter_name
from core.db import open_mongo
from core.documents import Restaurant
from core.hours import OpeningHours
from core.messages import Event, EventType, utc_now
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status import DerivedStatus, OfflineReason
from core.status_codec import profile_json
from feed.consumer import SEQ_JUMP, FeedConsumer
from feed.documents import DashboardStatus
from feed.regroup import Regrouper
from feed.stream import FeedStream
from stack.platform import settings_env
from tests.helpers import ready_or_raise, wait_until


@asynccontextmanager
async def running_feed(settings: Settings) -> AsyncIterator[FeedConsumer]:
    consumer = FeedConsumer(settings.model_copy(update={"feed_metrics_port": -1}))
    task = asyncio.create_task(consumer.run())
    try:
        await ready_or_raise(task, consumer.ready.is_set, "feed", 20)
        yield consumer
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 30)


def status_event(rid: str, online: bool, at: datetime | None = None, event_id: str | None = None) -> Event:
    at = at or utc_now()
    status = DerivedStatus(
        restaurant_id=rid,
        online=online,
        reason=None if online else OfflineReason.DISCONNECTED,
        since=at,
        devices_connected=1 if online else 0,
    )
    extra = {"event_id": event_id} if event_id else {}
    return Event(type=EventType.STATUS_CHANGED, restaurant_id=rid, ts=at, data=status.model_dump(mode="json"), **extra)


async def put_groups(redis: Redis, settings: Settings, groups: dict[str, str]) -> None:
    """Restaurant profiles in Redis, where the bridge and the API keep them."""
    profiles = {rid: profile_json(group, settings.default_timezone, OpeningHours()) for rid, group in groups.items()}
    await PresenceStore(redis, settings.redis_prefix).put_profiles(profiles)


def child_env(settings: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return inherited | settings_env(settings)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    publisher = EventPublisher(settings)
    await publisher.open()
    try:
        yield {
            "redis": redis,
            "stream": FeedStream(redis, settings.redis_prefix),
            "cache": mongo[settings.mongo_db][DashboardStatus.Settings.name],
            "restaurants": mongo[settings.mongo_db][Restaurant.Settings.name],
            "publisher": publisher,
        }
    finally:
        await publisher.close()
        await mongo.close()
        await redis.aclose()


async def stream_seqs(stream: FeedStream) -> list[tuple[int, str]]:
    return [(e.seq, e.restaurant_id) for e in await stream.read_range(1)]


async def test_statuses_get_increasing_seqs_and_land_in_stream_and_cache(
    settings: Settings, env: dict[str, Any]
) -> None:
    await put_groups(env["redis"], settings, {"r1": "A", "r2": "B"})
    # r3 has no profile in Redis: its group comes from MongoDB.
    await env["restaurants"].insert_one({"_id": "r3", "restaurant_id": "r3", "group": "C"})
    async with running_feed(settings) as feed:
        t0 = utc_now()
        for i, (rid, online) in enumerate([("r1", True), ("r2", False), ("r1", False), ("r3", True)]):
            await env["publisher"].publish(status_event(rid, online, t0 + timedelta(seconds=i)))
        await wait_until(lambda: feed.metrics.value("sequenced") == 4, message="4 sequenced")
        entries = await env["stream"].read_range(1)
        assert [(e.seq, e.restaurant_id, e.group) for e in entries] == [
            (1, "r1", "A"), (2, "r2", "B"), (3, "r1", "A"), (4, "r3", "C")
        ]  # fmt: skip
        fed = json.loads(entries[2].status_json)
        assert (fed["restaurant_id"], fed["group"], fed["online"], fed["reason"]) == ("r1", "A", False, "DISCONNECTED")
        assert await env["stream"].current_seq() == 4
        docs = {d["_id"]: d async for d in env["cache"].find({})}
        assert {rid: (d["seq"], d["group"], d["status"]["online"]) for rid, d in docs.items()} == {
            "r1": (3, "A", False), "r2": (2, "B", False), "r3": (4, "C", True)
        }  # fmt: skip


async def test_a_status_sequenced_after_a_move_names_the_new_group_whatever_the_worker_read(
    settings: Settings, env: dict[str, Any]
) -> None:
    # The worker reads a batch's groups from the profiles, then appends. A STATUS_CHANGED whose group it
    # read just before the API moved the restaurant, appended just after the move's entry, used to take
    # the tile back to the old group until the restaurant's next status.
    await put_groups(env["redis"], settings, {"r-move": "A"})
    store = PresenceStore(env["redis"], settings.redis_prefix)
    async with running_feed(settings) as feed:
        t0 = utc_now()
        await env["publisher"].publish(status_event("r-move", True, t0))
        await wait_until(lambda: feed.metrics.value("sequenced") == 1, message="first status")
        await store.redis.hset(store.key("r-move"), "s", json.dumps(status_event("r-move", True, t0).data))
        # The move, as the feed worker could still have the profile: the profile itself still says A.
        mongo = await open_mongo(settings)  # Beanie, as in the API
        try:
            assert await Regrouper(store, settings).moved("r-move", "A", "B") == 2
        finally:
            await mongo.close()
        await env["publisher"].publish(status_event("r-move", False, t0 + timedelta(seconds=1)))
        await wait_until(lambda: feed.metrics.value("sequenced") == 2, message="second status")
        entries = await env["stream"].read_range(1)
        assert [(e.seq, e.group, e.left_group) for e in entries] == [(1, "A", None), (2, "B", "A"), (3, "B", None)]
        fed = json.loads(entries[2].status_json)
        assert (fed["group"], fed["online"], fed["reason"]) == ("B", False, "DISCONNECTED")
        doc = await env["cache"].find_one({"_id": "r-move"})
        assert doc is not None and (doc["seq"], doc["group"]) == (3, "B")
        # Once the move's hold has passed, the profile names the group again.
        await env["redis"].delete(FeedStream(env["redis"], settings.redis_prefix).keys.moved("r-move"))
        await env["publisher"].publish(status_event("r-move", True, t0 + timedelta(seconds=2)))
        await wait_until(lambda: feed.metrics.value("sequenced") == 3, message="third status")
        assert (await env["stream"].read_range(4))[0].group == "A"


async def test_a_status_sequenced_between_the_moves_read_and_its_append_is_appended_again(
    settings: Settings, env: dict[str, Any]
) -> None:
    # The move reads the committed status, then appends it: a status committed and sequenced in between
    # used to be followed by the older one, on every dashboard, until the restaurant's next status.
    await put_groups(env["redis"], settings, {"r-race": "A"})
    store = PresenceStore(env["redis"], settings.redis_prefix)
    t0 = utc_now()
    first, second = status_event("r-race", True, t0), status_event("r-race", False, t0 + timedelta(seconds=1))
    async with running_feed(settings) as feed:
        await env["publisher"].publish(first)
        await wait_until(lambda: feed.metrics.value("sequenced") == 1, message="first status")
        await store.redis.hset(store.key("r-race"), "s", json.dumps(first.data))
        regrouper = Regrouper(store, settings)
        append = regrouper._append

        async def a_status_lands_in_between(*args: Any, **kwargs: Any) -> Any:
            if feed.metrics.value("sequenced") == 1:
                await store.redis.hset(store.key("r-race"), "s", json.dumps(second.data))
                await env["publisher"].publish(second)
                await wait_until(lambda: feed.metrics.value("sequenced") == 2, message="second status")
            return await append(*args, **kwargs)

        regrouper._append = a_status_lands_in_between  # type: ignore[assignment]
        mongo = await open_mongo(settings)  # Beanie, as in the API
        try:
            assert await regrouper.moved("r-race", "A", "B") == 4
        finally:
            await mongo.close()
        entries = await env["stream"].read_range(1)
        assert [(e.seq, e.group, e.left_group, json.loads(e.status_json)["online"]) for e in entries] == [
            (1, "A", None, True), (2, "A", None, False), (3, "B", "A", True), (4, "B", "A", False)
        ]  # fmt: skip
        doc = await env["cache"].find_one({"_id": "r-race"})
        assert doc is not None and (doc["group"], doc["status"]["online"]) == ("B", False)


async def test_redelivered_event_gets_no_second_seq_and_older_status_is_not_fed(
    settings: Settings, env: dict[str, Any]
) -> None:
    await put_groups(env["redis"], settings, {"r1": "A"})
    async with running_feed(settings) as feed:
        t0 = utc_now()
        first = status_event("r1", True, t0)
        await env["publisher"].publish(first)
        await env["publisher"].publish(first)  # the bridge republishing its outbox after a crash
        await env["publisher"].publish(status_event("r1", False, t0 + timedelta(seconds=2)))
        # Arrives late: derived before the one just fed, so neither stream nor cache take it.
        await env["publisher"].publish(status_event("r1", True, t0 + timedelta(seconds=1)))
        await wait_until(
            lambda: feed.metrics.value("duplicate") == 1 and feed.metrics.value("stale") == 1, message="outcomes"
        )
        assert await stream_seqs(env["stream"]) == [(1, "r1"), (2, "r1")]
        doc = await env["cache"].find_one({"_id": "r1"})
        assert (doc["seq"], doc["status"]["online"]) == (2, False)
    # A worker restarted on the same Redis recognises the event too.
    async with running_feed(settings) as feed:
        await env["publisher"].publish(first)
        await wait_until(lambda: feed.metrics.value("duplicate") == 1, message="duplicate after restart")
        assert feed.metrics.value("sequenced") == 0
        assert await env["stream"].current_seq() == 2


async def test_poison_is_dead_lettered_and_the_next_is_processed(settings: Settings, env: dict[str, Any]) -> None:
    await put_groups(env["redis"], settings, {"r1": "A"})
    bad_status = status_event("r1", True).model_copy(update={"data": {"online": "maybe"}})
    other_rid = status_event("r1", True).model_copy(update={"data": status_event("r2", True).data})
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_feed(settings) as feed:
        # Confirmed one by one, so queued ahead of the good events published after them.
        exchange = await (await connection.channel()).get_exchange(settings.exchange)
        for body in (b"not json", bad_status.to_bytes(), other_rid.to_bytes()):
            await exchange.publish(aio_pika.Message(body), routing_key="")
        await env["publisher"].publish(Event(type=EventType.DEVICE_ONLINE, restaurant_id="r1", device_id="t"))
        await env["publisher"].publish(status_event("r1", False))
        await wait_until(lambda: feed.metrics.value("sequenced") == 1, message="the good one fed")
        assert feed.metrics.value("dead_lettered") == 3
        assert feed.metrics.value("ignored") == 1
        assert await stream_seqs(env["stream"]) == [(1, "r1")]

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(dead_letter_name(settings.amqp_name(settings.dashboard_queue)), durable=True)
        bodies: list[bytes] = []

        async def drained() -> bool:
            message = await dlq.get(no_ack=True, fail=False)
            if message is not None:
                bodies.append(message.body)
            return len(bodies) == 3

        await wait_until(drained, message="3 messages in the DLQ")
        assert bodies[0] == b"not json"


async def test_counter_lost_with_redis_restarts_above_the_cache(settings: Settings, env: dict[str, Any]) -> None:
    await put_groups(env["redis"], settings, {"r1": "A"})
    async with running_feed(settings) as feed:
        await env["publisher"].publish(status_event("r1", True))
        await wait_until(lambda: feed.metrics.value("sequenced") == 1, message="first fed")
        keys = env["stream"].keys
        await env["redis"].delete(keys.seq, keys.stream, keys.latest)  # Redis restarted empty
        await env["publisher"].publish(status_event("r1", False))
        await wait_until(lambda: feed.metrics.value("sequenced") == 2, message="fed after the loss")
        assert await stream_seqs(env["stream"]) == [(1 + SEQ_JUMP + 1, "r1")]
        doc = await env["cache"].find_one({"_id": "r1"})
        assert (doc["seq"], doc["status"]["online"]) == (SEQ_JUMP + 2, False)


async def test_python_m_feed_consumes_and_drains_on_sigterm(settings: Settings, env: dict[str, Any]) -> None:
    await put_groups(env["redis"], settings, {"r1": "A"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "feed",
        env=child_env(settings.model_copy(update={"feed_metrics_port": 0})),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await process.stderr.readline()  # type: ignore[union-attr]
            assert line, f"feed exited before logging {text!r}: {lines}"
            lines.append(line.decode())

    try:
        await asyncio.wait_for(read_until("feed consuming"), 30)
        await env["publisher"].publish(status_event("r1", True))
        await wait_until(env["stream"].current_seq, message="fed by the child process")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_until("feed stopped"), 20)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
