"""Status views (core/status_view.py): served only while deriving the status again gives the same bytes."""

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from core.history_store import to_ms
from core.hours import SEARCH, DayHours, OpeningHours
from core.messages import DeviceState, Event, EventType
from core.presence_store import PresenceStore, from_ms
from core.settings import Settings
from core.status import DerivedStatus, OfflineReason, Unavailability, UnavailabilityReason
from core.status_codec import profile_json
from core.status_service import StatusService
from core.view_facts import iso_ms
from tests.devices import ALWAYS_CLOSED, ALWAYS_OPEN
from tests.helpers import view_copy

WINDOW = timedelta(seconds=60)
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday, noon
OVERNIGHT = OpeningHours(**{day: DayHours(open="18:00", close="02:00") for day in OpeningHours.model_fields})
WEEKDAYS = OpeningHours(sat=None, sun=None)
# Around the clock but Sundays 02:00-03:00, an hour New York skips on March 8, 2026: open March 1 to 15.
SKIPPED_CLOSING = OpeningHours(
    **dict.fromkeys(OpeningHours.model_fields, DayHours(open="03:00", close="03:00"))
    | {"sat": DayHours(open="03:00", close="02:00")}
)
SPRING_AHEAD = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # four days before New York springs forward
_rids = itertools.count()


