"""The scheduler on real Redis, RabbitMQ, FerretDB and Mosquitto/amqtt: clock boundaries → one STATUS_CHANGED each."""

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from core.amqp import EventPublisher
from core.clock_queue import ClockQueue
from core.db import open_mongo
from core.documents import Restaurant, UnavailabilityLog, UnavailabilityRecord
from core.horizons import STALE_MS as HORIZON_STALE_MS
from core.horizons import Horizons
from core.hours import OpeningHours
from core.ids import status_topic
from core.messages import DeviceState, Event, EventType, utc_now
from core.presence_store import PresenceStore, RestaurantSnapshot, now_ms, outbox_field
from core.profiles import load_profiles, restaurant_profile
from core.settings import Settings
from core.state_marker import StateMarker
from core.status import DerivedStatus, Unavailability, UnavailabilityReason
from core.status_codec import profile_json
from core.status_service import Settled, StatusService
from core.unannounced import unannounced
from scheduler.leader import LeaderLock
from scheduler.metrics import SchedulerMetrics
from scheduler.retry import Retrier
from scheduler.status_publisher import StatusPublisher
from scheduler.worker import Scheduler
from tests.devices import ALWAYS_OPEN, EventTap, StatusWatcher, make_restaurant, outbox_empty, settle_time
from tests.helpers import ready_or_raise, wait_until
from tests.tcp_cut import CuttableRelay

FAST = {
    "scheduler_leader_ttl_s": 2.0,
    "scheduler_safety_interval_s": 1.0,
    "scheduler_lease_s": 5.0,
    "scheduler_metrics_port": -1,
}


def unique(name: str) -> str:
    # Mosquitto outlives a test and keeps retained statuses: ids unique to this run keep tests apart.
    return f"{name}-{uuid.uuid4().hex[:8]}"


