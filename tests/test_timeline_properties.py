"""Live status, timeline and offline seconds agree: hypothesis over hours, zones, DST and sessions.

Each example builds a restaurant (hours per weekday, possibly crossing midnight or closed, in a zone
with daylight saving around one of its changes), overlapping and cancelled unavailabilities, and
device sessions (wills, graceful stops, silent apps going stale, revivals). `core.replay` turns them
into the STATUS_CHANGED points the platform emits; `core.timeline` turns points into intervals and
per-day offline seconds. Every boundary is on a whole minute, so counting minutes is exact.
"""

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from core.hours import DayHours, OpeningHours, zone
from core.replay import Session, facts_at, status_points
from core.status import OfflineReason, RestaurantRules, Unavailability, UnavailabilityReason, derive_status
from core.timeline import Point, disconnected_seconds_by_day, intervals

WINDOW = timedelta(minutes=2)
SPAN = timedelta(days=3)
MINUTE = timedelta(minutes=1)

# Zones and a day near each one's daylight-saving change in 2026 (Sao Paulo has none since 2019).
ZONES = [
    ("America/Sao_Paulo", datetime(2026, 11, 24, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 3, 7, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 10, 31, tzinfo=UTC)),
    ("Europe/London", datetime(2026, 3, 28, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2026, 10, 24, tzinfo=UTC)),
    ("Australia/Sydney", datetime(2026, 4, 4, tzinfo=UTC)),
    ("UTC", datetime(2026, 6, 1, tzinfo=UTC)),
]

hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
day_hours = st.one_of(
    st.none(),
    st.just(DayHours(open="10:00", close="23:00")),
    st.builds(lambda o, c: DayHours(open=o, close=c), hhmm, hhmm),  # close <= open crosses midnight
)
hours = st.builds(
    OpeningHours, mon=day_hours, tue=day_hours, wed=day_hours, thu=day_hours, fri=day_hours, sat=day_hours,
    sun=day_hours,
)
minutes = st.integers(0, int(SPAN / MINUTE) - 1)


@st.composite
def unavailabilities(draw: st.DrawFn, origin: datetime) -> list[Unavailability]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        start = origin + draw(minutes) * MINUTE
        end = start + draw(st.integers(1, 24 * 60)) * MINUTE
        cancelled = None
        if draw(st.booleans()) and draw(st.booleans()):
            cancelled = origin + draw(minutes) * MINUTE  # before, during or after it
        out.append(Unavailability(start, end, draw(st.sampled_from(UnavailabilityReason)), cancelled))
    return out


@st.composite
def sessions(draw: st.DrawFn, origin: datetime) -> list[Session]:
    out = []
    for did in ("tablet", "pos")[: draw(st.integers(1, 2))]:
        at = origin + draw(st.integers(0, 600)) * MINUTE
        for _ in range(draw(st.integers(0, 4))):
            length = draw(st.integers(1, 20 * 60)) * MINUTE
            # Heartbeats every minute for a while; a silent app stops early and goes stale.
            silent_after = draw(st.integers(0, int(length / MINUTE)))
            beats = tuple(at + i * MINUTE for i in range(1, silent_after + 1))
            if silent_after == 0 and draw(st.booleans()):
                # A revival: a late heartbeat of the same live session after it went stale.
                beats = (at + WINDOW + 3 * MINUTE,)
            ended = draw(st.booleans())
            out.append(Session(did, at, at + length if ended else None, beats))
            at = at + length + draw(st.integers(0, 600)) * MINUTE
    return out


@st.composite
def restaurants(draw: st.DrawFn) -> tuple[RestaurantRules, list[Session], datetime]:
    tz_name, near = draw(st.sampled_from(ZONES))
    origin = near - timedelta(days=1)
    rules = RestaurantRules(hours=draw(hours), timezone=tz_name, unavailabilities=draw(unavailabilities(origin)))
    return rules, draw(sessions(origin)), origin


def points_of(rules: RestaurantRules, sess: list[Session], origin: datetime) -> list[Point]:
    return [Point(at, status.core) for at, status in status_points("r", rules, sess, origin, origin + SPAN, WINDOW)]


def disconnected_at(rules: RestaurantRules, sess: list[Session], at: datetime) -> bool:
    return derive_status("r", rules, facts_at(sess, at, WINDOW), at, WINDOW).reason is OfflineReason.DISCONNECTED


@settings(max_examples=100, deadline=None)
@given(restaurants(), st.lists(st.integers(0, int(SPAN.total_seconds()) - 1), min_size=5, max_size=20))
def test_timeline_sampled_anywhere_equals_the_live_status(
    case: tuple[RestaurantRules, list[Session], datetime], offsets: list[int]
) -> None:
    rules, sess, origin = case
    end = origin + SPAN
    timeline = intervals(points_of(rules, sess, origin), origin, end, now=end)
    assert timeline[0].start == origin and timeline[-1].end == end
    assert all(a.end == b.start for a, b in itertools.pairwise(timeline)), "contiguous"
    for offset in offsets:
        at = origin + timedelta(seconds=offset)
        (interval,) = [i for i in timeline if i.start <= at < i.end]
        status = derive_status("r", rules, facts_at(sess, at, WINDOW), at, WINDOW)
        assert (interval.online, interval.reason, interval.detail) == (status.online, status.reason, status.detail)


@settings(max_examples=100, deadline=None)
@given(restaurants())
def test_each_transition_is_stamped_with_its_own_instant(case: tuple[RestaurantRules, list[Session], datetime]) -> None:
    """`since` of the status the platform publishes at a transition is the transition's instant."""
    rules, sess, origin = case
    for at, status in status_points("r", rules, sess, origin, origin + SPAN, WINDOW)[1:]:
        assert status.since == at, (at, status)


@settings(max_examples=25, deadline=None)  # 4,320 samples each: 40 took 14-24 s in make test
@given(restaurants())
def test_offline_seconds_per_day_equal_a_brute_force_count(
    case: tuple[RestaurantRules, list[Session], datetime],
) -> None:
    rules, sess, origin = case
    end = origin + SPAN
    per_day = disconnected_seconds_by_day(intervals(points_of(rules, sess, origin), origin, end, now=end),
                                          rules.timezone)
    tz = zone(rules.timezone)
    brute: Counter[date] = Counter()
    at = origin
    while at < end:  # every boundary is on a whole minute: one sample per minute is exact
        if disconnected_at(rules, sess, at):
            brute[at.astimezone(tz).date()] += 60
        at += MINUTE
    assert {d: s for d, s in per_day.items() if s} == dict(brute)
