"""The pure rules: payload parsing, opening hours and the derived status (DESIGN.md §1, §3, §5)."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidMessage
from core.hours import DayHours, OpeningHours, open_intervals, opening_at
from core.ids import ids_are_valid, is_valid_id, parse_device_topic
from core.messages import MAX_EPOCH, DeviceState, heartbeat_fields, parse_heartbeat, parse_presence
from core.status import DeviceFact, OfflineReason, RestaurantRules, Unavailability, UnavailabilityReason, derive_status

WINDOW = timedelta(seconds=120)
SP = "America/Sao_Paulo"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[]", "bad_heartbeat"),
        (b'{"epoch": true, "ts": 1}', "bad_heartbeat"),
        (b'{"epoch": "3", "ts": 1}', "bad_heartbeat"),
        (b'{"epoch": -1, "ts": 1}', "bad_heartbeat"),
        (b'{"epoch": 1}', "bad_heartbeat"),
        (b"{" + b" " * 2000 + b"}", "oversized_payload"),
    ],
)
def test_bad_heartbeats_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_heartbeat(payload)
    assert caught.value.reason == reason


def read_both_ways(payload: bytes, max_bytes: int) -> tuple[object, object]:
    """What `heartbeat_fields` and the model make of it: (epoch, ts) or the reason it is refused."""
    answers: list[object] = []
    for read in (heartbeat_fields, lambda p, m: (lambda h: (h.epoch, h.ts))(parse_heartbeat(p, m))):
        try:
            answers.append(read(payload, max_bytes))
        except InvalidMessage as exc:
            answers.append(exc.reason)
    return answers[0], answers[1]


numbers = st.one_of(st.integers(-5, 5), st.integers(MAX_EPOCH - 2, MAX_EPOCH + 2), st.integers(-(10**20), 10**20))
numerals = st.one_of(numbers.map(lambda n: str(n).encode()), st.sampled_from([b"01", b"1.0", b"1e3", b"-0", b'"7"']))


@given(numerals, numerals, st.sampled_from([b'{"epoch":%b,"ts":%b}', b'{"epoch": %b, "ts": %b}',
                                            b'{"ts":%b,"epoch":%b}', b'{"epoch":%b,"ts":%b}\n']),
       st.sampled_from([1024, 20]))  # fmt: skip
def test_the_fast_heartbeat_reading_agrees_with_the_model(epoch: bytes, ts: bytes, form: bytes, limit: int) -> None:
    fast, model = read_both_ways(form % (epoch, ts), limit)
    assert fast == model


@given(st.binary(max_size=40))
def test_the_fast_heartbeat_reading_agrees_with_the_model_on_any_bytes(payload: bytes) -> None:
    fast, model = read_both_ways(payload, 1024)
    assert fast == model


def test_presence_payloads() -> None:
    assert parse_presence(b'{"state": "online", "epoch": 3, "ts": 1}').state is DeviceState.ONLINE
    assert parse_presence(b'{"state": "offline", "epoch": 3, "ts": 1, "cause": "graceful"}').cause == "graceful"
    with pytest.raises(InvalidMessage):
        parse_presence(b'{"state": "gone", "epoch": 3, "ts": 1}')


@pytest.mark.parametrize(
    "topic",
    ["restaurants/a/devices/b/status", "restaurants/a b/devices/b/presence", "x/a/devices/b/presence",
     "restaurants/" + "a" * 65 + "/devices/b/heartbeat", "restaurants/a/devices//presence",
     "restaurants/a/devices/b/heartbeat\n"],
)
def test_bad_topics(topic: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_device_topic(topic)


@pytest.mark.parametrize("value", ["a\n", "a\nb", "", "a" * 65, "a b", "é", "a/b", "\n"])
def test_bad_ids(value: str) -> None:
    # A trailing newline once passed: `$` also matches before a final "\n".
    assert not is_valid_id(value)
    assert not ids_are_valid([value]) and not ids_are_valid(["good", value])


def test_good_ids() -> None:
    assert is_valid_id("a") and is_valid_id("A-z_09" * 10 + "abcd")
    assert ids_are_valid(["a", "b-1", "C_2"]) and not ids_are_valid([])


def test_default_hours_in_sao_paulo() -> None:
    hours = OpeningHours()
    assert opening_at(hours, SP, at("2026-11-25T09:59:59-03:00")) is None
    assert opening_at(hours, SP, at("2026-11-25T10:00:00-03:00")) == (
        at("2026-11-25T10:00:00-03:00"),
        at("2026-11-25T23:00:00-03:00"),
    )
    assert opening_at(hours, SP, at("2026-11-25T23:00:00-03:00")) is None


def test_a_day_that_crosses_midnight_and_a_closed_day() -> None:
    hours = OpeningHours(fri=DayHours(open="18:00", close="02:00"), sat=None)
    # Friday 2026-11-27 18:00 until Saturday 02:00, and Saturday is closed.
    assert opening_at(hours, SP, at("2026-11-28T01:30:00-03:00")) == (
        at("2026-11-27T18:00:00-03:00"),
        at("2026-11-28T02:00:00-03:00"),
    )
    assert opening_at(hours, SP, at("2026-11-28T12:00:00-03:00")) is None


def test_daylight_saving_change_keeps_local_hours() -> None:
    ny = "America/New_York"
    # 2026-11-01: clocks go back; 10:00 local is 15:00 UTC after the change and 14:00 UTC before.
    assert opening_at(OpeningHours(), ny, at("2026-10-31T14:30:00+00:00")) is not None
    assert opening_at(OpeningHours(), ny, at("2026-11-01T14:30:00+00:00")) is None
    assert opening_at(OpeningHours(), ny, at("2026-11-01T15:00:00+00:00")) is not None


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)))
def test_open_intervals_are_sorted_disjoint_and_inside_the_range(start: datetime) -> None:
    lo = start.replace(tzinfo=UTC)
    hours = OpeningHours(mon=DayHours(open="22:00", close="03:00"), tue=DayHours(open="00:00", close="00:00"))
    intervals = open_intervals(hours, "Europe/Berlin", lo, lo + timedelta(days=9))
    for (a, b), (c, _d) in itertools.pairwise(intervals):
        assert a < b < c
    assert all(lo <= a < b <= lo + timedelta(days=9) for a, b in intervals)


def device(state: DeviceState, seen: datetime | None, epoch: int = 1) -> DeviceFact:
    return DeviceFact("tablet", epoch, state, seen, seen)


def test_status_precedence_closed_then_unavailable_then_disconnected() -> None:
    noon = at("2026-11-25T12:00:00-03:00")
    night = at("2026-11-25T23:30:00-03:00")
    live = [device(DeviceState.ONLINE, noon - timedelta(seconds=10))]
    holiday = Unavailability(noon - timedelta(hours=1), noon + timedelta(hours=1), UnavailabilityReason.HOLIDAY)
    plain = RestaurantRules()
    off = RestaurantRules(unavailabilities=(holiday,))

    assert derive_status("r", plain, live, noon, WINDOW).online
    closed = derive_status("r", off, [device(DeviceState.ONLINE, night)], night, WINDOW)
    assert (closed.reason, closed.until) == (OfflineReason.CLOSED, at("2026-11-26T10:00:00-03:00"))
    unavailable = derive_status("r", off, live, noon, WINDOW)
    assert (unavailable.reason, unavailable.detail) == (OfflineReason.UNAVAILABLE, "HOLIDAY")
    assert unavailable.until == noon + timedelta(hours=1)
    gone = derive_status("r", plain, [device(DeviceState.OFFLINE, noon - timedelta(minutes=5))], noon, WINDOW)
    assert gone.reason is OfflineReason.DISCONNECTED


def test_a_silent_device_is_stale_after_the_window() -> None:
    noon = at("2026-11-25T12:00:00-03:00")
    silent = [device(DeviceState.ONLINE, noon - WINDOW - timedelta(seconds=1))]
    status = derive_status("r", RestaurantRules(), silent, noon, WINDOW)
    assert status.reason is OfflineReason.DISCONNECTED and status.devices_connected == 0
    assert status.since == noon - timedelta(seconds=1)


def test_a_device_silent_before_its_stop_stopped_counting_when_its_window_ran_out() -> None:
    # The full churn run's final stop: a silent device's window ran out at 12:00, its graceful stop came
    # at 12:00:02.2, and the bridge, seconds behind, applied the stop before its sweep had judged the
    # silence: DISCONNECTED was committed from 12:00:02.2, and 2.2 s of it were lost from the ranking.
    noon = at("2026-11-25T12:00:00-03:00")
    stop = noon + timedelta(seconds=2.2)
    silent_then_stopped = DeviceFact("tablet", 1, DeviceState.OFFLINE, noon - WINDOW, stop)
    status = derive_status("r", RestaurantRules(), [silent_then_stopped], stop, WINDOW)
    assert (status.reason, status.since) == (OfflineReason.DISCONNECTED, noon)
    alive_then_stopped = DeviceFact("tablet", 1, DeviceState.OFFLINE, stop - timedelta(seconds=30), stop)
    assert derive_status("r", RestaurantRules(), [alive_then_stopped], stop, WINDOW).since == stop


def test_a_new_status_never_begins_before_the_one_it_follows() -> None:
    # The bridge stamps a graceful stop when it arrived (11:59:59.5), but applies it after the scheduler
    # committed "online since 12:00" at an unavailability's end: DISCONNECTED begins at 12:00, not before.
    noon = at("2026-11-25T12:00:00-03:00")
    ended = Unavailability(noon - timedelta(hours=1), noon, UnavailabilityReason.HOLIDAY)
    rules = RestaurantRules(unavailabilities=(ended,))
    online = derive_status("r", rules, [device(DeviceState.ONLINE, noon - timedelta(seconds=5))], noon, WINDOW)
    assert online.online and online.since == noon
    stopped = DeviceFact("tablet", 1, DeviceState.OFFLINE, noon - timedelta(seconds=5), noon - timedelta(seconds=0.5))
    later = noon + timedelta(seconds=1)
    assert derive_status("r", rules, [stopped], later, WINDOW).since == noon  # without the previous status
    rules = RestaurantRules()  # the same fact against a status that began after it
    previous = online.model_copy(update={"since": noon + timedelta(seconds=0.2)})
    gone = derive_status("r", rules, [stopped], later, WINDOW, previous=previous)
    assert gone.reason is OfflineReason.DISCONNECTED and gone.since == noon + timedelta(seconds=0.2)
    assert derive_status("r", rules, [stopped], later, WINDOW).since == noon - timedelta(seconds=0.5)


def test_a_cancelled_unavailability_ends_at_its_cancel_time() -> None:
    noon = at("2026-11-25T12:00:00-03:00")
    cancelled = Unavailability(
        noon - timedelta(hours=1), noon + timedelta(hours=1), UnavailabilityReason.OTHER, cancelled_at=noon
    )
    live = [device(DeviceState.ONLINE, noon)]
    rules = RestaurantRules(unavailabilities=(cancelled,))
    assert derive_status("r", rules, live, noon - timedelta(minutes=1), WINDOW).reason is OfflineReason.UNAVAILABLE
    assert derive_status("r", rules, live, noon + timedelta(seconds=1), WINDOW).online