def whole_ms(at: datetime) -> datetime:
    """MongoDB keeps milliseconds: a time with microseconds would come back different from the rebuild."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    fast = settings.model_copy(update=FAST)
    mongo = await open_mongo(fast)
    redis = Redis.from_url(fast.redis_url, decode_responses=True)
    store = PresenceStore(redis, fast.redis_prefix)
    async with EventTap(fast) as tap:
        yield {"settings": fast, "tap": tap, "store": store, "clock": ClockQueue(redis, fast.redis_prefix),
               "service": StatusService(store, timedelta(seconds=fast.stale_after_s))}  # fmt: skip
    await redis.aclose()
    await mongo.close()


@asynccontextmanager
async def running(settings: Settings, instance: str | None = None) -> AsyncIterator[Scheduler]:
    """A scheduler that leads and has rebuilt once (or a follower, if another one leads)."""
    scheduler = Scheduler(settings, instance)
    task = asyncio.create_task(scheduler.run())
    try:
        await ready_or_raise(task, scheduler.rebuilt.is_set, "scheduler", 30)
        yield scheduler
    finally:
        scheduler.request_stop()
        await asyncio.wait_for(task, 30)


async def add_unavailability(env: dict[str, Any], rid: str, start: datetime, end: datetime) -> None:
    """What the API does: MongoDB first, then the Redis profile, then the restaurant marked due."""
    log = await UnavailabilityLog.get(rid) or UnavailabilityLog(id=rid)
    log.items.append(
        UnavailabilityRecord(id=uuid.uuid4().hex, reason=UnavailabilityReason.HOLIDAY, start=start, end=end)
    )
    await log.save()
    doc = await Restaurant.get(rid)
    assert doc is not None
    await env["store"].set_profiles({rid: restaurant_profile(doc, log)})
    await env["clock"].mark_now([rid])


def reasons(events: list[dict[str, Any]]) -> list[str | None]:
    return [e["data"]["reason"] for e in events]


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def since(event: dict[str, Any]) -> datetime:
    return parse(event["data"]["since"])


def assert_once_on_both_queues(env: dict[str, Any], rid: str, expected: list[str | None]) -> None:
    settings, tap = env["settings"], env["tap"]
    for queue in (settings.dashboard_queue, settings.aggregator_queue):
        events = tap.of(rid, "STATUS_CHANGED", queue)
        assert reasons(events) == expected, queue
        assert len({e["event_id"] for e in events}) == len(events), queue


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
async def test_unavailability_boundaries_give_one_status_change_each(
    broker: str, env: dict[str, Any], stack: Any
) -> None:
    url = stack.mosquitto_url if broker == "mosquitto" else stack.amqtt_url
    settings = env["settings"].model_copy(update={"mqtt_brokers": [url]})
    rid = unique("s-bound")
    await make_restaurant(settings, stack, rid)
    with StatusWatcher(url, settings, rid) as watcher:
        async with running(settings):
            first = await env["tap"].wait_for(rid, "STATUS_CHANGED")
            assert reasons(first) == ["DISCONNECTED"]  # open around the clock, no device
            start = whole_ms(utc_now() + timedelta(seconds=2))
            end = start + timedelta(seconds=2)
            await add_unavailability(env, rid, start, end)
            changed = await env["tap"].wait_for(rid, "STATUS_CHANGED", 3, timeout=30)
            assert reasons(changed) == ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"]
            assert changed[1]["data"]["detail"] == "HOLIDAY"
            # `since` is the boundary itself, and nothing was announced before it.
            assert since(changed[1]) == start and datetime.fromisoformat(changed[1]["ts"]) >= start
            assert since(changed[2]) == end and datetime.fromisoformat(changed[2]["ts"]) >= end
            await wait_until(lambda: (s := watcher.last()) is not None and parse(s["since"]) == end, 10,
                             message="retained status after the end")  # fmt: skip
            await wait_until(lambda: outbox_empty(env["store"], rid), 10, message="outbox never cleared")
            await settle_time(0.5)
            assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"])
    assert [s["reason"] for _, s in watcher.received if s["reason"] == "UNAVAILABLE"] == ["UNAVAILABLE"]
    with StatusWatcher(url, settings, rid) as late:  # the broker keeps the last one for whoever comes next
        await wait_until(lambda: late.received, 10, message="no retained status")
        retained, status = late.received[0]
        assert retained and status["reason"] == "DISCONNECTED" and parse(status["since"]) == end


async def test_boundaries_are_committed_on_time_while_rabbitmq_is_away(env: dict[str, Any], stack: Any) -> None:
    # The scheduler used to wait for RabbitMQ with the drain: every boundary due meanwhile stayed
    # uncommitted until it came back, and a heartbeat settled in that gap took the boundary's place.
    amqp = urlsplit(env["settings"].amqp_url)
    relay = CuttableRelay(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await relay.open()
    settings = env["settings"].model_copy(
        update={"amqp_url": env["settings"].amqp_url.replace(f":{amqp.port}/", f":{relay.port}/")}
    )
    rid = unique("s-away")
    await make_restaurant(settings, stack, rid)
    try:
        with StatusWatcher(stack.mosquitto_url, settings, rid) as watcher:
            async with running(settings) as scheduler:
                await env["tap"].wait_for(rid, "STATUS_CHANGED")
                # Its confirm too: the tap can hear the event before the scheduler's confirm comes back, and a
                # cut that dropped the confirm left the event held, so it was published again after the cut
                # (same event_id, harmless to the consumers; seen once here as a second DISCONNECTED).
                await wait_until(lambda: outbox_empty(env["store"], rid), 10, message="first event never confirmed")
                await relay.cut()
                start = whole_ms(utc_now() + timedelta(seconds=1.5))
                end = start + timedelta(seconds=1.5)
                await add_unavailability(env, rid, start, end)

                async def committed_end() -> bool:
                    last = (await env["store"].snapshot(rid)).last_status
                    return last is not None and last.reason is not None and last.since == end

                await wait_until(committed_end, 10, message="end boundary not committed while RabbitMQ was away")
                assert scheduler.publisher.held == {rid}
                await wait_until(lambda: (s := watcher.last()) is not None and parse(s["since"]) == end, 10,
                                 message="the devices did not get the status while RabbitMQ was away")  # fmt: skip
                assert len(env["tap"].of(rid, "STATUS_CHANGED", settings.dashboard_queue)) == 1
                await relay.open()
                changed = await env["tap"].wait_for(rid, "STATUS_CHANGED", 3, timeout=30)
                assert reasons(changed) == ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"]
                assert since(changed[1]) == start and since(changed[2]) == end
                await wait_until(lambda: not scheduler.publisher.held, 10, message="still held")
                await wait_until(lambda: outbox_empty(env["store"], rid), 10, message="outbox never cleared")
                await settle_time(0.5)
                assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"])
    finally:
        await relay.close()


async def test_boundary_missed_while_stopped_is_announced_once_after_restart(env: dict[str, Any], stack: Any) -> None:
    settings = env["settings"]
    rid = unique("s-missed")
    await make_restaurant(settings, stack, rid)
    async with running(settings):
        await env["tap"].wait_for(rid, "STATUS_CHANGED")
    mongo = await open_mongo(settings)  # the stopped scheduler closed the client Beanie was bound to
    start = whole_ms(utc_now() + timedelta(seconds=1))
    await add_unavailability(env, rid, start, start + timedelta(hours=1))
    await wait_until(lambda: utc_now() > start + timedelta(milliseconds=200), 10)
    async with running(settings):
        changed = await env["tap"].wait_for(rid, "STATUS_CHANGED", 2)
        assert reasons(changed) == ["DISCONNECTED", "UNAVAILABLE"] and since(changed[1]) == start
        await wait_until(lambda: outbox_empty(env["store"], rid), 10, message="outbox never cleared")
    async with running(settings):  # nothing new: a second restart settles the same status again, silently
        await settle_time(0.5)
    assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE"])
    await mongo.close()


async def test_rebuild_does_not_undo_a_change_made_after_its_scan(env: dict[str, Any], stack: Any) -> None:
    settings, store = env["settings"], env["store"]
    rid = unique("s-rescan")
    await make_restaurant(settings, stack, rid, group="B")  # an admin's change, in MongoDB ...
    [current] = (await load_profiles([rid])).values()
    await store.set_profiles({rid: current})  # ... and in Redis, as the API writes it
    scanned_before = profile_json("A", "America/Sao_Paulo", ALWAYS_OPEN)  # the rebuild's scan read it earlier
    async with running(settings) as scheduler:
        await scheduler.rebuilder._apply({rid: scanned_before})
        snap = await store.snapshot(rid)
        assert snap.group == "B", "the rebuild wrote back what its scan had read before the change"
        assert await store.redis.hget(store.key(rid), "p") == current


async def test_outbox_left_by_a_crashed_scheduler_is_published_once(env: dict[str, Any], stack: Any) -> None:
    settings, store = env["settings"], env["store"]
    rid = unique("s-crash")
    await make_restaurant(settings, stack, rid)
    await store.put_profiles(await load_profiles([rid]))
    # Committed, then the scheduler died before RabbitMQ and the broker had it: only Redis knows.
    settled = await env["service"].settle(rid)
    assert settled is not None
    with StatusWatcher(stack.mosquitto_url, settings, rid) as watcher:
        async with running(settings):
            changed = await env["tap"].wait_for(rid, "STATUS_CHANGED")
            assert changed[0]["event_id"] == settled.event.event_id
            await wait_until(lambda: watcher.last() == json.loads(settled.status_json), 10, message="retained")
            await wait_until(lambda: outbox_empty(store, rid), 10, message="outbox never cleared")
            await settle_time(0.5)
    assert_once_on_both_queues(env, rid, ["DISCONNECTED"])


async def test_two_schedulers_one_acts_and_the_other_takes_over(env: dict[str, Any], stack: Any) -> None:
    settings = env["settings"]
    rid = unique("s-two")
    await make_restaurant(settings, stack, rid)
    schedulers = [Scheduler(settings, "one"), Scheduler(settings, "two")]
    tasks = [asyncio.create_task(s.run()) for s in schedulers]
    try:
        await wait_until(lambda: any(s.rebuilt.is_set() for s in schedulers), 30, message="nobody leads")
        leader, follower = schedulers if schedulers[0].leading.is_set() else schedulers[::-1]
        await env["tap"].wait_for(rid, "STATUS_CHANGED")
        start = whole_ms(utc_now() + timedelta(seconds=1))
        end = start + timedelta(seconds=2)
        await add_unavailability(env, rid, start, end)
        await env["tap"].wait_for(rid, "STATUS_CHANGED", 2)
        assert not follower.leading.is_set()
        assert follower.metrics.claimed._value.get() == 0 and leader.metrics.claimed._value.get() > 0
        leader.request_stop()  # it releases the lock; the follower takes it at its next try
        await wait_until(follower.rebuilt.is_set, 20, message="the follower never took over")
        changed = await env["tap"].wait_for(rid, "STATUS_CHANGED", 3, timeout=30)
        assert since(changed[2]) == end
        await settle_time(0.5)
        assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"])
    finally:
        for s in schedulers:
            s.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_leader_lock_expires_when_not_renewed(env: dict[str, Any]) -> None:
    redis, key = env["store"].redis, f"{env['settings'].redis_prefix}lock-test"
    first, second = LeaderLock(redis, key, "first", 0.5), LeaderLock(redis, key, "second", 0.5)
    assert await first.acquire() and first.valid()
    assert not await second.acquire()
    assert await first.renew()
    await wait_until(second.acquire, 5, message="the lock never expired")  # first stopped renewing
    assert not await first.renew() and not first.valid()
    await first.release()  # not its lock any more: nothing happens
    assert await second.current_holder() == "second"
    await second.release()
    assert await second.current_holder() is None


async def test_burst_of_200_openings_in_one_batch(env: dict[str, Any]) -> None:
    settings, store, clock, tap = env["settings"], env["store"], env["clock"], env["tap"]
    ids = [f"{unique('s-burst')}-{n:03d}" for n in range(200)]
    start = whole_ms(utc_now() + timedelta(seconds=5))
    holiday = Unavailability(start, start + timedelta(hours=1), UnavailabilityReason.HOLIDAY)
    # Straight into Redis, as the API would write them; MongoDB does not know these restaurants.
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN, [holiday]) for rid in ids})
    await clock.mark_now(ids)
    async with running(settings) as scheduler:
        histogram = scheduler.metrics.batch_size

        def batches_of_200() -> float:
            le = {s.labels["le"]: s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_bucket")}
            return le["200.0"] - le["100.0"]

        await wait_until(lambda: all(tap.of(rid, "STATUS_CHANGED") for rid in ids), 20, message="initial statuses")
        before = batches_of_200()
        await wait_until(lambda: all(len(tap.of(rid, "STATUS_CHANGED")) == 2 for rid in ids), 30,
                         message="not every restaurant became unavailable")  # fmt: skip
        assert batches_of_200() == before + 1  # all 200 in one claim
        statuses, unknown = await env["service"].current(ids)
        assert not unknown and all(s.reason == "UNAVAILABLE" and s.since == start for s in statuses)
        for rid in ids:
            assert since(tap.of(rid, "STATUS_CHANGED")[1]) == start
        end_ms = int((start + timedelta(hours=1)).timestamp() * 1000)

        async def all_wait_for_the_end() -> bool:
            return await clock.next_due() == end_ms and await clock.size() == len(ids)

        await wait_until(all_wait_for_the_end, 10, message="not every restaurant queued at its next boundary")
        await settle_time(0.5)
    for rid in ids:
        assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE"])


class WriterMidBatch(PresenceStore):
    """A real store whose batch read lets another writer act between the batch's read and its commits."""

    def __init__(self, store: PresenceStore, writer: Callable[[], Awaitable[None]]) -> None:
        super().__init__(store.redis, store.prefix)
        self.writer: Callable[[], Awaitable[None]] | None = writer

    async def snapshots(self, restaurant_ids: Sequence[str]) -> list[RestaurantSnapshot]:
        snaps = await super().snapshots(restaurant_ids)
        if len(restaurant_ids) > 1 and self.writer is not None:  # the batch's read, not `settle`'s
            writer, self.writer = self.writer, None
            await writer()
        return snaps


