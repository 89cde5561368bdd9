"""The API's copy of the status views' facts (core/view_cache.py): never older than Redis at a read's start."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from core.history_store import to_ms
from core.hours import OpeningHours
from core.messages import DeviceState, Event, EventType
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status import DerivedStatus
from core.status_codec import profile_json
from core.status_service import StatusService
from core.view_cache import MISSING, ViewCache
from core.view_facts import parse_facts
from tests.helpers import view_copy, wait_until

WINDOW = timedelta(seconds=60)
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday, noon: open (10:00-23:00 UTC)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def api(redis: Redis, settings: Settings) -> AsyncIterator[StatusService]:
    """The API's status service, its copy tracking."""
    service = StatusService(PresenceStore(redis, settings.redis_prefix), WINDOW)
    async with view_copy(service):
        yield service


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[PresenceStore]:
    """Another process's store (a bridge's), on a Redis client of its own."""
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield PresenceStore(client, settings.redis_prefix)
    await client.aclose()


async def online(store: PresenceStore, rid: str, at: datetime) -> None:
    event = Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="tablet", data={"epoch": 1})
    await store.apply_presence([(rid, "tablet", 1, DeviceState.ONLINE, event)], at_ms=to_ms(at))


async def settled_restaurant(api: StatusService, rid: str) -> None:
    await api.store.set_profiles({rid: profile_json("A", "UTC", OpeningHours())})
    await online(api.store, rid, T0)
    await api.settle(rid, now=T0)


async def status_at(api: StatusService, rid: str, at: datetime) -> DerivedStatus | None:
    text = (await api.views.read([rid], at))[0]
    return None if text is None else DerivedStatus.model_validate_json(text)


async def test_the_copy_serves_views_and_a_change_elsewhere_is_seen_by_the_next_read(
    api: StatusService, writer: PresenceStore
) -> None:
    rid = "copy-basic"
    copy = api.views.cache
    await settled_restaurant(api, rid)
    first = await status_at(api, rid, T0 + timedelta(seconds=1))
    assert first is not None and first.online and first.last_seen == T0
    assert (copy.fills, copy.hits) == (1, 0)
    assert await status_at(api, rid, T0 + timedelta(seconds=2)) == first
    assert copy.hits == 1, "the second read came from the copy"

    # Heartbeats written by another client: each read right after one (no wait) shows it, the
    # PING before the read having brought in Redis's invalidation of the restaurant first.
    for n in range(1, 31):
        beat = T0 + timedelta(seconds=n)
        await writer.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(beat), window_ms=60_000)
        status = await status_at(api, rid, beat + timedelta(milliseconds=500))
        assert status is not None and status.last_seen == beat, f"heartbeat {n}"
        assert await status_at(api, rid, beat + timedelta(milliseconds=600)) == status
    assert copy.invalidated >= 30 and copy.hits >= 31

    # A will from elsewhere retires the view at once: nothing stands until the next settle.
    event = Event(type=EventType.DEVICE_OFFLINE, restaurant_id=rid, device_id="tablet", data={"epoch": 1})
    gone = T0 + timedelta(minutes=1)
    await writer.apply_presence([(rid, "tablet", 1, DeviceState.OFFLINE, event)], at_ms=to_ms(gone))
    assert await status_at(api, rid, gone + timedelta(seconds=1)) is None
    await StatusService(writer, WINDOW).settle(rid, now=gone)
    after = await status_at(api, rid, T0 + timedelta(minutes=1, seconds=1))
    assert after is not None and not after.online


