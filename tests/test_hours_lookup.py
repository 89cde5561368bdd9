"""The cached, bisected lookups of core.hours equal the plain scans they replaced (hypothesis).

`opening_at`, `last_close_before` and `next_open_after` run for every restaurant on every status read;
they now search a cached span of merged intervals. The references below are the former definitions,
straight from `open_intervals` over the searched range.
"""

from datetime import UTC, datetime, timedelta

from beanie.odm.utils.encoder import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from core.hours import SEARCH, WEEKDAYS, OpeningHours, last_close_before, next_open_after, open_intervals, opening_at
from tests.test_timeline_properties import ZONES, hours


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


def test_a_restaurant_open_around_the_clock_is_clipped_to_the_search() -> None:
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    always = OpeningHours.model_validate({day: {"open": "00:00", "close": "00:00"} for day in WEEKDAYS})
    assert opening_at(always, "America/Sao_Paulo", at) == (at - SEARCH, at + SEARCH)
    assert next_open_after(always, "America/Sao_Paulo", at) is None


def test_hours_once_used_are_stored_and_compared_by_their_seven_days() -> None:
    """`key` is a cache, not a field: a document saved after its hours served a status must not store it."""
    used, fresh = OpeningHours(), OpeningHours()
    assert used.key[0] == ("10:00", "23:00")
    assert sorted(Encoder().encode(used)) == sorted(WEEKDAYS)  # what Beanie writes to MongoDB
    assert dict(used) == dict(fresh) and used == fresh
    assert OpeningHours.model_validate_json(used.model_dump_json()) == used