async def status_changes(store: PresenceStore, rid: str) -> list[Event]:
    raw = cast(dict[str, str], await store.redis.hgetall(store.key(rid)))
    events = [Event.model_validate_json(v) for k, v in sorted(raw.items()) if k.startswith("o:")]
    return [e for e in events if e.type is EventType.STATUS_CHANGED]


async def test_batch_settles_once_when_another_writer_moves_the_version_mid_batch(env: dict[str, Any]) -> None:
    store, window = env["store"], timedelta(seconds=env["settings"].stale_after_s)
    quiet, changed, born = (unique(f"s-batch-{name}") for name in ("quiet", "changed", "born"))
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN) for rid in (quiet, changed, born)})
    start = whole_ms(utc_now() - timedelta(minutes=1))
    holiday = Unavailability(start, start + timedelta(hours=1), UnavailabilityReason.HOLIDAY)
    bridge = StatusService(store, window)  # the bridge's own path, `settle`
    by_bridge: list[Settled | None] = []

    async def writer() -> None:
        # The API changes a profile (the version moves) and leaves the settling to the scheduler.
        await store.set_profiles({changed: profile_json("A", "UTC", ALWAYS_OPEN, [holiday])})
        # A bridge applies a device's birth (the version moves) and commits the transition itself.
        birth = Event(type=EventType.DEVICE_ONLINE, restaurant_id=born, device_id="tablet", data={"epoch": 1})
        await store.apply_presence([(born, "tablet", 1, DeviceState.ONLINE, birth)])
        by_bridge.append(await bridge.settle(born))

    batch = await StatusService(WriterMidBatch(store, writer), window).settle_batch([quiet, changed, born])
    assert by_bridge and by_bridge[0] is not None and by_bridge[0].status.online
    assert not batch.failed and not batch.unknown and len(batch.snapshots) == 3
    assert sorted(batch.settled) == sorted([quiet, changed])  # the bridge committed `born` first: nothing new
    assert batch.settled[quiet].status.reason == "DISCONNECTED"
    assert batch.settled[changed].status.reason == "UNAVAILABLE" and batch.settled[changed].status.since == start
    for rid, reason in ((quiet, "DISCONNECTED"), (changed, "UNAVAILABLE"), (born, None)):
        events = await status_changes(store, rid)
        assert [e.data["reason"] for e in events] == [reason], rid  # one STATUS_CHANGED each, from one writer
        committed = cast(str, await store.redis.hget(store.key(rid), "s"))
        assert json.loads(committed)["reason"] == reason
    assert [e.event_id for e in await status_changes(store, changed)] == [batch.settled[changed].event.event_id]
    again = await env["service"].settle_batch([quiet, changed, born])  # nothing moved since: nothing new
    assert not again.settled and not again.failed