async def test_a_read_answered_after_a_change_of_its_restaurant_is_not_kept(
    api: StatusService, redis: Redis, writer: PresenceStore
) -> None:
    rid = "copy-race"
    copy = api.views.cache
    await settled_restaurant(api, rid)
    meta, text, seen = (await redis.hmget(api.store.key(rid), "w", "wj", "l:tablet"))[:3]
    facts = parse_facts(meta, text, seen)
    assert facts is not None

    ticket = copy.expect([rid])  # the read is sent ...
    await writer.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(T0 + timedelta(seconds=5)), window_ms=60_000)
    assert await copy.synced()  # ... and the change reaches the copy before the read's answer
    copy.keep(ticket, [rid], [facts])
    assert copy.lookup([rid]) == [MISSING], "an answer older than a change it crossed was kept"

    ticket = copy.expect([rid])
    copy.keep(ticket, [rid], [facts])
    assert copy.lookup([rid]) == [facts], "nothing crossed this one"


@pytest.mark.parametrize("role", ["listener", "tracker"])
async def test_when_a_connection_of_the_copy_ends_it_empties_and_tracks_again(
    api: StatusService, redis: Redis, writer: PresenceStore, role: str
) -> None:
    # The tracker's end matters as much as the listener's: with it, Redis stops sending invalidations
    # and the listener would wait in silence while the copy went stale.
    rid = f"copy-reset-{role}"
    copy = api.views.cache
    await settled_restaurant(api, rid)
    assert await status_at(api, rid, T0 + timedelta(seconds=1)) is not None
    assert len(copy) == 1
    name = copy.client_name(role)
    clients = await redis.client_list()
    [victim] = [c for c in clients if c["name"] == name]
    await redis.client_kill_filter(_id=victim["id"])
    await wait_until(lambda: copy.resets == 1, message=f"the copy went on after its {role} ended")
    assert len(copy) == 0
    await wait_until(lambda: copy.tracking, message="tracking never came back")

    # Tracking again: filled anew, and a change still reaches it.
    await status_at(api, rid, T0 + timedelta(seconds=2))
    assert len(copy) == 1
    await writer.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(T0 + timedelta(seconds=3)), window_ms=60_000)
    status = await status_at(api, rid, T0 + timedelta(seconds=4))
    assert status is not None and status.last_seen == T0 + timedelta(seconds=3)


async def test_without_tracking_nothing_is_kept_and_reads_go_to_redis(redis: Redis, settings: Settings) -> None:
    service = StatusService(PresenceStore(redis, settings.redis_prefix), WINDOW)
    copy = service.views.cache
    await settled_restaurant(service, "copy-off")
    for second in (1, 2):
        assert await status_at(service, "copy-off", T0 + timedelta(seconds=second)) is not None
    assert (copy.tracking, len(copy), copy.hits, copy.fills) == (False, 0, 0, 0)


async def test_the_copy_is_bounded(redis: Redis, settings: Settings) -> None:
    service = StatusService(PresenceStore(redis, settings.redis_prefix), WINDOW)
    service.views.cache = ViewCache(redis, service.store.key(""), service.views.window_us, max_entries=3)
    async with view_copy(service) as copy:
        for n in range(5):
            await settled_restaurant(service, f"copy-bound-{n}")
            await status_at(service, f"copy-bound-{n}", T0 + timedelta(seconds=1))
            assert 1 <= len(copy) <= 3


async def test_a_read_at_an_instant_before_the_latest_one_is_still_served_as_derived(api: StatusService) -> None:
    # Batches started a little apart reach the copy in any order: the texts held for the latest
    # instant (core/standing_texts.py) must not answer for an earlier one where they differ.
    rid = "copy-earlier"
    copy = api.views.cache
    await settled_restaurant(api, rid)  # online, heard at T0: its view stands until T0 + WINDOW
    heard = await status_at(api, rid, T0 + timedelta(seconds=30))
    assert heard is not None and heard.online
    assert await status_at(api, rid, T0 + timedelta(seconds=61)) is None, "lapsed: the rule derives it"
    for seconds in (30, 59, 1):
        at = T0 + timedelta(seconds=seconds)
        assert await status_at(api, rid, at) == heard, f"{seconds} s, after a read at 61 s"
    assert (copy.fills, copy.hits) == (1, 4), "every read after the first came from the copy"
