"""The restaurants due for a status check, by time: a Redis sorted set the scheduler drains.

Members are restaurant ids, scores the epoch milliseconds of their next clock boundary (opening,
closing, an unavailability's start or end). Anyone who changes a profile calls `mark_now`; the
scheduler `claim`s what is due (the claim is a lease, so a scheduler that dies mid-batch leaves the
restaurants to be claimed again), settles them, and `reschedule`s each at its next boundary.
"""

from collections.abc import Iterable, Mapping, Sequence

from redis.asyncio import Redis

from core.presence_store import now_ms

# ARGV: now_ms, lease_until_ms, limit → the claimed ids with the times they were due (flat), re-scored to
# the lease's end.
CLAIM = """
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "WITHSCORES", "LIMIT", 0, tonumber(ARGV[3]))
for i = 1, #due, 2 do
  redis.call("ZADD", KEYS[1], "XX", ARGV[2], due[i])
end
return due
"""

# ARGV: lease_until_ms, then (id, next_ms) pairs; next_ms "" drops the id (no boundary ahead).
# An id marked due meanwhile (its score moved off the lease) keeps the earlier of the two times.
RESCHEDULE = """
for i = 2, #ARGV, 2 do
  local id, nxt = ARGV[i], ARGV[i + 1]
  local current = redis.call("ZSCORE", KEYS[1], id)
  if current == false or current == ARGV[1] then
    if nxt == "" then
      redis.call("ZREM", KEYS[1], id)
    else
      redis.call("ZADD", KEYS[1], nxt, id)
    end
  elseif nxt ~= "" then
    redis.call("ZADD", KEYS[1], "LT", nxt, id)
  end
end
return 0
"""


class ClockQueue:
    def __init__(self, redis: Redis, prefix: str) -> None:
        """`redis` must be opened with decode_responses=True."""
        self.redis = redis
        self.key = f"{prefix}due"
        self.wake_channel = f"{prefix}due:wake"
        self._claim = redis.register_script(CLAIM)
        self._reschedule = redis.register_script(RESCHEDULE)

    async def mark_now(self, restaurant_ids: Iterable[str]) -> None:
        """Due at once (a profile changed); wakes the scheduler through a pub/sub message."""
        ids = list(restaurant_ids)
        if not ids:
            return
        at = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, dict.fromkeys(ids, at), lt=True)  # LT still adds missing members
            pipe.publish(self.wake_channel, str(at))
            await pipe.execute()

    async def schedule(self, due: Mapping[str, int]) -> None:
        """Set each restaurant's next boundary (ms), keeping an earlier time already queued."""
        if due:
            await self.redis.zadd(self.key, dict(due), lt=True)  # LT still adds missing members

    async def claim(self, now: int, lease_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` restaurants due by `now`, earliest first, each with the instant it was due (ms)."""
        due = await self._claim(keys=[self.key], args=[now, now + lease_ms, limit])
        return [(str(due[i]), int(float(due[i + 1]))) for i in range(0, len(due), 2)]

    async def reschedule(self, lease_until: int, next_due: Sequence[tuple[str, int | None]]) -> None:
        args: list[str | int] = [lease_until]
        for rid, nxt in next_due:
            args += [rid, "" if nxt is None else nxt]
        if len(args) > 1:
            await self._reschedule(keys=[self.key], args=args)

    async def next_due(self) -> int | None:
        first = await self.redis.zrange(self.key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def size(self) -> int:
        return int(await self.redis.zcard(self.key))
