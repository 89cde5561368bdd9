"""Waiting out a backing service that is away: retry one idempotent step with backoff."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika.exceptions
import aiormq.exceptions
import pymongo.errors
import redis.exceptions

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Redis, RabbitMQ or MongoDB away (the same set the bridge waits out), plus a robust AMQP channel
# that is being reopened after RabbitMQ came back.
OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    pymongo.errors.ConnectionFailure,
    ConnectionError,
    TimeoutError,
)

FIRST_DELAY_S, MAX_DELAY_S = 0.2, 5.0
LOG_EVERY_S = 10.0


class Abandoned(Exception):
    """The scheduler is stopping (or no longer leads) while a service is still away; the step was not done."""


class Retrier:
    """Runs steps until they succeed, backing off while a service is away; one warning per outage, not per step."""

    def __init__(self, keep_trying: Callable[[], bool], on_retry: Callable[[], None]) -> None:
        self.keep_trying = keep_trying
        self.on_retry = on_retry
        self._logged_at = 0.0

    async def __call__(self, step: Callable[[], Awaitable[T]], what: str) -> T:
        delay = FIRST_DELAY_S
        while True:
            try:
                return await step()
            except OUTAGES as exc:
                self.on_retry()
                now = time.monotonic()
                if now - self._logged_at >= LOG_EVERY_S:
                    self._logged_at = now
                    logger.warning("%s: a backing service is away (%s: %s); retrying", what, type(exc).__name__, exc)
                if not self.keep_trying():
                    raise Abandoned(what) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
