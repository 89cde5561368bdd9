"""The app's resources: opened in order at start-up, closed in reverse at shutdown, kept on `app.state`."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import aio_pika
from fastapi import FastAPI
from redis.asyncio import Redis

from core.db import open_mongo
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status_service import StatusService

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        stack.push_async_callback(redis.aclose)
        await redis.ping()  # fail at start-up, not at the first request

        mongo = await open_mongo(settings)
        stack.push_async_callback(mongo.close)

        # Kept open for the unavailability events the API publishes (DESIGN.md §4).
        amqp = await aio_pika.connect_robust(settings.amqp_url)
        stack.push_async_callback(amqp.close)

        app.state.redis = redis
        app.state.mongo = mongo
        app.state.amqp = amqp
        app.state.status_service = StatusService(
            PresenceStore(redis, settings.redis_prefix), timedelta(seconds=settings.stale_after_s)
        )
        logger.info("api ready: redis prefix %r, mongo db %r", settings.redis_prefix, settings.mongo_db)
        yield
        logger.info("api shutting down")