async def test_burst_raced_by_other_writers_announces_each_transition_once(env: dict[str, Any]) -> None:
    """The scheduler's batches against writers that settle the same restaurants and move their versions."""
    settings, store, clock, tap = env["settings"], env["store"], env["clock"], env["tap"]
    ids = [f"{unique('s-race')}-{n:03d}" for n in range(60)]
    start = whole_ms(utc_now() + timedelta(seconds=3))
    holiday = Unavailability(start, start + timedelta(hours=1), UnavailabilityReason.HOLIDAY)
    profiles = {rid: profile_json("A", "UTC", ALWAYS_OPEN, [holiday]) for rid in ids}
    await store.set_profiles(profiles)
    await clock.mark_now(ids)
    bridge, events = env["service"], EventPublisher(settings)
    await events.open()

    async def settle_and_publish(rid: str) -> None:  # what a bridge does after a device's message
        settled = await bridge.settle(rid)
        if settled is not None:
            await events.publish(settled.event)
            await store.clear_outbox(rid, [settled.outbox_field])
            await store.clear_status_outbox(rid, settled.status_json)  # as after the retained copy's PUBACK

    try:
        async with running(settings):
            await wait_until(lambda: all(tap.of(rid, "STATUS_CHANGED") for rid in ids), 20, message="initial")
            await wait_until(lambda: utc_now() >= start, 10)
            for _ in range(5):  # bounded: the race is over within the scheduler's first batch or two
                await store.set_profiles(profiles)  # the API rewrites them: every version moves
                await asyncio.gather(*(settle_and_publish(rid) for rid in ids))
            await wait_until(lambda: all(len(tap.of(rid, "STATUS_CHANGED")) >= 2 for rid in ids), 30,
                             message="not every restaurant became unavailable")  # fmt: skip
            for rid in ids:
                try:
                    await wait_until(partial(outbox_empty, store, rid), 10)
                except AssertionError:
                    fields = await store.redis.hkeys(store.key(rid))
                    raise AssertionError(f"outbox of {rid} never cleared: {fields}") from None
            await settle_time(0.5)
    finally:
        await events.close()
    for rid in ids:
        assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE"])
        assert since(tap.of(rid, "STATUS_CHANGED")[1]) == start


