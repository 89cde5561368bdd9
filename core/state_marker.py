"""Whether Redis still holds the platform's state, and whether a bridge is rebuilding it.

Redis restarted empty loses every restaurant's committed status. A bridge notices (the marker key is
gone), reads the brokers' retained presence and retained statuses back, and only then settles. Any
other writer that settled meanwhile would find no committed status and announce the current one
again: the scheduler did, after its lease and profiles vanished with the rest, and doubled a
STATUS_CHANGED now and then in the Redis fault run. So the bridge raises `rebuilding` before it marks
the state, and lowers it once converged; the scheduler settles only when `ready`.

Those checks come before a batch, and Redis can restart empty between one and the batch's commits
(the client reconnects by itself, so nothing fails): a bridge once applied a heartbeat to the new, empty
Redis and announced its restaurant online again. So every writer also guards its commits
(`guard`, checked inside `commit_status.lua`): a commit without the marker, or during another
writer's rebuild, is refused and raises `StateLost`, and the writer waits as if it had seen it first.
"""

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis

from core.presence_store import PresenceStore

REBUILD_TTL_S = 120  # a bridge that dies mid-rebuild holds the others back no longer than this


class StateLost(Exception):
    """A commit refused: Redis lost the platform's state, or a bridge is rebuilding it."""


class StateMarker:
    def __init__(self, redis: Redis, prefix: str, guarded: PresenceStore | None = None, instance: str = "") -> None:
        """Once the marker is known to be there (`mark`, or seen by `ready`), `guarded`'s commits need it,
        and no rebuild but `instance`'s."""
        self.redis = redis
        self.marker = f"{prefix}state"
        self.rebuilding = f"{prefix}rebuilding"
        self.guarded = guarded
        self.instance = instance
        self._seen = False

    def _saw_marker(self) -> None:
        if not self._seen and self.guarded is not None:
            self.guarded.guard_commits(self.marker, self.rebuilding, self.instance)
        self._seen = True

    async def holds_state(self) -> bool:
        return bool(await self.redis.exists(self.marker))

    async def mark(self, rebuilding: bool) -> None:
        """Mark Redis as holding the platform's state; with `rebuilding`, first say `instance` rebuilds it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if rebuilding:
                pipe.set(self.rebuilding, self.instance, ex=REBUILD_TTL_S)
            pipe.set(self.marker, self.instance)
            await pipe.execute()
        self._saw_marker()

    async def keep_rebuilding(self) -> None:
        await self.redis.set(self.rebuilding, self.instance, ex=REBUILD_TTL_S, xx=True)

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
        if marked:
            self._saw_marker()
        return not rebuilding and (bool(marked) or not self._seen)

    async def wait_ready(self, go_on: Callable[[], bool], poll_s: float = 0.2) -> bool:
        """Until `ready` (True) or `go_on()` turns false (False)."""
        while go_on():
            if await self.ready():
                return True
            await asyncio.sleep(poll_s)
        return False
