"""Ways the workers used to go wrong outside any outage: a compare-and-delete aborted by a heartbeat, a
background task that ignored its cancellation so the stop never finished, and a sweep that dropped a
device heard exactly a window ago without flagging it."""

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from bridge.inbox import Inbox
from bridge.mqtt_link import BrokerLink
from core.history_store import to_ms
from core.messages import DeviceState, Event, EventType
from core.presence_store import STATUS_OUTBOX, UNSETTLED, PresenceStore, from_ms
from core.settings import Settings
from core.state_marker import StateMarker
from core.status import DerivedStatus, OfflineReason
from core.status_codec import profile_json
from core.status_service import StatusService
from core.task_stop import cancel_and_wait
from tests.devices import ALWAYS_OPEN
from tests.helpers import wait_until


def whole_ms(at: datetime) -> datetime:
    return from_ms(to_ms(at))


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[PresenceStore]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield PresenceStore(redis, settings.redis_prefix)
    finally:
        await redis.aclose()


async def test_clearing_the_status_outbox_survives_heartbeats_on_the_same_hash(store: PresenceStore) -> None:
    # CI once failed here: the clear watched the whole hash, a heartbeat wrote it, and the bridge died
    # on redis' WatchError. Heartbeats write other fields of the hash all the time.
    rids = [f"hot-{i}" for i in range(200)]
    for rid in rids:
        await store.redis.hset(store.key(rid), mapping={STATUS_OUTBOX: f"status of {rid}", "hb": "0"})

    async def heartbeats() -> None:
        for n in range(2000):
            await store.redis.hset(store.key(rids[n % len(rids)]), "hb", str(n))

    async def clears() -> None:
        for rid in rids:
            await store.clear_status_outbox(rid, f"status of {rid}")

    await asyncio.gather(heartbeats(), clears(), heartbeats())
    for rid in rids:
        assert await store.redis.hget(store.key(rid), STATUS_OUTBOX) is None


async def test_a_newer_queued_status_is_not_cleared_and_a_newer_committed_one_is_sent_again(
    store: PresenceStore,
) -> None:
    await store.redis.hset(store.key("newer"), mapping={STATUS_OUTBOX: "second", "s": "second"})
    await store.redis.hset(store.key("same"), mapping={STATUS_OUTBOX: "first", "s": "first"})
    await store.redis.hset(store.key("moved"), "s", "third")  # committed and cleared by another writer
    await store.redis.hset(store.key("done"), "s", "first")  # the same, cleared by another writer
    again = await store.clear_status_outboxes(
        [("newer", "first"), ("same", "first"), ("moved", "first"), ("done", "first"), ("absent", "first")]
    )
    assert again == [("newer", "second"), ("moved", "third")]
    assert await store.redis.hget(store.key("newer"), STATUS_OUTBOX) == "second"
    assert await store.redis.hget(store.key("same"), STATUS_OUTBOX) is None
    assert not await store.redis.exists(store.key("absent"))


async def test_cancel_and_wait_ends_a_task_that_swallows_one_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:  # like a loop around a 3.11 wait_for that lost the cancellation
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    async def plain() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(plain(), name="plain")]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks), 10)
    assert swallowed.is_set()
    assert all(task.cancelled() for task in tasks)


async def test_a_device_heard_exactly_a_window_ago_is_flagged_stale(store: PresenceStore) -> None:
    # DESIGN §3: connected while now - last_seen < window. The sweep's range took last_seen == cutoff but
    # mark_stale.lua called it fresh, and the device still left the index: never flagged, its next
    # heartbeat committed no DISCONNECTED interval (a churn run's ranking came out seconds short).
    born = 1_700_000_000_000

    def offline(rid: str, did: str, at: int) -> Event:
        return Event(type=EventType.DEVICE_OFFLINE, restaurant_id=rid, device_id=did, ts=from_ms(at))

    for rid in ("edge", "fresh"):
        online = Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="d", ts=from_ms(born))
        await store.apply_presence([(rid, "d", 1, DeviceState.ONLINE, online)], at_ms=born)
    await store.heartbeats([("fresh", "d", 1)], at_ms=born + 1)

    cutoff = born  # the sweep one window after the birth
    candidates = await store.stale_candidates(cutoff)
    assert [(rid, did) for rid, did, _ in candidates] == [("edge", "d")]
    results = await store.mark_stale([(rid, did, score, offline(rid, did, cutoff)) for rid, did, score in candidates],
                                     cutoff)  # fmt: skip
    assert [r.code for r in results] == [2]
    assert str(await store.redis.hget(store.key("edge"), "d:d")).endswith("|1")  # epoch|state|changed|stale
    assert await store.redis.zscore(store.heartbeat_index, "edge/d") is None
    assert await store.redis.zscore(store.heartbeat_index, "fresh/d") == born + 1