@pytest.fixture(params=["redis", "copy"])
async def service(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[StatusService]:
    """Views read from Redis each time, or through the API's copy of their facts (core/view_cache.py)."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    service = StatusService(PresenceStore(redis, settings.redis_prefix), WINDOW)
    try:
        if request.param == "copy":
            async with view_copy(service):
                yield service
        else:
            yield service
    finally:
        await redis.aclose()


async def presence(store: PresenceStore, rid: str, did: str, epoch: int, state: DeviceState, at: datetime) -> None:
    kind = EventType.DEVICE_ONLINE if state is DeviceState.ONLINE else EventType.DEVICE_OFFLINE
    event = Event(type=kind, restaurant_id=rid, device_id=did, data={"epoch": epoch})
    await store.apply_presence([(rid, did, epoch, state, event)], at_ms=to_ms(at))


async def derived(service: StatusService, rid: str, at: datetime) -> str:
    return service.derive(await service.store.snapshot(rid), at).model_dump_json()


async def served(service: StatusService, rid: str, at: datetime) -> str | None:
    return (await service.views.read([rid], at))[0]


async def test_a_settled_restaurant_is_served_as_derived_with_its_newest_heartbeat(service: StatusService) -> None:
    rid = "view-basic"
    store = service.store
    await store.set_profiles({rid: profile_json("A", "UTC", OpeningHours())})  # 10:00-23:00 UTC
    await presence(store, rid, "tablet", 1, DeviceState.ONLINE, T0)
    assert await served(service, rid, T0) is None, "nothing settled yet: no view"
    await service.settle(rid, now=T0)

    later = T0 + timedelta(seconds=10)
    assert await served(service, rid, later) == await derived(service, rid, later)
    await store.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(T0 + timedelta(seconds=30)), window_ms=60_000)
    heard = T0 + timedelta(seconds=40)
    view = await served(service, rid, heard)
    assert view == await derived(service, rid, heard)
    status = DerivedStatus.model_validate_json(view or "{}")
    assert (status.online, status.last_seen, status.devices_connected) == (True, T0 + timedelta(seconds=30), 1)

    # The heartbeat at +30 s is the last: the device stops counting at +90 s, and nobody has settled
    # that yet. The view must not answer online past it; derived, it is DISCONNECTED.
    silent = T0 + timedelta(seconds=90)
    assert await served(service, rid, silent - timedelta(milliseconds=1)) is not None
    assert await served(service, rid, silent) is None
    assert DerivedStatus.model_validate_json(await derived(service, rid, silent)).reason is OfflineReason.DISCONNECTED
    # Nor past the closing at 23:00, nor before the instant it was derived at.
    await store.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(T0 + timedelta(hours=10)), window_ms=60_000)
    assert await served(service, rid, T0 + timedelta(hours=10)) is None, "a heartbeat after a lapse is a transition"
    await service.settle(rid, now=T0 + timedelta(hours=10))
    assert await served(service, rid, T0 + timedelta(hours=10, seconds=1)) is not None
    assert await served(service, rid, T0 + timedelta(hours=10) - timedelta(microseconds=1)) is None
    assert await served(service, rid, datetime(2026, 11, 23, 23, 0, tzinfo=UTC)) is None


async def test_a_change_of_the_facts_retires_the_view_until_the_next_settle(service: StatusService) -> None:
    rid = "view-facts"
    store = service.store
    await store.set_profiles({rid: profile_json("A", "UTC", OpeningHours())})
    await presence(store, rid, "tablet", 1, DeviceState.ONLINE, T0)
    await service.settle(rid, now=T0)
    at = T0 + timedelta(seconds=5)
    await presence(store, rid, "tablet", 1, DeviceState.OFFLINE, at)
    assert await served(service, rid, at) is None, "a will moves the version: derived until settled"
    await service.settle(rid, now=at)
    assert await served(service, rid, at) == await derived(service, rid, at)
    noon = T0 + timedelta(minutes=1)
    holiday = Unavailability(noon, noon + timedelta(hours=1), UnavailabilityReason.HOLIDAY)
    await store.set_profiles({rid: profile_json("A", "UTC", OpeningHours(), [holiday])})
    assert await served(service, rid, at) is None, "a new profile moves the version too"
    await service.settle(rid, now=at)
    assert await served(service, rid, noon - timedelta(microseconds=1)) is not None
    assert await served(service, rid, noon) is None, "the unavailability's start is a boundary"


async def test_open_all_week_is_served_with_until_moving_with_the_clock(service: StatusService) -> None:
    # Open all week, `until` is the end of the 8 days looked at: it moves with the clock, and the view
    # writes it in, until the next unavailability comes within those 8 days.
    rid = "view-always"
    store = service.store
    start = T0 + timedelta(days=10)
    holiday = Unavailability(start, start + timedelta(hours=2), UnavailabilityReason.HOLIDAY)
    await store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN, [holiday])})
    await presence(store, rid, "tablet", 1, DeviceState.ONLINE, T0)
    await service.settle(rid, now=T0)
    for offset in (timedelta(seconds=1), timedelta(seconds=59), timedelta(days=2) - timedelta(microseconds=1)):
        heard = T0 + offset - timedelta(seconds=1)
        await store.heartbeats([(rid, "tablet", 1)], at_ms=to_ms(heard), window_ms=60_000)
        await service.settle(rid, now=heard)  # as the bridge does after a heartbeat that ends a lapse
        view = await served(service, rid, T0 + offset)
        assert view == await derived(service, rid, T0 + offset)
        assert DerivedStatus.model_validate_json(view or "{}").until == T0 + offset + SEARCH
    assert await served(service, rid, T0 + timedelta(days=2)) is None, "the holiday is now within the search"


async def test_open_two_weeks_the_view_ends_when_the_closing_comes_within_the_search(service: StatusService) -> None:
    # Settled on March 4, `until` moves with the clock until the closing of March 15 06:00 UTC comes
    # within the 8 days looked at (March 7 06:00); from then on `until` is that closing.
    rid = "view-spring"
    await service.store.set_profiles({rid: profile_json("A", "America/New_York", SKIPPED_CLOSING)})
    await service.settle(rid, now=SPRING_AHEAD)
    standing = []
    for hour in range(SEARCH // timedelta(hours=1)):
        at = SPRING_AHEAD + timedelta(hours=hour)
        view = await served(service, rid, at)
        if view is not None:
            assert view == await derived(service, rid, at), at
            standing.append(hour)
    assert standing == list(range(66)), "until March 7 06:00"


@dataclass(frozen=True)
class Step:
    after_s: int
    action: str
    device: str = "a"
    epoch: int = 1
    ahead_s: int = 0


HOURS = [OpeningHours(), OVERNIGHT, WEEKDAYS, ALWAYS_OPEN, ALWAYS_CLOSED, SKIPPED_CLOSING]
# Zones and the instant the steps start at: near no DST change, or days before New York springs forward.
PLACES = [("UTC", T0), ("America/Sao_Paulo", T0), ("Europe/Berlin", T0), ("America/New_York", SPRING_AHEAD)]
REASONS = list(UnavailabilityReason)
DELAYS = st.one_of(st.sampled_from([0, 1, 29, 59, 60, 61, 600, 3600, 5 * 3600]), st.integers(0, 20_000))
STEPS = st.builds(
    Step,
    after_s=DELAYS,
    action=st.sampled_from(["birth", "birth", "stop", "beat", "beat", "beat", "settle", "settle", "sweep", "profile"]),
    device=st.sampled_from(["a", "b"]),
    epoch=st.integers(1, 3),
    ahead_s=st.sampled_from([0, 0, 1, 300]),
)


def unavailabilities(origin: datetime) -> st.SearchStrategy[list[Unavailability]]:
    return st.lists(
        st.builds(
            lambda start, minutes, reason: Unavailability(
                origin + timedelta(minutes=start), origin + timedelta(minutes=start + minutes), reason
            ),
            st.one_of(st.integers(-600, 3000), st.integers(3000, 17_000)),  # up to ~12 days ahead
            st.one_of(st.integers(1, 600), st.integers(600, 20_000)),
            st.sampled_from(REASONS),
        ),
        max_size=3,
    )


READS = st.lists(
    st.sampled_from([-10, 0, 1, 30, 59, 60, 61, 3600, 30_000, 100_000, 300_000, 700_000]), min_size=1, max_size=4
)


@dataclass(frozen=True)
class Scenario:
    hours: OpeningHours
    zone: str
    origin: datetime  # the instant the steps start at
    first: list[Unavailability]  # the profile's unavailabilities, and those of the profile it changes to
    second: list[Unavailability]
    steps: list[Step]
    reads: list[int]  # seconds after each step at which the view is read


SCENARIOS = st.sampled_from(PLACES).flatmap(
    lambda place: st.builds(
        Scenario,
        hours=st.sampled_from(HOURS),
        zone=st.just(place[0]),
        origin=st.just(place[1]),
        first=unavailabilities(place[1]),
        second=unavailabilities(place[1]),
        steps=st.lists(STEPS, min_size=1, max_size=25),
        reads=READS,
    )
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=SCENARIOS)
def test_a_view_served_is_always_the_status_derived_at_that_instant(settings: Settings, scenario: Scenario) -> None:
    asyncio.run(_replay(settings, scenario))


async def _replay(settings: Settings, scenario: Scenario) -> None:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    service = StatusService(PresenceStore(redis, settings.redis_prefix), WINDOW)
    try:
        async with view_copy(service):  # as the API reads them
            await _steps(service, f"view-prop-{next(_rids)}", scenario)
    finally:
        await redis.aclose()


async def _steps(service: StatusService, rid: str, scenario: Scenario) -> None:
    hours, zone, first, second = scenario.hours, scenario.zone, scenario.first, scenario.second
    steps, reads = scenario.steps, scenario.reads
    store = service.store
    profiles = [profile_json("A", zone, hours, first), profile_json("A", zone, hours, second)]
    await store.set_profiles({rid: profiles[0]})
    now = scenario.origin
    for i, step in enumerate(steps):
        now += timedelta(seconds=step.after_s, milliseconds=i)
        if step.action in ("birth", "stop"):
            state = DeviceState.ONLINE if step.action == "birth" else DeviceState.OFFLINE
            await presence(store, rid, step.device, step.epoch, state, now)
        elif step.action == "beat":
            await store.heartbeats([(rid, step.device, step.epoch)], at_ms=to_ms(now), window_ms=60_000)
        elif step.action == "settle":
            await service.settle(rid, now=now + timedelta(seconds=step.ahead_s))
        elif step.action == "sweep":
            cutoff = to_ms(now - WINDOW)
            stale = [(r, d, score, Event(type=EventType.DEVICE_OFFLINE, restaurant_id=r, device_id=d))
                     for r, d, score in await store.stale_candidates(cutoff) if r == rid]  # fmt: skip
            await store.mark_stale(stale, cutoff)
        else:
            await store.set_profiles({rid: profiles[i % 2]})
        for offset in reads:
            at = now + timedelta(seconds=offset)
            view = await served(service, rid, at)
            if view is not None:
                assert view == await derived(service, rid, at), f"step {i} {step}, read at {offset:+} s"


def test_last_seen_is_written_as_pydantic_writes_it() -> None:
    for stamp in (1_764_170_000_000, 1_764_170_000_001, 1_764_170_000_120, 1_764_170_000_999):
        status = DerivedStatus(restaurant_id="r", online=True, last_seen=from_ms(stamp))
        assert f'"last_seen":{iso_ms(stamp)},' in status.model_dump_json()
