"""Writing a batch of events taken from a queue while a backing service may be away (aggregator, feed).

An outage is waited out: the batch is retried with backoff (0.2 s, doubling to 5 s) and nothing is
acknowledged meanwhile, so a consumer that is stopped during it leaves the batch to RabbitMQ to
redeliver. Any other failure is a poison message or a bug, never fatal: the batch is written one event
at a time and an event that still fails is handed to `poison` (which dead-letters it).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


async def write_batch(
    items: list[T],
    write: Callable[[list[T]], Awaitable[None]],
    *,
    outages: tuple[type[BaseException], ...],
    stop: asyncio.Event,
    retries: Counter,
    away: str,
    poison: Callable[[T, Exception], Awaitable[None]],
) -> list[T]:
    """The items written, to be acknowledged (`write` may take some out of `items` itself)."""
    delay = 0.2
    while True:
        try:
            await write(items)
            return items
        except outages as exc:
            if stop.is_set():
                return []  # not acknowledged: RabbitMQ redelivers them to the next consumer
            retries.inc()
            if delay == 0.2:
                logger.warning("%s is away (%s: %s); retrying the batch", away, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception as exc:
            if len(items) == 1:
                await poison(items[0], exc)
                return []
            written: list[T] = []
            for one in items:
                written += await write_batch([one], write, outages=outages, stop=stop, retries=retries, away=away,
                                             poison=poison)  # fmt: skip
                if stop.is_set():
                    break  # what was written is acknowledged; the rest is redelivered
            return written