async def test_a_commit_from_before_another_writers_transition_is_refused(store: PresenceStore) -> None:
    # Seen in the full churn run: the scheduler committed an unavailability's start; a writer that had
    # read the same version just before that boundary then committed the old status back (the clock
    # moves no version), and the next settle announced the unavailability again.
    rid = "r-aba"
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN)})
    snap = await store.snapshot(rid)
    now = from_ms(1_800_000_000_000)
    disconnected = DerivedStatus(restaurant_id=rid, online=False, reason=OfflineReason.DISCONNECTED, since=now)
    unavailable = DerivedStatus(restaurant_id=rid, online=False, reason=OfflineReason.UNAVAILABLE, detail="HOLIDAY",
                                since=now + timedelta(seconds=1))  # fmt: skip

    def changed(status: DerivedStatus) -> Event:
        return Event(type=EventType.STATUS_CHANGED, restaurant_id=rid, data=status.model_dump(mode="json"))

    assert (await store.commit_status(rid, snap.version, disconnected, changed(disconnected)))[0] == 1
    both_read = (await store.snapshot(rid)).version  # two writers read this version
    assert (await store.commit_status(rid, both_read, unavailable, changed(unavailable)))[0] == 1  # the boundary
    late, _ = await store.commit_status(rid, both_read, disconnected, changed(disconnected))  # read before it
    assert late == -1, "a status computed before the boundary was committed after it"


async def test_commits_are_guarded_by_the_state_marker_and_another_writers_rebuild(store: PresenceStore) -> None:
    # core/state_marker.py: a writer's commit needs the marker (Redis restarted empty otherwise) and
    # no rebuild in progress but its own.
    rid = "r-guard"
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN)})
    bridge = StateMarker(store.redis, store.prefix, guarded=store, instance="bridge-1")
    scheduler_store = PresenceStore(store.redis, store.prefix)
    scheduler = StateMarker(store.redis, store.prefix, guarded=scheduler_store)
    statuses = [DerivedStatus(restaurant_id=rid, online=online, reason=None if online else OfflineReason.DISCONNECTED,
                              since=from_ms(1_800_000_000_000 + i)) for i, online in enumerate([True, False, True])]

    async def commit(writer: PresenceStore, status: DerivedStatus) -> int:
        event = Event(type=EventType.STATUS_CHANGED, restaurant_id=rid, data=status.model_dump(mode="json"))
        return (await writer.commit_status(rid, (await writer.snapshot(rid)).version, status, event))[0]

    await bridge.mark(rebuilding=False)
    assert await scheduler.ready()  # the scheduler has seen the marker: guarded from now on
    assert await commit(scheduler_store, statuses[0]) == 1
    await store.redis.delete(bridge.marker)  # Redis restarted empty (its hashes would be gone too)
    assert await commit(store, statuses[1]) == -2
    assert await commit(scheduler_store, statuses[1]) == -2
    await bridge.mark(rebuilding=True)  # the bridge noticed and rebuilds: only it may commit
    assert await commit(scheduler_store, statuses[1]) == -2
    assert await commit(store, statuses[1]) == 1
    await bridge.rebuilt()
    assert await commit(scheduler_store, statuses[2]) == 1


