"""The clock queue's pub/sub wake-ups: the API marked restaurants due now (a profile changed)."""

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from scheduler.retry import FIRST_DELAY_S, MAX_DELAY_S, OUTAGES

logger = logging.getLogger(__name__)


async def listen_for_wakes(redis: Redis, channel: str, on_wake: Callable[[], None]) -> None:
    """Call `on_wake` for every message on `channel`, and once after each (re)subscription.

    Pub/sub forgets what it sent while nobody listened, so a fresh subscription also wakes: the
    due restaurants are in the sorted set either way.
    """
    delay = FIRST_DELAY_S
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            on_wake()
            delay = FIRST_DELAY_S
            while True:
                # A timeout here, not the connection's socket timeout: a quiet channel is no outage.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    on_wake()
        except OUTAGES as exc:
            logger.warning("wake-up subscription lost (%s); subscribing again in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
        finally:
            await pubsub.aclose()
