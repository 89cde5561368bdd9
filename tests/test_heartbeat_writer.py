"""The status benchmark's heartbeat writer (bench/heartbeat_writer.py): every device beats, round after round."""

from redis.asyncio import Redis

from bench.heartbeat_writer import DEVICE, HeartbeatWriter
from core.history_store import to_ms
from core.messages import DeviceState, Event, EventType, utc_now
from core.presence_store import PresenceStore
from core.settings import Settings
from tests.helpers import wait_until


async def test_every_device_beats_round_after_round(settings: Settings) -> None:
    fast = settings.model_copy(update={"heartbeat_interval_s": 0.5})
    ids = [f"hbw-{n}" for n in range(20)]
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = PresenceStore(redis, settings.redis_prefix)
    try:
        born = utc_now()
        event = Event(type=EventType.DEVICE_ONLINE, restaurant_id="x", device_id=DEVICE[0], data={"epoch": DEVICE[1]})
        await store.apply_presence([(rid, *DEVICE, DeviceState.ONLINE, event) for rid in ids], at_ms=to_ms(born))
        with HeartbeatWriter(fast, ids) as writer:
            # Three rounds of the fleet, each written in slices (the rate it reaches is the bench's figure).
            await wait_until(lambda: writer.written >= 3 * len(ids), 10, message=f"{writer.written} written")
        assert writer.error is None and writer.rate() > 0
        for snap in await store.snapshots(ids):
            [device] = snap.devices
            assert device.last_seen is not None and device.last_seen > born, snap.restaurant_id
    finally:
        await redis.aclose()
