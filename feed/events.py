"""What the feed takes from an event on the dashboard queue, and what no retry can fix."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from core.errors import InvalidMessage
from core.ids import is_valid_id
from core.messages import Event, EventType
from core.status import DerivedStatus

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class StatusEvent:
    message: AbstractIncomingMessage
    event_id: str
    restaurant_id: str
    ts_us: int
    status: dict[str, Any]
    seq: int = 0
    outcome: str = ""


def ts_micros(ts: datetime) -> int:
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(microseconds=1)


def decode(body: bytes) -> tuple[Event, DerivedStatus | None]:
    """The event and, for a STATUS_CHANGED, its status; `InvalidMessage` for what no retry can fix."""
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
    return event, status
