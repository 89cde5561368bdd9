"""The app's resources: opened in order at start-up, closed in reverse at shutdown, kept on `app.state`."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from redis.asyncio import Redis

from api.dashboard_hub import DashboardHub
from api.metrics import ViewCacheCollector
from core.amqp import EventPublisher, connect_robust
from core.clock_queue import ClockQueue
from core.db import open_mongo
from core.presence_store import PresenceStore
from core.restaurant_admin import RestaurantAdmin
from core.settings import Settings
from core.status_service import StatusService
from core.task_stop import cancel_and_wait
from core.unavailabilities import UnavailabilityLimits, UnavailabilityService
from feed.regroup import Regrouper

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

        # /readyz watches this connection; the events themselves go through `events` below.
        amqp = await connect_robust(settings)
        stack.push_async_callback(amqp.close)

        # UNAVAILABILITY_CREATED / _CANCELLED, published with confirms on a channel of its own.
        events = EventPublisher(settings)
        await events.open()
        stack.push_async_callback(events.close)

        app.state.redis = redis
        app.state.mongo = mongo
        app.state.amqp = amqp
        store = PresenceStore(redis, settings.redis_prefix)
        clock = ClockQueue(redis, settings.redis_prefix)
        app.state.status_service = service = StatusService(store, timedelta(seconds=settings.stale_after_s))
        # The copy of the status views' facts (core/view_cache.py), tracked for as long as the app runs.
        copy = asyncio.create_task(service.views.cache.run(), name="view-cache")
        stack.push_async_callback(cancel_and_wait, [copy])
        app.state.metrics.registry.register(ViewCacheCollector(service.views.cache))
        app.state.events = events
        app.state.unavailabilities = UnavailabilityService(
            store, clock, events, UnavailabilityLimits.from_settings(settings), settings.event_publish_timeout_s
        )
        stack.push_async_callback(app.state.unavailabilities.close)  # before Redis and RabbitMQ close
        app.state.restaurant_admin = RestaurantAdmin(store, clock, moved=Regrouper(store, settings).moved)
        # --- dashboard feed: follows the feed's Redis stream from the first dashboard on (api/dashboard_hub.py) ---
        app.state.dashboard_hub = DashboardHub(redis, settings)
        stack.push_async_callback(app.state.dashboard_hub.close)
        logger.info("api ready: redis prefix %r, mongo db %r", settings.redis_prefix, settings.mongo_db)
        # Everything loaded so far (modules, schemas, clients) lives as long as the process: out of the
        # collector's way, so a full collection does not scan it again in the middle of a status batch.
        gc.freeze()
        yield
        logger.info("api shutting down")
