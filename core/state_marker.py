"""Whether Redis still holds the platform's state, and whether a bridge is rebuilding it.

Redis restarted empty loses every restaurant's committed status. A bridge notices (the marker key is
gone), reads the brokers' retained presence and retained statuses back, and only then settles. Any
other writer that settled meanwhile would find no committed status and announce the current one
again: the scheduler did, after its lease and profiles vanished with the rest, and doubled a
STATUS_CHANGED now and then in the Redis fault run. So the bridge raises `rebuilding` before it marks
the state, and lowers it once converged; the scheduler settles only when `ready`.
"""

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis

REBUILD_TTL_S = 120  # a bridge that dies mid-rebuild holds the others back no longer than this


class StateMarker:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.marker = f"{prefix}state"
        self.rebuilding = f"{prefix}rebuilding"
        self._seen = False

    async def holds_state(self) -> bool:
        return bool(await self.redis.exists(self.marker))

    async def mark(self, instance: str, rebuilding: bool) -> None:
        """Mark Redis as holding the platform's state; with `rebuilding`, first say it is being rebuilt."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if rebuilding:
                pipe.set(self.rebuilding, instance, ex=REBUILD_TTL_S)
            pipe.set(self.marker, instance)
            await pipe.execute()

    async def keep_rebuilding(self, instance: str) -> None:
        await self.redis.set(self.rebuilding, instance, ex=REBUILD_TTL_S, xx=True)

    async def rebuilt(self) -> None:
        await self.redis.delete(self.rebuilding)

    async def ready(self) -> bool:
        """False while a bridge rebuilds, or once the marker seen before is gone (Redis lost it and no
        bridge has noticed yet). A Redis never marked (no bridge ever ran: a scheduler on its own) is ready.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.marker)
            pipe.exists(self.rebuilding)
            marked, rebuilding = await pipe.execute()
        self._seen = self._seen or bool(marked)
        return not rebuilding and (bool(marked) or not self._seen)

    async def wait_ready(self, go_on: Callable[[], bool], poll_s: float = 0.2) -> bool:
        """Until `ready` (True) or `go_on()` turns false (False)."""
        while go_on():
            if await self.ready():
                return True
            await asyncio.sleep(poll_s)
        return False