async def test_unknown_restaurant_is_dropped_from_the_queue(env: dict[str, Any]) -> None:
    await env["clock"].mark_now([unique("never-provisioned")])
    async with running(env["settings"]):
        await wait_until(lambda: _queue_empty(env["clock"]), 10, message="unknown id still queued")


async def _queue_empty(clock: ClockQueue) -> bool:
    return await clock.size() == 0


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    for name, value in settings.model_dump(mode="json").items():
        env[f"PRESENCE_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


async def test_python_m_scheduler_leads_and_stops_on_sigterm(env: dict[str, Any]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "--instance", unique("sigterm"),
        env=settings_env(env["settings"]), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await process.stderr.readline()  # type: ignore[union-attr]
            assert line, f"scheduler exited before logging {text!r}: {lines}"
            lines.append(line.decode())

    try:
        await asyncio.wait_for(read_until("rebuilt from MongoDB"), 30)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_until("stopped"), 30)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert not any(" ERROR " in line or "Traceback" in line for line in lines), lines
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.skipif(bool(os.environ.get("PRESENCE_TEST_REUSE")), reason="freezes the test session's own Redis")
async def test_redis_that_stops_answering_costs_the_lead_and_nothing_else(env: dict[str, Any], stack: Any) -> None:
    settings = env["settings"]
    rid = unique("s-frozen")
    await make_restaurant(settings, stack, rid)
    async with running(settings) as scheduler:
        await env["tap"].wait_for(rid, "STATUS_CHANGED")
        pid = stack.redis.pid
        os.kill(pid, signal.SIGSTOP)  # a partition: Redis neither answers nor refuses
        try:
            await wait_until(lambda: not scheduler.leading.is_set(), 20, message="never noticed its lease ran out")
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_until(scheduler.rebuilt.is_set, 40, message="never led again")
        start = whole_ms(utc_now() + timedelta(seconds=1))
        await add_unavailability(env, rid, start, start + timedelta(hours=1))
        changed = await env["tap"].wait_for(rid, "STATUS_CHANGED", 2, timeout=30)
        assert since(changed[1]) == start
        await settle_time(0.5)
    assert_once_on_both_queues(env, rid, ["DISCONNECTED", "UNAVAILABLE"])


async def test_outbox_entry_left_behind_is_republished_by_the_periodic_sweep(env: dict[str, Any], stack: Any) -> None:
    settings = env["settings"].model_copy(update={"scheduler_rebuild_interval_s": 1.0, "scheduler_outbox_grace_s": 0.5})
    store = env["store"]
    rid = unique("s-sweep")
    await make_restaurant(settings, stack, rid)
    async with running(settings):
        await env["tap"].wait_for(rid, "STATUS_CHANGED")
        # A writer (an API request, a bridge) committed an event and died before RabbitMQ confirmed it.
        event = Event(type=EventType.UNAVAILABILITY_CANCELLED, restaurant_id=rid, data={"note": "left behind"})
        await store.redis.hset(store.key(rid), outbox_field(), event.model_dump_json())
        seen = await env["tap"].wait_for(rid, "UNAVAILABILITY_CANCELLED", timeout=20)
        assert [e["event_id"] for e in seen] == [event.event_id]
        await wait_until(lambda: outbox_empty(store, rid), 10, message="outbox never cleared")


async def test_redis_lost_and_rebuilt_by_the_bridge_announces_nothing_again(env: dict[str, Any], stack: Any) -> None:
    # Redis restarted empty: the scheduler's lease and profiles go too, and its rebuild settles the
    # restaurants again. Until the bridge has put the committed statuses back (from the retained copies)
    # that settle would find none and announce the current status a second time.
    settings, store, tap = env["settings"], env["store"], env["tap"]
    rid = unique("s-lost")
    await make_restaurant(settings, stack, rid)
    marker = StateMarker(store.redis, settings.redis_prefix, instance="bridge-1")

    async def online_device() -> None:
        birth = Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="tablet", data={})
        await store.apply_presence([(rid, "tablet", 1, DeviceState.ONLINE, birth)])

    await online_device()
    await marker.mark(rebuilding=False)  # what a running bridge keeps
    async with running(settings) as scheduler:
        [first] = await tap.wait_for(rid, "STATUS_CHANGED")
        assert first["data"]["online"]
        rebuilds = scheduler.metrics.registry.get_sample_value("scheduler_rebuilds_total") or 0.0
        keys = [key async for key in store.redis.scan_iter(match=f"{settings.redis_prefix}*")]
        await store.redis.delete(*keys)  # Redis restarted empty
        await online_device()  # the bridge re-applies retained presence before it notices (or meanwhile)

        async def profile_back() -> bool:
            return (await store.snapshot(rid)).rules is not None

        await wait_until(profile_back, 20, message="the scheduler did not rebuild")
        await settle_time(1.0)
        assert len(tap.of(rid, "STATUS_CHANGED")) == 1, "settled while Redis held no committed status"
        await marker.mark(rebuilding=True)  # the bridge notices, restores, converges
        await store.restore_statuses({rid: DerivedStatus.model_validate(first["data"])})
        await marker.rebuilt()
        await wait_until(
            lambda: (scheduler.metrics.registry.get_sample_value("scheduler_rebuilds_total") or 0.0) > rebuilds,
            20, message="the rebuild never went on",
        )  # fmt: skip
        await settle_time(1.0)
        due = await store.redis.zscore(f"{settings.redis_prefix}due", rid)
        assert due is None or due > now_ms() + 60_000, "never settled again"  # queued at its next boundary
    assert_once_on_both_queues(env, rid, [None])


