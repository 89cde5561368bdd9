"""A restaurant moved to another group: its tile moves on every dashboard at once.

The feed sequences STATUS_CHANGED events, and a group change is not a status change: a dashboard kept
the tile in its old group until the restaurant's next transition. So the API, once the new group is in
MongoDB and in the Redis profile (where the feed worker reads groups), appends the restaurant's
committed status with the new group to the feed stream, and sets the group in the cold cache.

The entry also names the group the restaurant left (`pg`): a dashboard filtered by that group gets the
frame too, sees a status of another group, and drops the tile.

The feed worker reads groups from the profiles a batch before it appends. A STATUS_CHANGED it read
the old group for just before the move, and appended just after this entry, took the tile back to the
old group until the restaurant's next status. So the move is also kept for MOVED_TTL_S under the feed's
keys, and the append script names that group instead of the one the worker read: any entry after
this one names the new group. A status sequenced between the move's read of the committed status and
its append is appended again after it (`Regrouper.moved`).
"""

import json
import logging

from core.presence_store import PresenceStore
from core.settings import Settings
from feed.documents import DashboardStatus
from feed.stream import MOVED_TTL_S, FeedKeys

logger = logging.getLogger(__name__)

APPENDS_AT_MOST = 3

# KEYS: seq counter, stream, the restaurant's recent move. ARGV: restaurant id, group, group left ("" for
# none), entry JSON, stream length kept, how long the move overrides the feed worker's group (s).
# No counter (the feed has not started, or Redis lost it): nothing appended, 0; an API process that
# loads later reads the group from the cold cache.
REGROUP_LUA = """
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',
           'r', ARGV[1], 'g', ARGV[2], 'pg', ARGV[3], 'd', ARGV[4])
return seq
"""


class Regrouper:
    def __init__(self, store: PresenceStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.keys = FeedKeys(settings.redis_prefix)
        self._append = store.redis.register_script(REGROUP_LUA)

    async def moved(self, restaurant_id: str, left: str | None, group: str) -> int:
        """Announce the move on the feed; returns the last entry's seq (0: nothing appended).

        The committed status is read before the append, and the restaurant's hash and the feed's keys
        are in different cluster slots, so one script cannot do both. A status committed and sequenced
        in between (a RabbitMQ round trip within one Redis round trip) would be followed by the older
        one read here, until the restaurant's next status. So the status is read again after the append,
        and appended again, with the new group, while it has moved on (a few times at most: statuses
        change seconds apart, not microseconds).
        """
        key = self.store.key(restaurant_id)
        seq, appended = 0, None
        try:
            for _ in range(APPENDS_AT_MOST):
                committed = await self.store.redis.hget(key, "s")
                if committed is None or committed == appended:
                    break  # none yet (its first status will carry the group), or the one just appended
                entry = json.dumps({**json.loads(committed), "group": group}, separators=(",", ":"))
                args: list[str | int] = [restaurant_id, group, left or "", entry, self.settings.feed_stream_maxlen,
                                         MOVED_TTL_S]  # fmt: skip
                seq = int(await self._append(keys=[self.keys.seq, self.keys.stream, self.keys.moved(restaurant_id)],
                                             args=args))  # fmt: skip
                if seq == 0:
                    break  # no feed counter: the cold cache tells the next dashboard
                appended = committed
        finally:
            # After the appends: the feed worker's cache write of a status it sequenced before the move (with
            # the group it read before) is then most likely in already, and this one is not undone by it.
            await DashboardStatus.get_pymongo_collection().update_one({"_id": restaurant_id},
                                                                      {"$set": {"group": group}})  # fmt: skip
        logger.info("restaurant %s moved from group %s to %s (feed seq %d)", restaurant_id, left, group, seq)
        return seq
