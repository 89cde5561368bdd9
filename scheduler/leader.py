"""Only one scheduler acts at a time: a lease on one Redis key that its holder keeps renewing.

`SET key holder NX PX ttl` takes it; renewing and releasing check the holder first (one Lua script
each, so a scheduler whose lease ran out can never extend or delete the next holder's). A leader
that stops renewing (crashed, cut off) loses the key after `ttl`, and a follower takes it.
"""

import time

from redis.asyncio import Redis

# Compare-and-extend: only the holder's own lease is renewed.
RENEW = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"""

# The local view of the lease ends this much before Redis's: clocks and round trips are not exact.
SAFETY_FRACTION = 0.2


class LeaderLock:
    def __init__(self, redis: Redis, key: str, holder: str, ttl_s: float) -> None:
        """`redis` must be opened with decode_responses=True."""
        self.redis = redis
        self.key = key
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._valid_until = 0.0
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    def valid(self) -> bool:
        """True while this process may act: its last acquire or renew is recent enough."""
        return time.monotonic() < self._valid_until

    def _extend_from(self, asked_at: float) -> None:
        self._valid_until = asked_at + self.ttl_ms / 1000 * (1 - SAFETY_FRACTION)

    async def acquire(self) -> bool:
        """Take the lock if it is free, or renew it if it is already ours."""
        asked_at = time.monotonic()
        if await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            self._extend_from(asked_at)
            return True
        return await self.renew()

    async def renew(self) -> bool:
        asked_at = time.monotonic()
        if int(await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms])):
            self._extend_from(asked_at)
            return True
        self._valid_until = 0.0
        return False

    async def release(self) -> None:
        self._valid_until = 0.0
        await self._release(keys=[self.key], args=[self.holder])

    async def current_holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return str(value) if value is not None else None
