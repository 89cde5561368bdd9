"""The one pure function that decides a restaurant's derived status (DESIGN.md §1, §5)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from core.hours import OpeningHours, last_close_before, next_boundary_after, next_open_after, opening_at
from core.messages import DeviceState


class OfflineReason(StrEnum):
    CLOSED = "CLOSED"
    UNAVAILABLE = "UNAVAILABLE"
    DISCONNECTED = "DISCONNECTED"


class UnavailabilityReason(StrEnum):
    LACK_OF_DELIVERY_STAFF = "LACK_OF_DELIVERY_STAFF"
    CONNECTION_ISSUES = "CONNECTION_ISSUES"
    OVERLOADED_OFFLINE_ORDERS = "OVERLOADED_OFFLINE_ORDERS"
    HOLIDAY = "HOLIDAY"
    OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class Unavailability:
    """A scheduled window; a cancelled one ends at its cancel time (or never began)."""

    start: datetime
    end: datetime
    reason: UnavailabilityReason
    cancelled_at: datetime | None = None

    @property
    def effective_end(self) -> datetime:
        return self.end if self.cancelled_at is None else min(self.end, self.cancelled_at)

    def covers(self, at: datetime) -> bool:
        return self.start <= at < self.effective_end


@dataclass(frozen=True, slots=True)
class DeviceFact:
    """What Redis holds of one device: the greatest (epoch, state) seen and its last heartbeat."""

    device_id: str
    epoch: int
    state: DeviceState
    last_seen: datetime | None
    changed_at: datetime | None = None

    def connected_at(self, at: datetime, window: timedelta) -> bool:
        return self.state is DeviceState.ONLINE and self.last_seen is not None and at - self.last_seen < window


@dataclass(frozen=True, slots=True)
class RestaurantRules:
    """The clock side of a restaurant: its hours, zone and unavailabilities."""

    hours: OpeningHours = field(default_factory=OpeningHours)
    timezone: str = "America/Sao_Paulo"
    unavailabilities: Sequence[Unavailability] = ()


class StatusCore(BaseModel):
    """The part of a status whose change is a transition (one STATUS_CHANGED each)."""

    model_config = ConfigDict(frozen=True)

    online: bool
    reason: OfflineReason | None = None
    detail: str | None = None


class DerivedStatus(StatusCore):
    restaurant_id: str
    since: datetime | None = None
    until: datetime | None = None
    last_seen: datetime | None = None
    devices_connected: int = 0

    @property
    def core(self) -> StatusCore:
        return StatusCore(online=self.online, reason=self.reason, detail=self.detail)


def _covering(unavailabilities: Sequence[Unavailability], at: datetime) -> list[Unavailability]:
    return sorted((u for u in unavailabilities if u.covers(at)), key=lambda u: (u.start, u.reason))


def _unavailable_since(unavailabilities: Sequence[Unavailability], at: datetime) -> datetime:
    """Start of the union of overlapping unavailabilities that covers `at`."""
    since = at
    changed = True
    while changed:
        changed = False
        for u in unavailabilities:
            if u.start < since <= u.effective_end:
                since = u.start
                changed = True
    return since


def _detail_since(
    unavailabilities: Sequence[Unavailability], now: datetime, opened: datetime, reason: UnavailabilityReason
) -> datetime:
    """When the restaurant became unavailable for this reason, within the opening that began at `opened`.

    Overlapping unavailabilities with different reasons change the detail (a transition of its own)
    without a gap, so this walks back over their boundaries, not just to the start of their union.
    """
    tick = timedelta(microseconds=1)
    bounds = {t for u in unavailabilities for t in (u.start, u.effective_end) if opened < t <= now}
    for bound in sorted(bounds, reverse=True):
        before = _covering(unavailabilities, bound - tick)
        if not before or before[0].reason is not reason:
            return bound
    return max(opened, _unavailable_since(unavailabilities, now))


def unavailable_until(unavailabilities: Sequence[Unavailability], at: datetime) -> datetime:
    until = at
    changed = True
    while changed:
        changed = False
        for u in unavailabilities:
            if u.start <= until < u.effective_end:
                until = u.effective_end
                changed = True
    return until


def next_unavailability_start(unavailabilities: Sequence[Unavailability], at: datetime) -> datetime | None:
    starts = [u.start for u in unavailabilities if u.start > at and u.effective_end > u.start]
    return min(starts, default=None)


def derive_status(
    restaurant_id: str,
    rules: RestaurantRules,
    devices: Sequence[DeviceFact],
    now: datetime,
    window: timedelta,
    previous: DerivedStatus | None = None,
) -> DerivedStatus:
    """Decide the status at `now`: CLOSED, then UNAVAILABLE, then DISCONNECTED, else online."""
    connected = [d for d in devices if d.connected_at(now, window)]
    seen = [d.last_seen for d in devices if d.last_seen is not None and d.last_seen <= now]
    last_seen = max(seen, default=None)
    opening = opening_at(rules.hours, rules.timezone, now)
    covering = _covering(rules.unavailabilities, now)

    if opening is None:
        core = StatusCore(online=False, reason=OfflineReason.CLOSED)
        since = last_close_before(rules.hours, rules.timezone, now)
        until = next_open_after(rules.hours, rules.timezone, now)
    elif covering:
        core = StatusCore(online=False, reason=OfflineReason.UNAVAILABLE, detail=covering[0].reason.value)
        since = _detail_since(rules.unavailabilities, now, opening[0], covering[0].reason)
        until = min(opening[1], unavailable_until(rules.unavailabilities, now))
    else:
        unav_end = max(
            (u.effective_end for u in rules.unavailabilities if u.effective_end <= now and u.effective_end > u.start),
            default=opening[0],
        )
        clock_since = max(opening[0], unav_end)
        next_unav = next_unavailability_start(rules.unavailabilities, now)
        until = opening[1] if next_unav is None else min(opening[1], next_unav)
        if connected:
            core = StatusCore(online=True)
            link_since = min((d.changed_at or now) for d in connected)
        else:
            core = StatusCore(online=False, reason=OfflineReason.DISCONNECTED)
            link_since = _disconnected_since(devices, window, now)
        since = max(clock_since, link_since)

    if previous is not None and previous.since is not None and (
        previous.core == core or (since is not None and since < previous.since)
    ):
        # The same status goes on; and a new one never begins before the one it follows (a device fact
        # stamped at its arrival may be applied after a clock boundary committed a later status).
        since = previous.since
    return DerivedStatus(
        restaurant_id=restaurant_id,
        online=core.online,
        reason=core.reason,
        detail=core.detail,
        since=since,
        until=until,
        last_seen=last_seen,
        devices_connected=len(connected),
    )


def _disconnected_since(devices: Sequence[DeviceFact], window: timedelta, now: datetime) -> datetime:
    """When the last device stopped counting: its will/graceful time, or its heartbeat window ran out.

    A device silent past its window before its will or graceful stop stopped counting when the window
    ran out: a bridge behind its devices may apply the stop before its sweep has judged the silence,
    and the stretch in between was lost (the full churn run's final stop, 2.2 s).
    """
    ends: list[datetime] = []
    for d in devices:
        if d.state is DeviceState.OFFLINE and d.changed_at is not None:
            silent = d.last_seen + window if d.last_seen is not None else d.changed_at
            ends.append(min(d.changed_at, silent))
        elif d.last_seen is not None:
            ends.append(d.last_seen + window)
    candidates = [t for t in ends if t <= now]
    return max(candidates, default=datetime.min.replace(tzinfo=now.tzinfo))


def next_clock_boundary(rules: RestaurantRules, at: datetime) -> datetime | None:
    """The first instant after `at` where the clock alone may change the status: an opening, a
    closing, or an unavailability's start or end. Device facts never enter here; None: none in 8 days.
    """
    hours = next_boundary_after(rules.hours, rules.timezone, at)
    candidates: list[datetime] = [] if hours is None else [hours]
    for u in rules.unavailabilities:
        if u.effective_end > u.start:
            candidates.extend(t for t in (u.start, u.effective_end) if t > at)
    return min(candidates, default=None)
