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

The bridges of a share group read each other's horizons too: a device's messages go to any of them,
so one bridge may hold a device's heartbeats unread while another finds the device silent. A bridge's
sweep judges silence only up to the lowest horizon of the other live bridges and its own
(`Horizons.others`).

`STALE_MS` weighs two errors. Too short, and a bridge alive but busy (the churn run's final stop, its
entry last written 5 s before) is taken for dead: a boundary is committed ahead of a stop it has
received, and that restaurant's offline stretch is cut. Too long, and a killed bridge holds every
boundary back that long: the retained status and STATUS_CHANGED come late (the API derives on read
and is not affected). The bridge writes its entry on a connection of its own, so a busy pool cannot
delay it, and the scheduler logs every entry it drops.
"""

import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger(__name__)

STALE_MS = 10_000  # an entry not refreshed for this long is a dead bridge's
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
        live, dead = self._split(await self.redis.hgetall(self.key), now_ms)
        for instance, written_ms in dead.items():
            if written_ms is not None:
                logger.warning("bridge %s last wrote its horizon %.1f s ago: taken for stopped, no longer waited for",
                               instance, (now_ms - written_ms) / 1000)  # fmt: skip
        if dead:
            await self.redis.hdel(self.key, *dead)
        return min(live.values(), default=now_ms)

    async def others(self, instance: str, now_ms: int) -> int:
        """The lowest horizon of the live bridges other than `instance` (`now_ms` if none). Reads only: the
        scheduler's `lowest` clears the dead entries and says so."""
        live, _ = self._split(await self.redis.hgetall(self.key), now_ms)
        live.pop(instance, None)
        return min(live.values(), default=now_ms)

    @staticmethod
    def _split(entries: Mapping[Any, Any], now_ms: int) -> tuple[dict[str, int], dict[str, int | None]]:
        """(live bridge → horizon, dead bridge → when it last wrote, None if its entry does not parse)."""
        live: dict[str, int] = {}
        dead: dict[str, int | None] = {}
        for instance, value in entries.items():
            horizon, _, written = str(value).partition(":")
            try:
                horizon_ms, written_ms = int(horizon), int(written)
            except ValueError:
                dead[instance] = None
                continue
            if now_ms - written_ms > STALE_MS:
                dead[instance] = written_ms
            else:
                live[instance] = horizon_ms
        return live, dead
