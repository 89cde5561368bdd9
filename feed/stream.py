"""The sequenced status stream in Redis: written by the feed worker, read by every API process.

Every key carries the `{feed}` hash tag: a global sequence lives in one slot on Redis Cluster too, and
the append script touches only keys of that slot. Stream entry ids are `<seq>-0`, so a range of
sequence numbers is a range of ids and the stream's trimming is the only limit on what is kept.
"""

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# Outcomes of APPEND_LUA.
SEQUENCED, DUPLICATE, STALE, NO_COUNTER = 1, 2, 3, -1
# How long a move's group overrides the group the feed worker read from the profile: far longer than
# a batch takes from reading the groups to appending (one round trip each; retried from the read).
MOVED_TTL_S = 60

# KEYS: seq counter, stream, latest ts per restaurant (hash), this event's marker, the restaurant's
# recent move (feed/regroup.py).
# ARGV: restaurant id, ts (µs), group read by the worker ("" for none), the status JSON (an object
# without "group"), stream length kept, marker ttl (s).
# Returns {outcome, seq, group the entry names}. A group moved by the API in the last MOVED_TTL_S wins
# over the worker's: it may have read the profile just before the move, and its entry would otherwise
# follow the move's in the stream with the old group.
APPEND_LUA = """
local seen = redis.call('GET', KEYS[4])
if seen then return {2, tonumber(seen), ''} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, ''} end
local latest = redis.call('HGET', KEYS[3], ARGV[1])
if latest and tonumber(latest) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[4], 0, 'EX', ARGV[6])
  return {3, 0, ''}
end
local group = redis.call('GET', KEYS[5]) or ARGV[3]
local named = 'null'
if group ~= '' then named = cjson.encode(group) end
local entry = string.sub(ARGV[4], 1, -2) .. ',"group":' .. named .. '}'
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'r', ARGV[1], 'g', group, 'd', entry)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('SET', KEYS[4], seq, 'EX', ARGV[6])
return {1, seq, group}
"""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    seq: int
    restaurant_id: str
    group: str | None
    status_json: str  # DerivedStatus JSON with "group", as sent to dashboards
    left_group: str | None = None  # set when the entry moves the restaurant out of that group (feed/regroup.py)

    def concerns(self, group: str | None) -> bool:
        """Whether a dashboard filtered by `group` (None: every group) gets this entry."""
        return group is None or group == self.group or group == self.left_group


def seq_of(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def entry_from_redis(entry_id: str, fields: dict[str, str]) -> StreamEntry:
    return StreamEntry(seq_of(entry_id), fields["r"], fields.get("g") or None, fields["d"], fields.get("pg") or None)


class FeedKeys:
    def __init__(self, prefix: str) -> None:
        self.seq = f"{prefix}{{feed}}:seq"
        self.stream = f"{prefix}{{feed}}:stream"
        self.latest = f"{prefix}{{feed}}:ts"
        self._event = f"{prefix}{{feed}}:e:"
        self._moved = f"{prefix}{{feed}}:m:"

    def event(self, event_id: str) -> str:
        return self._event + event_id

    def moved(self, restaurant_id: str) -> str:
        """The group a restaurant was moved to in the last MOVED_TTL_S ("" for none)."""
        return self._moved + restaurant_id


class FeedStream:
    """Reads of the stream shared by the worker and the API (a client with `decode_responses=True`)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = FeedKeys(prefix)

    def append_script(self) -> AsyncScript:
        return self.redis.register_script(APPEND_LUA)

    async def current_seq(self) -> int | None:
        """The last sequence number given out, or None when Redis has none (new or lost)."""
        raw = await self.redis.get(self.keys.seq)
        return int(raw) if raw is not None else None

    async def last_entry_seq(self) -> int:
        newest: Any = await self.redis.xrevrange(self.keys.stream, count=1)
        return seq_of(newest[0][0]) if newest else 0

    async def read_range(self, first: int, last: int | None = None, count: int = 1000) -> list[StreamEntry]:
        """Up to `count` entries with first <= seq (<= last)."""
        end = "+" if last is None else f"{last}-0"
        rows: Any = await self.redis.xrange(self.keys.stream, min=f"{first}-0", max=end, count=count)
        return [entry_from_redis(entry_id, fields) for entry_id, fields in rows]

    async def read_after(self, last_id: str, block_ms: int, count: int = 1000) -> list[tuple[str, StreamEntry]]:
        """Entries after stream id `last_id`, waiting up to `block_ms` for the first."""
        reply: Any = await self.redis.xread({self.keys.stream: last_id}, count=count, block=block_ms)
        if not reply:
            return []
        # RESP3 (redis-py's default) answers {stream: rows}, RESP2 [[stream, rows]].
        rows = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [(entry_id, entry_from_redis(entry_id, fields)) for entry_id, fields in rows]
