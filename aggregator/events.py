"""What the aggregator takes from an event: a STATUS_CHANGED as a history point, or nothing."""

from datetime import UTC, datetime

from pydantic import ValidationError

from core.errors import InvalidMessage
from core.history_store import StatusChange, to_ms
from core.ids import is_valid_id
from core.messages import Event, EventType
from core.status import DerivedStatus


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidMessage("bad_status", f"{what} has no UTC offset")
    return value.astimezone(UTC)


def decode(body: bytes) -> tuple[Event, StatusChange | None]:
    """The event and, for a STATUS_CHANGED, its point; `InvalidMessage` for what no retry can fix.

    The point's instant is the status's `since` (the transition's own instant, which a clock
    boundary settled late or an outbox republished after a crash still carries), not the event's `ts`;
    `ts` only orders two points at the same millisecond. Without `since`, `ts` it is.
    """
    try:
        event = Event.from_bytes(body)
    except ValidationError as exc:
        raise InvalidMessage("bad_event", str(exc.errors()[0]["msg"])[:200]) from exc
    if event.type is not EventType.STATUS_CHANGED:
        return event, None
    if not is_valid_id(event.restaurant_id):
        raise InvalidMessage("bad_restaurant_id", event.restaurant_id[:80])
    try:
        status = DerivedStatus.model_validate(event.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidMessage("bad_status", f"{where}: {first['msg']}"[:200]) from exc
    if status.restaurant_id != event.restaurant_id:
        detail = f"{status.restaurant_id[:80]} in an event of {event.restaurant_id}"
        raise InvalidMessage("mismatched_restaurant", detail)
    ts = _aware(event.ts, "ts")
    at = _aware(status.since, "since") if status.since is not None else ts
    return event, StatusChange(event.restaurant_id, at, status.core, to_ms(ts))
