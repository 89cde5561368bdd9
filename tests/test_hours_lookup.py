"""The cached, bisected lookups of core.hours equal the plain scans they replaced (hypothesis).

`opening_at`, `last_close_before` and `next_open_after` run for every restaurant on every status read,
`next_boundary_after` and `opening_end` for every view written (core/status_view.py); they now search a
cached span of merged intervals. The references below are the former definitions, straight from
`open_intervals` over the searched range.
"""

from datetime import UTC, datetime, time, timedelta

from beanie.odm.utils.encoder import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from core.hours import (
    SEARCH,
    WEEKDAYS,
    DayHours,
    OpeningHours,
    last_close_before,
    next_boundary_after,
    next_open_after,
    open_intervals,
    opening_at,
    opening_end,
    zone,
)
from core.status_view import NEVER_CLOSES
from tests.test_timeline_properties import ZONES, day_hours, hhmm, hours

TICK = timedelta(microseconds=1)


def reference_opening_at(h: OpeningHours, tz: str, at: datetime) -> tuple[datetime, datetime] | None:
    for lo, hi in open_intervals(h, tz, at - SEARCH, at + SEARCH):
        if lo <= at < hi:
            return lo, hi
    return None


def reference_last_close_before(h: OpeningHours, tz: str, at: datetime) -> datetime | None:
    intervals = open_intervals(h, tz, at - SEARCH, at)
    return intervals[-1][1] if intervals and intervals[-1][1] <= at else None


def reference_next_open_after(h: OpeningHours, tz: str, at: datetime) -> datetime | None:
    return next((lo for lo, _hi in open_intervals(h, tz, at, at + SEARCH) if lo > at), None)


def reference_next_boundary_after(h: OpeningHours, tz: str, at: datetime) -> datetime | None:
    """`next_clock_boundary`'s hours part: an opening under way 8 days ahead ends there, clipped."""
    candidates: list[datetime] = []
    for lo, hi in open_intervals(h, tz, at, at + timedelta(days=8)):
        candidates.extend(t for t in (lo, hi) if t > at)
    return min(candidates, default=None)


def reference_opening_end(h: OpeningHours, tz: str, at: datetime) -> datetime | None:
    """`opening_end` as far as `view_of` needs it exact: NEVER_CLOSES ahead, where the span reaches."""
    intervals = open_intervals(h, tz, at, at + NEVER_CLOSES)
    return intervals[0][1] if intervals and intervals[0][0] == at else None


@st.composite
def open_but_a_day(draw: st.DrawFn) -> OpeningHours:
    """Open 24 hours from the same time every day, or but one day, whose hours may leave a gap or not.

    Often from midnight: there a span's last opening is cut shortest (SPAN_DAYS).
    """
    around = DayHours(open=(t := draw(st.one_of(st.just("00:00"), hhmm))), close=t)
    odd_day = draw(st.one_of(st.just(around), day_hours))
    return OpeningHours(**dict.fromkeys(WEEKDAYS, around) | {draw(st.sampled_from(WEEKDAYS)): odd_day})


@st.composite
def instants(draw: st.DrawFn, h: OpeningHours, tz: str, near: datetime) -> datetime:
    """Anywhere around a DST change; a local day's last µs, where a span reaches least far ahead; or on
    an opening's or closing's edge (±1 µs) now, 8 or 9 days ahead."""
    at = near + timedelta(seconds=draw(st.integers(-10 * 86400, 3 * 86400)), microseconds=draw(st.integers(0, 999_999)))
    kind = draw(st.sampled_from(["anywhere", "day's end", "edge"]))
    if kind == "day's end":
        local = at.astimezone(zone(tz))
        return datetime.combine(local.date(), time.max, tzinfo=local.tzinfo).astimezone(UTC)
    lo, hi = near - timedelta(days=13), near + timedelta(days=13)
    edges = [t for interval in open_intervals(h, tz, lo, hi) for t in interval if lo < t < hi]
    if kind == "edge" and edges:
        ahead = draw(st.sampled_from([timedelta(0), SEARCH, NEVER_CLOSES]))
        return draw(st.sampled_from(edges)) - ahead + draw(st.sampled_from([-TICK, timedelta(0), TICK]))
    return at


@settings(max_examples=400, deadline=None)
@given(h=hours, place=st.sampled_from(ZONES), offset_s=st.integers(-3 * 86400, 3 * 86400),
       on_minute=st.booleans())  # fmt: skip
