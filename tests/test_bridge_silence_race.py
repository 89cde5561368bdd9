"""A device silent past the window that speaks again before the stale sweep flagged it (bench churn, kill-bridge).

The status reads DISCONNECTED from the window's end; the history must get that interval too, not only
the status once the device is back. Found by bench/churn.py: with the sweep a second behind, a
heartbeat 1.2 s after the window left the restaurant's ranking 1.2 s short.
"""

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from core.db import open_mongo
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status_service import StatusService
from tests.devices import Device, EventTap, make_restaurant
from tests.helpers import wait_until
from tests.test_bridge import running_bridge


async def test_heartbeat_after_the_window_before_the_sweep_commits_the_disconnected_interval(
    settings: Settings, stack: Any
) -> None:
    slow_sweep = settings.model_copy(
        update={
            "bridge_metrics_port": 0,
            "stale_after_s": 1.0,
            "sweep_interval_s": 3600.0,  # the periodic sweep never runs in this test
            "mqtt_shared_group": f"g{uuid.uuid4().hex[:8]}",
            "mqtt_brokers": [stack.mosquitto_url],
        }
    )
    rid = f"r-race-{uuid.uuid4().hex[:6]}"
    mongo = await open_mongo(slow_sweep)
    secret = await make_restaurant(slow_sweep, stack, rid)
    redis = Redis.from_url(slow_sweep.redis_url, decode_responses=True)
    service = StatusService(PresenceStore(redis, slow_sweep.redis_prefix), timedelta(seconds=1))
    try:
        async with EventTap(slow_sweep) as tap, running_bridge(slow_sweep):
            device = Device(stack.mosquitto_url, rid, secret)
            await asyncio.to_thread(device.connect, 3)
            await tap.wait_for(rid, "STATUS_CHANGED")

            async def disconnected() -> bool:
                statuses, _ = await service.current([rid])
                return statuses[0].reason == "DISCONNECTED"

            await wait_until(disconnected, 10, message="the window to pass")
            await asyncio.to_thread(device.heartbeat)
            changes = await tap.wait_for(rid, "STATUS_CHANGED", 3, timeout=10)
            assert [(c["data"]["online"], c["data"]["reason"]) for c in changes] == [
                (True, None),
                (False, "DISCONNECTED"),
                (True, None),
            ]
            last_seen = datetime.fromisoformat(changes[0]["data"]["last_seen"])
            assert datetime.fromisoformat(changes[1]["data"]["since"]) == last_seen + timedelta(seconds=1)
            assert [e["data"]["cause"] for e in tap.of(rid, "DEVICE_OFFLINE")] == ["stale"]
            await asyncio.to_thread(device.stop)
    finally:
        await redis.aclose()
        await mongo.close()


async def test_a_restart_does_not_postpone_the_stale_sweep(settings: Settings, stack: Any) -> None:
    fast = settings.model_copy(
        update={
            "bridge_metrics_port": 0,
            "stale_after_s": 4.0,
            "sweep_interval_s": 0.2,
            "mqtt_shared_group": f"g{uuid.uuid4().hex[:8]}",
            "mqtt_brokers": [stack.mosquitto_url],
        }
    )
    rid = f"r-restart-{uuid.uuid4().hex[:6]}"
    mongo = await open_mongo(fast)
    try:
        secret = await make_restaurant(fast, stack, rid)
        async with EventTap(fast) as tap:
            device = Device(stack.mosquitto_url, rid, secret)
            async with running_bridge(fast):
                await asyncio.to_thread(device.connect, 3)
                online = (await tap.wait_for(rid, "STATUS_CHANGED"))[0]["data"]
            async with running_bridge(fast):  # re-reads the retained birth: an old fact, ignored
                offline = (await tap.wait_for(rid, "DEVICE_OFFLINE", timeout=20))[0]["data"]
                # The sweep saw the device's real last sign of life, not the restart's.
                assert datetime.fromisoformat(offline["last_seen"]) == datetime.fromisoformat(online["last_seen"])
            await asyncio.to_thread(device.stop)
    finally:
        await mongo.close()