class SlowBridge:
    """A bridge's horizon entry, refreshed every 0.1 s at `applied_up_to` (ms) until the block ends."""

    def __init__(self, horizons: Horizons, applied_up_to: int) -> None:
        self.horizons = horizons
        self.applied_up_to = applied_up_to


@asynccontextmanager
async def slow_bridge(store: PresenceStore, settings: Settings, applied_up_to: int) -> AsyncIterator[SlowBridge]:
    bridge = SlowBridge(Horizons(store.redis, settings.redis_prefix), applied_up_to)
    done = asyncio.Event()

    async def publish() -> None:
        while not done.is_set():
            await bridge.horizons.publish("slow-bridge", bridge.applied_up_to, now_ms())
            await asyncio.sleep(0.1)

    publishing = asyncio.create_task(publish())
    try:
        yield bridge
    finally:
        done.set()
        await publishing
        await bridge.horizons.withdraw("slow-bridge")


async def test_a_boundary_waits_for_the_bridges_to_apply_what_they_received_before_it(
    env: dict[str, Any], stack: Any
) -> None:
    # A bridge seconds behind (the final stop of thousands of devices) applied a graceful stop received
    # before an unavailability's start only after the scheduler had committed the start: the stop could
    # not go in before it, and the restaurant's offline stretch was lost from the history (the full churn
    # run's ranking misses). Now the scheduler claims nothing past the lowest live bridge's horizon, and
    # settles a claim as of that horizon: a whole unavailability inside the backlog is still announced.
    settings, store, tap = env["settings"], env["store"], env["tap"]
    rid = unique("s-horizon")
    await make_restaurant(settings, stack, rid)
    async with running(settings) as scheduler:
        await tap.wait_for(rid, "STATUS_CHANGED")
        start = whole_ms(utc_now() + timedelta(seconds=1))
        end = start + timedelta(seconds=4)  # room for the rebuild below to run inside it
        async with slow_bridge(store, settings, now_ms() - 2_000) as bridge:
            await add_unavailability(env, rid, start, end)
            await settle_time((start - utc_now()).total_seconds() + 0.5)  # inside the unavailability
            rebuilds = scheduler.metrics.registry.get_sample_value("scheduler_rebuilds_total") or 0.0
            await scheduler._want_rebuild()  # the periodic rebuild settles whatever the rules moved
            await wait_until(
                lambda: (scheduler.metrics.registry.get_sample_value("scheduler_rebuilds_total") or 0.0) > rebuilds,
                20, message="no rebuild",
            )  # fmt: skip
            await settle_time((end - utc_now()).total_seconds() + 1.0)  # both boundaries passed, held
            assert reasons(tap.of(rid, "STATUS_CHANGED")) == ["DISCONNECTED"], "settled past the bridge's horizon"
            assert (scheduler.metrics.registry.get_sample_value("scheduler_horizon_lag_seconds") or 0.0) > 2.0
            bridge.applied_up_to = int((start + timedelta(milliseconds=300)).timestamp() * 1000)  # it catches up
            changed = await tap.wait_for(rid, "STATUS_CHANGED", 2, timeout=10)
            bridge.applied_up_to = now_ms()
            changed = await tap.wait_for(rid, "STATUS_CHANGED", 3, timeout=10)
        assert reasons(changed) == ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"]
        assert [since(e) for e in changed[1:]] == [start, end]  # committed late, each at its own instant


