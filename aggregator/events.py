"""What the aggregator takes from an event: a STATUS_CHANGED as a history point, or nothing."""

from datetime import UTC, datetime

from core.errors import InvalidMessage
from core.history_store import StatusChange, to_ms
from core.messages import Event
from core.status_events import decode_status_event


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
    event, status = decode_status_event(body)
    if status is None:
        return event, None
    ts = _aware(event.ts, "ts")
    at = _aware(status.since, "since") if status.since is not None else ts
    return event, StatusChange(event.restaurant_id, at, status.core, to_ms(ts))
