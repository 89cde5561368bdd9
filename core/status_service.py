"""Status of restaurants from Redis facts, profiles mirrored from MongoDB, and the pure rules."""

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from core.messages import Event, EventType, utc_now
from core.presence_store import PresenceStore, RestaurantSnapshot, View, parse_profile
from core.profiles import load_profiles
from core.state_marker import StateLost
from core.status import DerivedStatus, derive_status
from core.status_view import StatusViews, view_of

logger = logging.getLogger(__name__)

MAX_COMMIT_RETRIES = 20
UNKNOWN_TTL_S = 10.0
BATCH_RETRY_CONCURRENCY = 16  # restaurants of a batch settled again one by one at the same time


@dataclass(frozen=True, slots=True)
class Settled:
    """A committed transition: its STATUS_CHANGED (in the outbox field) and the retained status to publish."""

    status: DerivedStatus
    event: Event
    outbox_field: str
    status_json: str


@dataclass(slots=True)
class BatchSettled:
    """What `settle_batch` did: every known restaurant went through unless it is in `failed`."""

    snapshots: list[RestaurantSnapshot] = field(default_factory=list)  # the known restaurants, as first read
    settled: dict[str, Settled] = field(default_factory=dict)  # committed transitions, to publish
    unknown: list[str] = field(default_factory=list)  # in neither Redis nor MongoDB
    failed: dict[str, Exception] = field(default_factory=dict)  # not settled; the caller decides what next


def as_of(snap: RestaurantSnapshot, at: datetime) -> datetime:
    """`at`, or later where the restaurant's facts or committed status are newer.

    A bridge behind its devices settles a batch as of the batch's receipt (`settle_batch(now=...)`), not
    the wall clock: a graceful stop received before an unavailability's start but applied after it must
    still commit its DISCONNECTED stretch. A status is never derived for an instant before facts Redis
    already holds (another bridge's, newer) or before the status it would follow.
    """
    times = [at]
    if snap.last_status is not None and snap.last_status.since is not None:
        times.append(snap.last_status.since)
    for device in snap.devices:
        times.extend(t for t in (device.changed_at, device.last_seen) if t is not None)
    return max(times)