async def test_two_boundaries_passed_in_one_jump_of_the_horizon_are_each_announced(
    env: dict[str, Any], stack: Any
) -> None:
    # The full churn run: an unavailability ended and the next began 9 s later while a bridge was behind.
    # The horizon then jumped past both at once, the claim was settled as of the claim's instant, and
    # UNAVAILABLE followed UNAVAILABLE: the DISCONNECTED stretch between them never reached the history.
    # Each claimed restaurant is now settled as of the instant it was due, and queued again from there.
    settings, store, tap = env["settings"], env["store"], env["tap"]
    rid = unique("s-jump")
    await make_restaurant(settings, stack, rid)
    async with running(settings):
        await tap.wait_for(rid, "STATUS_CHANGED")
        first = whole_ms(utc_now() + timedelta(seconds=1))
        gap = first + timedelta(seconds=1)
        second = gap + timedelta(seconds=1)
        end = second + timedelta(seconds=2)
        async with slow_bridge(store, settings, now_ms() - 2_000) as bridge:  # behind, from before the first
            await add_unavailability(env, rid, first, gap)
            await add_unavailability(env, rid, second, end)
            await settle_time((second - utc_now()).total_seconds() + 0.3)  # three boundaries passed, held back
            assert reasons(tap.of(rid, "STATUS_CHANGED")) == ["DISCONNECTED"], "settled past the bridge's horizon"
            bridge.applied_up_to = now_ms() + 3_600_000  # it catches up at once and holds nothing back any more
            changed = await tap.wait_for(rid, "STATUS_CHANGED", 5, timeout=15)
        assert reasons(changed) == ["DISCONNECTED", "UNAVAILABLE", "DISCONNECTED", "UNAVAILABLE", "DISCONNECTED"]
        assert [since(e) for e in changed[1:]] == [first, gap, second, end]


async def test_a_bridge_that_stopped_publishing_its_horizon_holds_nothing_back(env: dict[str, Any]) -> None:
    settings, store = env["settings"], env["store"]
    horizons = Horizons(store.redis, f"{settings.redis_prefix}{unique('h')}:")
    now = now_ms()
    await horizons.publish("live", now - 1_000, now)
    await horizons.publish("killed", now - 60_000, now - HORIZON_STALE_MS - 1)
    assert await horizons.lowest(now) == now - 1_000
    assert await store.redis.hkeys(horizons.key) == ["live"]  # the dead entry is gone
    await horizons.withdraw("live")
    assert await horizons.lowest(now) == now


