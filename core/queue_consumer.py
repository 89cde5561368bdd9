"""What the aggregator and the feed share as consumers of a RabbitMQ queue: taking a batch from what
RabbitMQ has delivered, and noticing a consumer that RabbitMQ no longer has.

aio-pika's robust connection opens the channels and consumers again after a reconnect. A restore that
fails half-way (RabbitMQ going away again during it, a channel closed by an error) can leave a worker
connected and consuming nothing, with every object it holds saying all is well: the churn checker's
own event tap came back so from a RabbitMQ restart once, and heard nothing more. A platform worker in
that state would let its queue grow for ever without a word, so each one watches for it: when the
worker is idle with room for more, yet its queue has messages ready on two looks in a row with none
delivered to it in between, RabbitMQ is not delivering to it, and it subscribes again.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from prometheus_client import Counter

logger = logging.getLogger(__name__)

T = TypeVar("T")

TAKE_WAIT_S = 0.5  # how often an idle worker looks at its stop flag (and, now and then, at its queue)
CANCEL_TIMEOUT_S = 5.0  # a stop while RabbitMQ is away must not hang on it
LOOK_TIMEOUT_S = 5.0  # a look at the queue while RabbitMQ is away gives up after this, unanswered
MAX_RETRY_DELAY_S = 10.0
UNANSWERED_LOOKS = 3  # looks at the queue in a row without an answer before a warning says so


async def retry_while_away(
    what: str, attempt: Callable[[], Awaitable[T]], outages: tuple[type[BaseException], ...], stop: asyncio.Event
) -> T | None:
    """`attempt()` until it succeeds, waiting 0.5 s, 1 s, 2 s … (at most 10 s) after each outage;
    None once `stop` is set."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await attempt()
        except outages as exc:
            logger.warning("%s not reachable (%s); retrying in %.1fs", what, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
    return None


async def take_batch(inbox: "asyncio.Queue[T]", most: int, wait_s: float | None) -> list[T]:
    """What is waiting, up to `most`; first waiting up to `wait_s` for one (None: not at all)."""
    batch: list[T] = []
    if wait_s is not None:
        try:
            batch.append(await asyncio.wait_for(inbox.get(), wait_s))
        except TimeoutError:
            return batch
    while len(batch) < most and not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch


class ConsumerWatch:
    """Call `delivered()` for every message RabbitMQ hands over and `await lost()` whenever the worker
    is idle (nothing in hand, nothing waiting); `lost()` looks at the queue at most every `every_s`."""

    def __init__(self, connection: AbstractRobustConnection, queue: str, every_s: float) -> None:
        self.connection = connection
        self.queue = queue
        self.every_s = every_s
        self._deliveries = 0
        self._at_last_look = 0
        self._starving = False  # the last look saw messages ready and nothing had come since the one before
        self._next_look = time.monotonic() + every_s
        self._unanswered = 0  # looks in a row that RabbitMQ did not answer

    def delivered(self) -> None:
        self._deliveries += 1

    async def lost(self) -> bool:
        """True once the queue had messages ready on two looks in a row and none came in between."""
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + self.every_s
        ready = await self._ready()
        self._note_answer(ready is not None)
        starving = bool(ready) and self._deliveries == self._at_last_look
        self._at_last_look = self._deliveries
        if starving and self._starving:
            logger.warning(
                "%s has %d messages ready and none has been delivered here for %.0f s; subscribing again",
                self.queue, ready, self.every_s,
            )  # fmt: skip
            self._starving = False
            return True
        self._starving = starving
        return False

    def _note_answer(self, answered: bool) -> None:
        """Say once when looks have gone unanswered for a while, and when they are answered again.

        An unanswered look cannot tell RabbitMQ away from this worker's connection gone bad; the two
        warnings put the stretch in the log, to be read beside RabbitMQ's own.
        """
        if answered:
            if self._unanswered >= UNANSWERED_LOOKS:
                logger.warning("%s answers again after %d unanswered looks", self.queue, self._unanswered)
            self._unanswered = 0
            return
        self._unanswered += 1
        if self._unanswered == UNANSWERED_LOOKS:
            logger.warning(
                "could not look at %s for %.0f s (RabbitMQ away, or this connection stuck)",
                self.queue, self._unanswered * self.every_s,
            )  # fmt: skip

    async def _ready(self) -> int | None:
        """Messages ready in the queue; None when RabbitMQ cannot say (away, or reconnecting)."""
        try:
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                channel = await self.connection.channel()
                try:
                    queue = await channel.declare_queue(self.queue, passive=True)
                    return int(queue.declaration_result.message_count or 0)
                finally:
                    await channel.close()
        except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            logger.debug("could not look at %s (%s)", self.queue, exc)
            return None


Subscription = tuple[AbstractChannel, AbstractQueue, str]  # the channel, the queue on it, the consumer tag
OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


async def consume_batches(
    connection: AbstractRobustConnection,
    name: str,
    subscribe: Callable[[OnMessage], Awaitable[Subscription | None]],
    handle: Callable[[list[AbstractIncomingMessage]], Awaitable[None]],
    *,
    who: str,
    most: int,
    watch_s: float,
    stop: asyncio.Event,
    ready: asyncio.Event,
    resubscribed: Counter,
) -> None:
    """Hand what RabbitMQ delivers from the queue `name` to the worker `who`'s `handle`, `most` at a
    time, until `stop`; subscribe again (`subscribe`, None if stopped meanwhile) whenever RabbitMQ has
    stopped delivering. On stop the consumer is cancelled and what was delivered before is handled,
    not redelivered."""
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    watch = ConsumerWatch(connection, name, watch_s)

    async def on_message(message: AbstractIncomingMessage) -> None:
        watch.delivered()
        inbox.put_nowait(message)  # prefetch_count bounds what can wait here

    while True:
        if (subscription := await subscribe(on_message)) is None:
            return  # stopped before consuming: nothing is in hand
        channel, queue, tag = subscription
        ready.set()
        logger.info("%s consuming %s", who, name)
        while not stop.is_set():
            if batch := await take_batch(inbox, most, TAKE_WAIT_S):
                await handle(batch)
            elif await watch.lost():
                break
        if stop.is_set():
            break
        resubscribed.inc()
        with contextlib.suppress(*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError):
            await asyncio.wait_for(channel.close(), CANCEL_TIMEOUT_S)
    try:
        await asyncio.wait_for(queue.cancel(tag), CANCEL_TIMEOUT_S)
    except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError) as exc:
        logger.info("could not cancel the consumer of %s (%s); closing anyway", name, exc)
    while batch := await take_batch(inbox, most, None):
        await handle(batch)