class StatusService:
    """The one place live status is computed, for the API, the bridge and the scheduler alike."""

    def __init__(self, store: PresenceStore, window: timedelta, unknown_ttl_s: float = UNKNOWN_TTL_S) -> None:
        self.store = store
        self.window = window
        self.unknown_ttl_s = unknown_ttl_s
        self._unknown_until: dict[str, float] = {}
        self.views = StatusViews(store, window)

    async def fill_profiles(self, snaps: Sequence[RestaurantSnapshot]) -> list[str]:
        """Load from MongoDB the profiles Redis lacks (Redis lost, or provisioned elsewhere); return unknown ids.

        Provisioning writes the profile to Redis itself, so an id missing from both is remembered as
        unknown for a short while: a batch full of bad ids must not scan MongoDB every time.
        """
        now = time.monotonic()
        missing = [s.restaurant_id for s in snaps if s.rules is None]
        if not missing:
            return []
        ask = [rid for rid in missing if self._unknown_until.get(rid, 0.0) < now]
        found = await load_profiles(ask) if ask else {}
        for rid in ask:
            if rid not in found:
                self._unknown_until[rid] = now + self.unknown_ttl_s
        if len(self._unknown_until) > 100_000:
            self._unknown_until = {k: v for k, v in self._unknown_until.items() if v >= now}
        if found:
            await self.store.put_profiles(found)
        for snap in snaps:
            profile = found.get(snap.restaurant_id)
            if profile is not None and snap.rules is None:
                snap.rules, snap.group = parse_profile(profile)
        return [rid for rid in missing if rid not in found]

    def derive(self, snap: RestaurantSnapshot, now: datetime) -> DerivedStatus:
        assert snap.rules is not None, "fill_profiles first"
        return derive_status(snap.restaurant_id, snap.rules, snap.devices, now, self.window, snap.last_status)

    async def current(
        self, restaurant_ids: Sequence[str], now: datetime | None = None
    ) -> tuple[list[DerivedStatus], list[str]]:
        """Statuses of the known ids, in the order asked, and the unknown ids."""
        at = now or utc_now()
        snaps = await self.store.snapshots(list(dict.fromkeys(restaurant_ids)))
        unknown = set(await self.fill_profiles(snaps))
        statuses = [self.derive(s, at) for s in snaps if s.restaurant_id not in unknown]
        return statuses, [rid for rid in dict.fromkeys(restaurant_ids) if rid in unknown]

    async def current_json(self, restaurant_ids: Sequence[str], now: datetime) -> tuple[list[str], list[str], int]:
        """`current` as JSON texts: served from the views that stand at `now`, the others derived.

        Returns the statuses in the order asked, the unknown ids, and how many came from views.
        """
        ids = list(dict.fromkeys(restaurant_ids))
        views = await self.views.read(ids, now)
        if None not in views:  # every one standing, as nearly always in a running platform
            return cast(list[str], views), [], len(ids)
        missing = [rid for rid, view in zip(ids, views, strict=True) if view is None]
        derived: dict[str, str] = {}
        unknown: list[str] = []
        if missing:
            statuses, unknown = await self.current(missing, now)
            derived = {s.restaurant_id: s.model_dump_json() for s in statuses}
        out: list[str] = []
        for rid, view in zip(ids, views, strict=True):
            text = view if view is not None else derived.get(rid)
            if text is not None:
                out.append(text)
        return out, unknown, len(ids) - len(missing)

    async def settle(self, restaurant_id: str, now: datetime | None = None) -> Settled | None:
        """Recompute and commit one restaurant's status; returns what to publish on a transition.

        Optimistic: if the facts change between read and commit the read is repeated, so concurrent
        bridges, the scheduler and the API agree on exactly one STATUS_CHANGED per transition.
        """
        for _ in range(MAX_COMMIT_RETRIES):
            snap = await self.store.snapshot(restaurant_id)
            if await self.fill_profiles([snap]):
                return None
            at = as_of(snap, now) if now else utc_now()
            status = self.derive(snap, at)
            event = Event(
                type=EventType.STATUS_CHANGED,
                restaurant_id=restaurant_id,
                data=status.model_dump(mode="json"),
            )
            status_json = status.model_dump_json()
            view = view_of(snap, status, at, self.window, status_json)
            code, field = await self.store.commit_status(restaurant_id, snap.version, status, event, view, status_json)
            if code == 1:
                return Settled(status, event, field, status_json)
            if code == 0:
                return None
            if code == -2:
                raise StateLost(restaurant_id)
        logger.warning("status of %s kept moving; gave up after %d tries", restaurant_id, MAX_COMMIT_RETRIES)
        return None

    async def settle_batch(
        self, restaurant_ids: Sequence[str], now: datetime | None = None, each: Mapping[str, datetime] | None = None
    ) -> BatchSettled:
        """`settle` for many restaurants (the scheduler's bursts): one pipelined read, one pipeline of commits.

        `now` is the instant to settle as of (the wall clock if None); `each` overrides it per restaurant
        (the scheduler's claims: each as of the boundary it was due at).

        The commits are not a transaction: each is still `commit_status.lua` on its own key, a
        compare-and-set on the version read. A restaurant whose facts moved between the read and its
        commit is settled again on its own through `settle`, so whoever commits a transition first
        still writes the only STATUS_CHANGED. A restaurant that fails is reported in `failed`, the
        others go on; an error of the batch's own round trips is raised (retrying the batch is safe).
        """
        ids = list(dict.fromkeys(restaurant_ids))
        snaps = await self.store.snapshots(ids)
        out = BatchSettled(unknown=await self.fill_profiles(snaps))
        unknown = set(out.unknown)
        at = now or utc_now()
        each = each or {}
        commits: list[tuple[str, int, DerivedStatus, Event, View, str]] = []
        for snap in snaps:
            if snap.restaurant_id in unknown:
                continue
            out.snapshots.append(snap)
            instant = each.get(snap.restaurant_id, now)
            try:
                derived_at = as_of(snap, instant) if instant else at
                status = self.derive(snap, derived_at)
                status_json = status.model_dump_json()
                view = view_of(snap, status, derived_at, self.window, status_json)
            except Exception as exc:
                out.failed[snap.restaurant_id] = exc
                continue
            event = Event(type=EventType.STATUS_CHANGED, restaurant_id=snap.restaurant_id,
                          data=status.model_dump(mode="json"))  # fmt: skip
            commits.append((snap.restaurant_id, snap.version, status, event, view, status_json))
        moved: list[str] = []
        replies = await self.store.commit_statuses(commits)
        for (rid, _, status, event, _, _), (code, name, status_json) in zip(commits, replies, strict=True):
            if isinstance(code, Exception):
                out.failed[rid] = code
            elif code == 1:
                out.settled[rid] = Settled(status, event, name, status_json)
            elif code == -1:
                moved.append(rid)
            elif code == -2:
                out.failed[rid] = StateLost(rid)  # the caller waits for the rebuild, then settles it again
        if moved:
            await self._settle_each(moved, now, each, out)
        return out

    async def _settle_each(
        self, restaurant_ids: list[str], now: datetime | None, each: Mapping[str, datetime], out: BatchSettled
    ) -> None:
        gate = asyncio.Semaphore(BATCH_RETRY_CONCURRENCY)

        async def again(rid: str) -> Settled | None:
            async with gate:
                return await self.settle(rid, each.get(rid, now))

        results = await asyncio.gather(*(again(rid) for rid in restaurant_ids), return_exceptions=True)
        for rid, result in zip(restaurant_ids, results, strict=True):
            if isinstance(result, Settled):
                out.settled[rid] = result
            elif isinstance(result, Exception):
                out.failed[rid] = result
            elif isinstance(result, BaseException):
                raise result  # cancelled: the batch is being abandoned