async def test_an_older_status_acknowledged_after_the_committed_one_is_followed_by_it(
    env: dict[str, Any], stack: Any
) -> None:
    # A bridge and the scheduler publish retained statuses on connections of their own: a status
    # committed later (by the bridge, say) can reach the broker before an older one. The writer whose
    # older status is acknowledged after the committed one moved on publishes the committed one again.
    settings, store = env["settings"], env["store"]
    rid = unique("r-race")
    older = {"restaurant_id": rid, "online": False, "reason": "CLOSED"}
    newer = {"restaurant_id": rid, "online": True, "reason": None}
    # Committed by the other writer, whose copy the broker took and acknowledged (its outbox is cleared).
    await store.redis.hset(store.key(rid), "s", json.dumps(newer))
    metrics = SchedulerMetrics()
    publisher = StatusPublisher(settings, store, metrics, "race")
    with StatusWatcher(stack.mosquitto_url, settings, rid) as watcher:
        sent = watcher.client.publish(status_topic(rid), json.dumps(newer), qos=1, retain=True)
        await asyncio.to_thread(sent.wait_for_publish, 5)
        await wait_until(lambda: watcher.last() == newer, message="the other writer's copy never came")
        await publisher.open(Retrier(lambda: True, lambda: None))
        try:
            await publisher.publish_retained(rid, json.dumps(older))  # the late one
            await wait_until(lambda: len(watcher.received) >= 3, message="the committed status was not sent again")
            assert [payload for _, payload in watcher.received] == [newer, older, newer]
            assert metrics.registry.get_sample_value("scheduler_retained_republished_total") == 1
            # Acknowledged while it is the committed one: nothing more is sent.
            await publisher.publish_retained(rid, json.dumps(newer))
            await wait_until(lambda: metrics.registry.get_sample_value("scheduler_retained_acked_total") == 3)
            await settle_time(0.3)
            assert len(watcher.received) == 4
            assert metrics.registry.get_sample_value("scheduler_retained_republished_total") == 1
        finally:
            await publisher.close()
    with StatusWatcher(stack.mosquitto_url, settings, rid) as late:  # what the broker keeps for the next device
        await wait_until(lambda: late.received, message="no retained status")
        assert late.received == [(True, newer)]


async def test_a_change_an_api_committed_but_never_brought_to_redis_takes_effect_and_is_announced_once(
    env: dict[str, Any], stack: Any
) -> None:
    settings, store = env["settings"], env["store"]
    rid = unique("s-unannounced")
    await make_restaurant(settings, stack, rid)
    # The API committed an unavailability with its event in MongoDB, then died before the Redis step.
    now = whole_ms(utc_now())
    record = UnavailabilityRecord(id=uuid.uuid4().hex, reason=UnavailabilityReason.HOLIDAY, start=now,
                                  end=now + timedelta(hours=1), created_at=now)  # fmt: skip
    created = Event(type=EventType.UNAVAILABILITY_CREATED, restaurant_id=rid, ts=now, data={"id": record.id})
    await UnavailabilityLog(id=rid, items=[record], version=1, unannounced=[unannounced(created)]).insert()
    async with running(settings):
        seen = await env["tap"].wait_for(rid, "UNAVAILABILITY_CREATED")
        assert [e["event_id"] for e in seen] == [created.event_id]
        await wait_until(
            lambda: [e["data"]["reason"] for e in env["tap"].of(rid, "STATUS_CHANGED")][-1:] == ["UNAVAILABLE"],
            20, message="the unavailability in force",
        )  # fmt: skip
        await wait_until(lambda: outbox_empty(store, rid), 10, message="outbox never cleared")
        log = await UnavailabilityLog.get(rid)  # here: Beanie follows the leader's client, closed when it stops
        assert log is not None and log.unannounced == []
        await settle_time(0.5)
    assert [e["event_id"] for e in env["tap"].of(rid, "UNAVAILABILITY_CREATED")] == [created.event_id]
    for queue in (settings.dashboard_queue, settings.aggregator_queue):
        assert len(env["tap"].of(rid, "UNAVAILABILITY_CREATED", queue)) == 1, queue


async def test_a_restaurant_queued_at_a_boundary_long_past_is_queued_at_its_next_one_in_one_claim(
    env: dict[str, Any], stack: Any
) -> None:
    # A rebuild run while a bridge's horizon read 0 queued every restaurant at its first boundary of 1970.
    settings, clock = env["settings"], env["clock"]
    rid = unique("s-1970")
    await make_restaurant(settings, stack, rid, hours=OpeningHours())  # opens and closes every day
    async with running(settings) as scheduler:
        await env["tap"].wait_for(rid, "STATUS_CHANGED")
        before = scheduler.metrics.claimed._value.get()

        await clock.schedule({rid: 36_000_000})  # 1970-01-01 10:00 UTC

        async def queued_ahead() -> bool:
            score = await env["store"].redis.zscore(clock.key, rid)
            return score is not None and score > now_ms()

        await wait_until(queued_ahead, 20, message="queued at its next boundary from now")
        # Not a walk through the boundaries since (the code before walked: 10 claims here): one, two if raced.
        assert scheduler.metrics.claimed._value.get() - before <= 2
        await settle_time(0.5)
    assert len(env["tap"].of(rid, "STATUS_CHANGED")) == 1  # and nothing announced again
