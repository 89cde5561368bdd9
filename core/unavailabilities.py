"""Unavailabilities of a restaurant: check, schedule, cancel and list them (DESIGN.md §1, §6).

MongoDB keeps the history (one `UnavailabilityLog` per restaurant, written under the restaurant's
Redis lock, with a compare-and-set on its `version` besides). The same update commits the change's
UNAVAILABILITY_CREATED or _CANCELLED event in the log (core/unannounced.py). After a change the Redis
profile is rewritten in the same call, so the live status shows it on the very next read; the
restaurant is marked due in the `ClockQueue`, whose scheduler publishes the STATUS_CHANGED; and the
event moves to the restaurant's Redis outbox and is published with confirms.

If Redis goes away after the commit, the request answers that the change is recorded and takes
effect when Redis is back (`ChangeDeferred`), and the service finishes the Redis step in the
background; the scheduler's rebuild does it for an API that died meanwhile.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import pymongo.errors
import redis.exceptions
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pymongo.errors import DuplicateKeyError

from core.clock_queue import ClockQueue
from core.documents import Restaurant, UnavailabilityLog, UnavailabilityRecord
from core.errors import PresenceError, UnknownRestaurant
from core.messages import Event, EventType, utc_now
from core.presence_store import PresenceStore
from core.restaurant_admin import RestaurantBusy, restaurant_lock
from core.settings import Settings
from core.status import UnavailabilityReason
from core.unannounced import take_effect, unannounced

logger = logging.getLogger(__name__)

# Writers take turns under the restaurant's lock: a lost race means a lease ran out mid-write.
MAX_WRITE_RETRIES = 5
# Redis or MongoDB away: after the commit, the Redis step is finished in the background.
STORE_OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    pymongo.errors.ConnectionFailure,
    RestaurantBusy,
)
FINISH_FIRST_DELAY_S = 0.5
FINISH_MAX_DELAY_S = 5.0


class UnavailabilityState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    ENDED = "ended"
    CANCELLED = "cancelled"


class InvalidUnavailability(PresenceError):
    """A request that breaks a rule; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownUnavailability(PresenceError):
    def __init__(self, restaurant_id: str, uid: str) -> None:
        super().__init__(f"restaurant {restaurant_id!r} has no unavailability {uid!r}")


class UnavailabilityConflict(PresenceError):
    """The request is well formed but the current state forbids it (already cancelled, ended, too many)."""


class ChangeDeferred(PresenceError):
    """The change is committed in MongoDB, but Redis was away: it takes effect, and is announced, once
    Redis answers. Creating it again would make a second one."""

    def __init__(self, restaurant_id: str, uid: str) -> None:
        super().__init__(
            f"unavailability {uid!r} of restaurant {restaurant_id!r} is recorded, but Redis is away: it takes "
            "effect and is announced as soon as Redis answers again; do not repeat the request"
        )
        self.uid = uid