async def test_a_settle_as_of_an_instant_before_the_facts_redis_holds_is_taken_as_of_the_facts(
    store: PresenceStore,
) -> None:
    # A bridge settles a batch as of its receipt (core.status_service.as_of); another writer may have
    # applied newer facts to the same restaurant meanwhile. Derived at the older instant, a device that
    # went offline later read as disconnected since the restaurant opened.
    rid = "r-as-of"
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN)})
    service = StatusService(store, timedelta(seconds=120))
    now = whole_ms(datetime.now(UTC))
    born, stopped = now - timedelta(seconds=60), now - timedelta(seconds=5)
    online = Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="d", ts=born)
    await store.apply_presence([(rid, "d", 1, DeviceState.ONLINE, online)], at_ms=to_ms(born))
    stop = Event(type=EventType.DEVICE_OFFLINE, restaurant_id=rid, device_id="d", ts=stopped)
    await store.apply_presence([(rid, "d", 1, DeviceState.OFFLINE, stop)], at_ms=to_ms(stopped))
    batch = await service.settle_batch([rid], stopped - timedelta(seconds=10))  # a writer behind the facts
    status = batch.settled[rid].status
    assert (status.reason, status.since) == (OfflineReason.DISCONNECTED, stopped)


async def test_a_restaurant_with_unsettled_facts_refuses_every_kind_of_fact_until_its_status_is_committed(
    store: PresenceStore,
) -> None:
    # A writer that dies between applying a device transition and settling its restaurant leaves `u`.
    # With `settled_first` the next birth, will, heartbeat or stale flag of that restaurant is refused
    # (UNSETTLED, with the instant of the newest unsettled fact), and nothing of it is written; a commit
    # of the restaurant's status lifts that. Without the check, facts apply as before and `u` keeps the
    # newest instant.
    rid, other = "r-unsettled", "r-settled"
    await store.set_profiles({r: profile_json("A", "UTC", ALWAYS_OPEN) for r in (rid, other)})
    t = 1_800_000_000_000

    def event(kind: EventType, did: str, at: int) -> Event:
        return Event(type=kind, restaurant_id=rid, device_id=did, ts=from_ms(at))

    [born] = await store.apply_presence([(rid, "a", 1, DeviceState.ONLINE, event(EventType.DEVICE_ONLINE, "a", t))],
                                        at_ms=t, settled_first=True)  # fmt: skip
    assert born.code == 2
    [refused] = await store.apply_presence(
        [(rid, "b", 1, DeviceState.ONLINE, event(EventType.DEVICE_ONLINE, "b", t + 5))], at_ms=t + 5, settled_first=True
    )
    assert (refused.code, refused.version) == (UNSETTLED, t)
    before = await store.redis.hgetall(store.key(rid))
    assert "d:b" not in before and "l:b" not in before
    beats = await store.heartbeats([(other, "a", 1), (rid, "a", 1)], at_ms=t + 6, settled_first=True)
    assert beats.unsettled == {1: t}
    assert await store.redis.hget(store.key(rid), "l:a") == str(t)  # the refused heartbeat wrote nothing
    assert [r for r, _ in beats.transitions] == [other]  # the other restaurant's went on
    stale = event(EventType.DEVICE_OFFLINE, "a", t + 7)
    [flag] = await store.mark_stale([(rid, "a", t, stale)], t + 1, settled_first=True)
    assert (flag.code, flag.version) == (UNSETTLED, t)
    assert str(await store.redis.hget(store.key(rid), "d:a")).endswith("|0")  # not flagged

    # Unchecked, a second transition moves `u` on to the newer instant.
    [late] = await store.apply_presence([(rid, "b", 1, DeviceState.ONLINE, event(EventType.DEVICE_ONLINE, "b", t + 9))],
                                        at_ms=t + 9)  # fmt: skip
    assert late.code == 2 and await store.redis.hget(store.key(rid), "u") == str(t + 9)

    service = StatusService(store, timedelta(seconds=120))
    settled = await service.settle_batch([rid], from_ms(t + 9))
    assert settled.settled[rid].status.online
    assert await store.redis.hget(store.key(rid), "u") is None
    [flag] = await store.mark_stale([(rid, "a", t, stale)], t + 1, settled_first=True)
    assert flag.code == 2  # taken now, and unsettled again until the next commit
    assert await store.redis.hget(store.key(rid), "u") is not None


async def test_a_link_keeps_trying_while_its_broker_refuses(settings: Settings) -> None:
    # A broker restart: the first attempt found the port closed, asked for the next attempt from inside
    # its own task, and that request was dropped. The bridge stayed disconnected for good.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    link = BrokerLink(f"mqtt://127.0.0.1:{port}", 0, settings, "robustness", Inbox())
    await link.start()
    try:
        await wait_until(lambda: link._attempt >= 3, 20, message="the link stopped trying")
    finally:
        await link.stop()
