"""Taking STATUS_CHANGED events off a RabbitMQ queue: decoding them, and acknowledging.

The aggregator and the dashboard feed both consume the platform's events; what is wrong with an event
(and so dead-lettered, since no retry can fix it) is decided here once for both.
"""

import logging
from collections.abc import Awaitable

import aio_pika.exceptions
import aiormq.exceptions
from pydantic import ValidationError

from core.errors import InvalidMessage
from core.ids import is_valid_id
from core.messages import Event, EventType
from core.status import DerivedStatus

logger = logging.getLogger(__name__)


def decode_status_event(body: bytes) -> tuple[Event, DerivedStatus | None]:
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


# A message's channel gone: aiormq says so with ChannelInvalidStateError, a RuntimeError rather than one of
# its AMQP errors; uncaught, a RabbitMQ restart during a batch ended the aggregator and the feed (churn
# run, 2026-11-27).
CHANNEL_GONE = (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError)  # fmt: skip


async def settle(outcome: Awaitable[None]) -> None:
    """Ack or nack; on a channel that has gone away RabbitMQ redelivers the message, which is harmless."""
    try:
        await outcome
    except CHANNEL_GONE as exc:
        logger.info("could not settle a message (%s: %s); it will be redelivered", type(exc).__name__, exc)