class EventSink(Protocol):
    async def publish(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class UnavailabilityLimits:
    max_length: timedelta = timedelta(days=90)
    max_ahead: timedelta = timedelta(days=366)
    max_note_chars: int = 500
    max_pending: int = 100
    past_tolerance: timedelta = timedelta(seconds=60)

    @classmethod
    def from_settings(cls, settings: Settings) -> "UnavailabilityLimits":
        return cls(
            max_length=timedelta(days=settings.unavailability_max_days),
            max_ahead=timedelta(days=settings.unavailability_max_ahead_days),
            max_note_chars=settings.unavailability_max_note_chars,
            max_pending=settings.unavailability_max_pending,
            past_tolerance=timedelta(seconds=settings.unavailability_past_tolerance_s),
        )


def stored_instant(at: datetime) -> datetime:
    """UTC to the millisecond, as BSON keeps it: what the API answers equals what it later reads back."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def state_of(record: UnavailabilityRecord, now: datetime) -> UnavailabilityState:
    if record.cancelled_at is not None:
        return UnavailabilityState.CANCELLED
    if now < record.start:
        return UnavailabilityState.SCHEDULED
    return UnavailabilityState.ACTIVE if now < record.end else UnavailabilityState.ENDED


def public_view(restaurant_id: str, record: UnavailabilityRecord, now: datetime) -> dict[str, Any]:
    """The record as the API and the events show it."""
    return {
        "restaurant_id": restaurant_id,
        **record.model_dump(mode="json"),
        "state": state_of(record, now).value,
    }


def checked_window(
    start: datetime | None, end: datetime, note: str, now: datetime, limits: UnavailabilityLimits
) -> tuple[datetime, datetime]:
    """The (start, end) to store, or `InvalidUnavailability` saying which rule the input breaks."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.utcoffset() is None:
            raise InvalidUnavailability(name, "must include a time zone offset, e.g. 2030-01-01T10:00:00Z")
    if start is None or start <= now:
        if start is not None and now - start > limits.past_tolerance:
            raise InvalidUnavailability(
                "start", f'{start.isoformat()} is in the past; start now (omit it or say "now") or later'
            )
        # A start a few seconds ago is "now": a retroactive one would rewrite a past already announced.
        start = now
    if start - now > limits.max_ahead:
        raise InvalidUnavailability("start", f"may be at most {limits.max_ahead.days} days ahead")
    if end <= start:
        raise InvalidUnavailability("end", f"must be after start ({start.isoformat()})")
    if end - start > limits.max_length:
        raise InvalidUnavailability("end", f"an unavailability may last at most {limits.max_length.days} days")
    if len(note) > limits.max_note_chars:
        raise InvalidUnavailability("note", f"at most {limits.max_note_chars} characters, got {len(note)}")
    return stored_instant(start), stored_instant(end)


class UnavailabilityService:
    def __init__(
        self,
        store: PresenceStore,
        clock: ClockQueue,
        events: EventSink,
        limits: UnavailabilityLimits = UnavailabilityLimits(),
        publish_timeout_s: float = 5.0,
        finish_for_s: float = 120.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.events = events
        self.limits = limits
        self.publish_timeout_s = publish_timeout_s
        self.finish_for_s = finish_for_s  # then the scheduler's rebuild finishes a deferred change
        self._finishing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop finishing deferred changes (they stay in MongoDB for the scheduler's rebuild)."""
        for task in self._finishing:
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)

    async def create(
        self,
        restaurant_id: str,
        *,
        reason: UnavailabilityReason,
        end: datetime,
        start: datetime | None = None,
        note: str = "",
        by: str,
        now: datetime | None = None,
    ) -> UnavailabilityRecord:
        """Schedule one (start None: now); overlaps are allowed, the status counts their union."""
        at = stored_instant(now or utc_now())
        first, last = checked_window(start, end, note, at, self.limits)
        await self._known(restaurant_id)
        record = UnavailabilityRecord(
            id=uuid.uuid4().hex, reason=reason, start=first, end=last, note=note, created_at=at, created_by=by
        )

        def add(items: list[UnavailabilityRecord]) -> UnavailabilityRecord:
            pending = sum(state_of(i, at) in (UnavailabilityState.SCHEDULED, UnavailabilityState.ACTIVE) for i in items)
            if pending >= self.limits.max_pending:
                raise UnavailabilityConflict(
                    f"restaurant {restaurant_id!r} already has {pending} scheduled or ongoing unavailabilities "
                    f"(at most {self.limits.max_pending}); cancel some first"
                )
            items.append(record)
            return record

        await self._change(restaurant_id, add, EventType.UNAVAILABILITY_CREATED, at)
        logger.info("unavailability %s of %s created by %s: %s", record.id, restaurant_id, by, reason.value)
        return record

    async def cancel(
        self, restaurant_id: str, uid: str, *, by: str, now: datetime | None = None
    ) -> UnavailabilityRecord:
        """An ongoing one ends now, a scheduled one never happens; both stay in the history."""
        at = stored_instant(now or utc_now())
        await self._known(restaurant_id)

        def cancel(items: list[UnavailabilityRecord]) -> UnavailabilityRecord:
            for index, item in enumerate(items):
                if item.id != uid:
                    continue
                if item.cancelled_at is not None:
                    raise UnavailabilityConflict(
                        f"unavailability {uid!r} was cancelled already, at {item.cancelled_at.isoformat()}"
                    )
                if item.end <= at:
                    raise UnavailabilityConflict(f"unavailability {uid!r} ended already, at {item.end.isoformat()}")
                items[index] = item.model_copy(update={"cancelled_at": at, "cancelled_by": by})
                return items[index]
            raise UnknownUnavailability(restaurant_id, uid)

        record = await self._change(restaurant_id, cancel, EventType.UNAVAILABILITY_CANCELLED, at)
        logger.info("unavailability %s of %s cancelled by %s", uid, restaurant_id, by)
        return record

    async def history(
        self, restaurant_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[UnavailabilityRecord]:
        """Newest start first, cancelled ones included; `since`/`until` keep those whose scheduled window overlaps."""
        doc, log = await asyncio.gather(Restaurant.get(restaurant_id), UnavailabilityLog.get(restaurant_id))
        if doc is None:
            raise UnknownRestaurant(restaurant_id)
        items = [
            item
            for item in (log.items if log is not None else [])
            if (until is None or item.start < until) and (since is None or item.end > since)
        ]
        return sorted(items, key=lambda item: (item.start, item.created_at), reverse=True)

    async def get(self, restaurant_id: str, uid: str) -> UnavailabilityRecord:
        for item in await self.history(restaurant_id):
            if item.id == uid:
                return item
        raise UnknownUnavailability(restaurant_id, uid)

    async def _known(self, restaurant_id: str) -> None:
        if await Restaurant.get(restaurant_id) is None:
            raise UnknownRestaurant(restaurant_id)

    async def _change(
        self,
        restaurant_id: str,
        change: Callable[[list[UnavailabilityRecord]], UnavailabilityRecord],
        kind: EventType,
        at: datetime,
    ) -> UnavailabilityRecord:
        """Apply `change` to the log's items and commit them with the event, then do the Redis step.

        The restaurant's lock keeps writers one at a time (FerretDB does not isolate updates); the
        `version` filter is the second line, for a holder whose lease ran out (it holds on MongoDB).
        """
        record: UnavailabilityRecord | None = None
        try:
            async with restaurant_lock(self.store, restaurant_id):
                record = await self._write(restaurant_id, change, kind, at)
                handed = await take_effect(self.store, self.clock, restaurant_id)
        except STORE_OUTAGES as exc:
            if record is None:
                raise  # nothing committed (or not known to be: the rebuild hands over what was)
            logger.warning("%s of %s is committed but Redis is away (%r); finishing it in the background",
                           kind.value, restaurant_id, exc)  # fmt: skip
            self._finish_later(restaurant_id)
            raise ChangeDeferred(restaurant_id, record.id) from exc
        await self._announce(restaurant_id, handed)
        return record

    def _finish_later(self, restaurant_id: str) -> None:
        task = asyncio.create_task(self._finish(restaurant_id), name=f"finish-{restaurant_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, restaurant_id: str) -> None:
        """Retry the Redis step of a committed change until it goes through, for `finish_for_s` at most."""
        deadline = time.monotonic() + self.finish_for_s
        delay = FINISH_FIRST_DELAY_S
        while True:
            await asyncio.sleep(delay)
            try:
                async with restaurant_lock(self.store, restaurant_id):
                    handed = await take_effect(self.store, self.clock, restaurant_id)
            except STORE_OUTAGES as exc:
                if time.monotonic() + delay > deadline:
                    logger.warning("the change of %s still waits for Redis (%r); left to the scheduler's rebuild",
                                   restaurant_id, exc)  # fmt: skip
                    return
                delay = min(delay * 2, FINISH_MAX_DELAY_S)
                continue
            except PresenceError as exc:  # the restaurant was removed meanwhile
                logger.info("the change of %s was not finished: %s", restaurant_id, exc)
                return
            logger.info("the deferred change of %s took effect", restaurant_id)
            await self._announce(restaurant_id, handed)
            return

    async def _write(
        self,
        restaurant_id: str,
        change: Callable[[list[UnavailabilityRecord]], UnavailabilityRecord],
        kind: EventType,
        at: datetime,
    ) -> UnavailabilityRecord:
        for _ in range(MAX_WRITE_RETRIES):
            log = await UnavailabilityLog.get(restaurant_id)
            items = list(log.items) if log is not None else []
            record = change(items)
            event = Event(type=kind, restaurant_id=restaurant_id, ts=at, data=public_view(restaurant_id, record, at))
            waiting = [*(log.unannounced if log is not None else []), unannounced(event)]
            if log is None:
                try:
                    await UnavailabilityLog(id=restaurant_id, items=items, version=1, unannounced=waiting).insert()
                except DuplicateKeyError:
                    continue  # someone created the log first: apply the change to theirs
                return record
            result = await UnavailabilityLog.get_pymongo_collection().update_one(
                {"_id": restaurant_id, "version": log.version},
                {"$set": {
                    "items": [item.model_dump() for item in items],
                    "unannounced": [entry.model_dump() for entry in waiting],
                    "version": log.version + 1,
                }},
            )  # fmt: skip
            if result.matched_count == 1:
                return record
        raise UnavailabilityConflict(
            f"the unavailabilities of {restaurant_id!r} kept changing while this request ran; try again"
        )

    async def _announce(self, restaurant_id: str, handed: list[tuple[str, Event]]) -> None:
        """Publish the events now in the restaurant's Redis outbox, clearing each one RabbitMQ confirms."""
        # The change is committed already: if RabbitMQ is away the request still succeeds, and the event
        # stays in the restaurant's outbox, which the scheduler's sweep or a starting bridge republishes.
        published: list[str] = []
        try:
            for name, event in handed:
                try:
                    await asyncio.wait_for(self.events.publish(event), self.publish_timeout_s)
                except (TimeoutError, AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
                    logger.warning("%s for %s not confirmed (%r); left in the outbox",
                                   event.type.value, restaurant_id, exc)  # fmt: skip
                    return
                published.append(name)
        finally:
            try:
                await self.store.clear_outbox(restaurant_id, published)
            except STORE_OUTAGES as exc:  # published: the sweep may publish them again, which is the lesser harm
                logger.warning("published events of %s left in the outbox (%r)", restaurant_id, exc)
