"""Two ways a worker used to fail outside any outage: a compare-and-delete aborted by a heartbeat, and
a background task that ignored its cancellation so the stop never finished."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from core.presence_store import STATUS_OUTBOX, PresenceStore
from core.settings import Settings
from core.task_stop import cancel_and_wait


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[PresenceStore]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield PresenceStore(redis, settings.redis_prefix)
    finally:
        await redis.aclose()


async def test_clearing_the_status_outbox_survives_heartbeats_on_the_same_hash(store: PresenceStore) -> None:
    # CI once failed here: the clear watched the whole hash, a heartbeat wrote it, and the bridge died
    # on redis' WatchError. Heartbeats write other fields of the hash all the time.
    rids = [f"hot-{i}" for i in range(200)]
    for rid in rids:
        await store.redis.hset(store.key(rid), mapping={STATUS_OUTBOX: f"status of {rid}", "hb": "0"})

    async def heartbeats() -> None:
        for n in range(2000):
            await store.redis.hset(store.key(rids[n % len(rids)]), "hb", str(n))

    async def clears() -> None:
        for rid in rids:
            await store.clear_status_outbox(rid, f"status of {rid}")

    await asyncio.gather(heartbeats(), clears(), heartbeats())
    for rid in rids:
        assert await store.redis.hget(store.key(rid), STATUS_OUTBOX) is None


async def test_a_newer_queued_status_is_not_cleared(store: PresenceStore) -> None:
    await store.redis.hset(store.key("newer"), STATUS_OUTBOX, "second")
    await store.redis.hset(store.key("same"), STATUS_OUTBOX, "first")
    await store.clear_status_outboxes([("newer", "first"), ("same", "first"), ("absent", "first")])
    assert await store.redis.hget(store.key("newer"), STATUS_OUTBOX) == "second"
    assert await store.redis.hget(store.key("same"), STATUS_OUTBOX) is None
    assert not await store.redis.exists(store.key("absent"))


async def test_cancel_and_wait_ends_a_task_that_swallows_one_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:  # like a loop around a 3.11 wait_for that lost the cancellation
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    async def plain() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(plain(), name="plain")]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks), 10)
    assert swallowed.is_set()
    assert all(task.cancelled() for task in tasks)
