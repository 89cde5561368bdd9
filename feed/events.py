"""What the feed keeps of an event on the dashboard queue (decoding is core.status_events')."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

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

