"""Replay a restaurant's device sessions through the status function: the statuses it went through.

The reference for everything that summarises statuses over time: the property tests check the
timeline and the offline seconds built from STATUS_CHANGED points against it, and ground-truth
checks compute what the platform should have said from a simulator's log with it.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.hours import open_intervals
from core.messages import DeviceState
from core.status import DerivedStatus, DeviceFact, RestaurantRules, StatusCore, derive_status


@dataclass(frozen=True, slots=True)
class Session:
    """One device connection: born at `start`, ended by a will or graceful offline at `end` (None: not
    ended; it goes stale when its heartbeats stop). The birth counts as the first sign of life."""

    device_id: str
    start: datetime
    end: datetime | None = None
    beats: tuple[datetime, ...] = field(default_factory=tuple)


def _alive_since(session: Session, at: datetime, window: timedelta) -> datetime:
    """The birth, or the heartbeat that revived the session after it had gone stale (as Redis records)."""
    since = previous = session.start
    for beat in session.beats:
        if beat > at:
            break
        if beat - previous >= window:
            since = beat
        previous = beat
    return since


def facts_at(sessions: Iterable[Session], at: datetime, window: timedelta) -> list[DeviceFact]:
    """What Redis would hold at `at` with a prompt stale sweep: per device, its latest session begun by then."""
    latest: dict[str, Session] = {}
    for s in sessions:
        if s.start <= at and (s.device_id not in latest or s.start > latest[s.device_id].start):
            latest[s.device_id] = s
    facts = []
    for did, s in sorted(latest.items()):
        seen = max((b for b in (s.start, *s.beats) if b <= at and (s.end is None or b <= s.end)), default=s.start)
        if s.end is not None and s.end <= at:
            facts.append(DeviceFact(did, 1, DeviceState.OFFLINE, seen, s.end))
        else:
            facts.append(DeviceFact(did, 1, DeviceState.ONLINE, seen, _alive_since(s, at, window)))
    return facts


def candidate_instants(
    rules: RestaurantRules, sessions: Sequence[Session], start: datetime, end: datetime, window: timedelta
) -> list[datetime]:
    """Every instant in [start, end) where the status may change; between them it is constant."""
    times = {start}
    for lo, hi in open_intervals(rules.hours, rules.timezone, start, end):
        times.update((lo, hi))
    for u in rules.unavailabilities:
        times.update((u.start, u.effective_end))
    for s in sessions:
        times.add(s.start)
        if s.end is not None:
            times.add(s.end)
        for beat in (s.start, *s.beats):
            times.update((beat, beat + window))
    return sorted(t for t in times if start <= t < end)


def status_points(
    restaurant_id: str,
    rules: RestaurantRules,
    sessions: Sequence[Session],
    start: datetime,
    end: datetime,
    window: timedelta,
) -> list[tuple[datetime, DerivedStatus]]:
    """The status at `start`, then each transition in [start, end) as (instant, new status)."""
    points: list[tuple[datetime, DerivedStatus]] = []
    previous: DerivedStatus | None = None
    for at in candidate_instants(rules, sessions, start, end, window):
        status = derive_status(restaurant_id, rules, facts_at(sessions, at, window), at, window, previous)
        if previous is None or status.core != previous.core:
            points.append((at, status))
        previous = status
    return points


def status_core_at(
    rules: RestaurantRules, sessions: Sequence[Session], at: datetime, window: timedelta
) -> StatusCore:
    return derive_status("-", rules, facts_at(sessions, at, window), at, window).core
