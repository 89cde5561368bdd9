"""How far each bridge has applied what it received: the clock waits for the devices.

A bridge running behind (a storm, the final stop of thousands of devices) applies a graceful stop
received before a scheduled boundary only after it. If the scheduler has committed the boundary
meanwhile, the late fact cannot go in before it (a status never begins before the one it follows), and
the restaurant's offline stretch up to the boundary is lost from the history: the full churn run had
~30 restaurants' rankings up to 18 s off that way.

So every bridge publishes its horizon, the receipt time of the oldest message it has not applied yet
(the wall clock when it holds none), and the scheduler claims only boundaries at or before the lowest
horizon of the live bridges. A bridge that stops publishing (killed, or cut from Redis) counts no more
after `STALE_MS`; a bridge that stops cleanly withdraws its entry.
"""

from redis.asyncio import Redis

STALE_MS = 5_000  # an entry not refreshed for this long is a dead bridge's
PUBLISH_EVERY_S = 0.2  # how often a bridge refreshes its entry: boundaries wait about this long


class Horizons:
    """One Redis hash `{prefix}horizons`: bridge instance → `horizon_ms:written_ms`."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}horizons"

    async def publish(self, instance: str, horizon_ms: int, now_ms: int) -> None:
        await self.redis.hset(self.key, instance, f"{horizon_ms}:{now_ms}")

    async def withdraw(self, instance: str) -> None:
        await self.redis.hdel(self.key, instance)

    async def lowest(self, now_ms: int) -> int:
        """The lowest horizon of the bridges heard from within `STALE_MS` (`now_ms` if none); dead entries go."""
        entries = await self.redis.hgetall(self.key)
        lowest, dead = now_ms, []
        for instance, value in entries.items():
            horizon, _, written = str(value).partition(":")
            try:
                horizon_ms, written_ms = int(horizon), int(written)
            except ValueError:
                dead.append(instance)
                continue
            if now_ms - written_ms > STALE_MS:
                dead.append(instance)
            else:
                lowest = min(lowest, horizon_ms)
        if dead:
            await self.redis.hdel(self.key, *dead)
        return lowest