def test_lookups_equal_the_scans(
    h: OpeningHours, place: tuple[str, datetime], offset_s: int, on_minute: bool
) -> None:
    tz, near = place
    at = near + timedelta(seconds=offset_s - offset_s % 60 if on_minute else offset_s, microseconds=123)
    at = at.replace(microsecond=0) if on_minute else at  # exactly on a boundary, often
    opening = opening_at(h, tz, at)
    assert opening == reference_opening_at(h, tz, at)
    if opening is None:  # the status function asks for these only while closed
        assert last_close_before(h, tz, at) == reference_last_close_before(h, tz, at)
        assert next_open_after(h, tz, at) == reference_next_open_after(h, tz, at)
    else:
        assert next_open_after(h, tz, at) == reference_next_open_after(h, tz, at)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), h=st.one_of(hours, open_but_a_day()), place=st.sampled_from(ZONES))
def test_the_next_boundary_equals_the_scan(data: st.DataObject, h: OpeningHours, place: tuple[str, datetime]) -> None:
    tz, near = place
    at = data.draw(instants(h, tz, near))
    assert next_boundary_after(h, tz, at) == reference_next_boundary_after(h, tz, at)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), h=st.one_of(hours, open_but_a_day()), place=st.sampled_from(ZONES))
def test_the_opening_end_equals_the_scan(data: st.DataObject, h: OpeningHours, place: tuple[str, datetime]) -> None:
    tz, near = place
    at = data.draw(instants(h, tz, near))
    end = opening_end(h, tz, at)
    assert (min(end, at + NEVER_CLOSES) if end else None) == reference_opening_end(h, tz, at)


def test_a_restaurant_open_around_the_clock_is_clipped_to_the_search() -> None:
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    always = OpeningHours.model_validate({day: {"open": "00:00", "close": "00:00"} for day in WEEKDAYS})
    assert opening_at(always, "America/Sao_Paulo", at) == (at - SEARCH, at + SEARCH)
    assert next_open_after(always, "America/Sao_Paulo", at) is None
    assert next_boundary_after(always, "America/Sao_Paulo", at) == at + SEARCH
    end = opening_end(always, "America/Sao_Paulo", at)
    assert end is not None and end >= at + NEVER_CLOSES


def test_a_span_reaches_nine_days_ahead_across_a_spring_forward() -> None:
    """The least reach of a span (SPAN_DAYS): from 23:59:59.999999 EST, 9 days ahead is 00:59:59.999999 EDT."""
    always = OpeningHours.model_validate({day: {"open": "00:00", "close": "00:00"} for day in WEEKDAYS})
    at = datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=zone("America/New_York")).astimezone(UTC)
    end = opening_end(always, "America/New_York", at)
    assert end is not None and end >= at + NEVER_CLOSES


def test_a_window_lost_in_a_spring_forward_gap_leaves_no_boundary_within_the_search() -> None:
    """02:30-03:00 does not exist on the Sunday New York springs forward: closed two weeks."""
    sundays = OpeningHours(**dict.fromkeys(WEEKDAYS[:6]), sun=DayHours(open="02:30", close="03:00"))
    at = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
    assert next_boundary_after(sundays, "America/New_York", at) is None
    assert reference_next_boundary_after(sundays, "America/New_York", at) is None


def test_an_hour_lost_in_a_spring_forward_gap_makes_an_opening_of_two_weeks() -> None:
    """Open around the clock but Sundays 02:30-03:00: not on the Sunday New York springs forward."""
    around = DayHours(open="03:00", close="03:00")
    gap = OpeningHours(**dict.fromkeys(WEEKDAYS, around) | {"sat": DayHours(open="03:00", close="02:30")})
    closes = datetime(2026, 3, 15, 6, 30, tzinfo=UTC)  # 02:30 EDT, two weeks after 03:00 EST on March 1
    at = closes - NEVER_CLOSES
    assert opening_end(gap, "America/New_York", at) == reference_opening_end(gap, "America/New_York", at) == closes
    assert opening_end(gap, "America/New_York", at + TICK) == closes


def test_hours_once_used_are_stored_and_compared_by_their_seven_days() -> None:
    """`key` is a cache, not a field: a document saved after its hours served a status must not store it."""
    used, fresh = OpeningHours(), OpeningHours()
    assert used.key[0] == ("10:00", "23:00")
    assert sorted(Encoder().encode(used)) == sorted(WEEKDAYS)  # what Beanie writes to MongoDB
    assert dict(used) == dict(fresh) and used == fresh
    assert OpeningHours.model_validate_json(used.model_dump_json()) == used
