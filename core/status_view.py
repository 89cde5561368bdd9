"""Status views: a committed status served as it stands for as long as deriving it again must agree.

Deriving costs ~33 µs a restaurant in Python (the Redis hash read and parsed, then the rules): a batch
of 1,000 took 35 ms alone and 20 clients queued for seconds. Yet between two changes of its facts and
two clock boundaries a restaurant's derived status stands still but for `last_seen`. So whoever
settles a restaurant (bridge, scheduler, API: `StatusService.settle`) stores beside the committed
status the status it just derived, with what it depends on (`view_of`):

- `wv`, the version of the facts it was derived from (written by `commit_status.lua`);
- `w`, "t0|until|window|c|l|devices": valid from t0 (µs) to the next clock boundary, for the same
  presence window, while each of the first c devices (connected at t0) is still heard and each of the
  next l (online but lapsed at t0) is still not; the last seen of all of them is filled in;
- `wj`, the status JSON with a NUL (never in JSON text) for `last_seen`, which heartbeats move and
  the reader fills in from the devices' `l:` fields.

`read_views.lua` serves a view only when all of that holds at the reader's instant, so a view is never
a cache that can go stale: every other restaurant of the batch is derived as before. A view is not
written where `until` is unknown or a search limit (hours open past the 8 days looked at): there the
status still changes with the clock alone.
"""

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache

from core.hours import SEARCH
from core.messages import DeviceState
from core.presence_store import PresenceStore, RestaurantSnapshot, load_script
from core.status import DerivedStatus, OfflineReason, next_clock_boundary

SPLIT_AT = ',"devices_connected":'
LAST_SEEN = '"last_seen":'


def micros(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000 + at.microsecond


def view_of(
    snap: RestaurantSnapshot, status: DerivedStatus, at: datetime, window: timedelta, status_json: str
) -> tuple[str, str] | None:
    """(meta, JSON) of the view of `status`, derived from `snap` at `at`; None where none may stand."""
    if snap.rules is None or status.since is None or status.until is None or status.until >= at + SEARCH:
        return None
    if any((d.changed_at is not None and d.changed_at > at) or (d.last_seen is not None and d.last_seen > at)
           for d in snap.devices):  # fmt: skip
        return None  # stamped ahead of `at` (another host's clock): the status would move when `at` reaches it
    if status.reason is OfflineReason.UNAVAILABLE:
        # Overlapping unavailabilities change the detail before the end of their union (`until`).
        till = next_clock_boundary(snap.rules, at)
        if till is None:
            return None
    else:
        # Open (or disconnected): `until` is the closing or the next unavailability, the first boundary.
        # Closed: nothing but the next opening changes the status.
        till = status.until
    online = [d for d in snap.devices if d.state is DeviceState.ONLINE]
    connected = [d.device_id for d in online if d.connected_at(at, window)]
    lapsed = [d.device_id for d in online if not d.connected_at(at, window)]
    offline = [d.device_id for d in snap.devices if d.state is not DeviceState.ONLINE]
    devices = " ".join([*connected, *lapsed, *offline])
    head, found, rest = status_json.partition(LAST_SEEN)
    tail = rest[rest.index(SPLIT_AT) :] if found else ""
    if not tail:
        return None
    window_us = window // timedelta(microseconds=1)
    meta = f"{micros(at)}|{micros(till)}|{window_us}|{len(connected)}|{len(lapsed)}|{devices}"
    return meta, f"{head}{LAST_SEEN}\0{tail}"


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """`datetime` from epoch milliseconds as pydantic writes it in JSON (no fraction on a whole second)."""
    seconds, rest = divmod(ms, 1000)
    return f'"{_second(seconds)}.{rest:03d}000Z"' if rest else f'"{_second(seconds)}Z"'


class StatusViews:
    """Reads the views of a batch in one script call; the caller derives the others."""

    def __init__(self, store: PresenceStore, window: timedelta) -> None:
        self.store = store
        self.window_us = window // timedelta(microseconds=1)
        self._read = load_script(store.redis, "read_views.lua")

    async def read(self, restaurant_ids: Sequence[str], now: datetime) -> list[str | None]:
        """Each id's status JSON as it would be derived at `now`, or None where it must be derived."""
        if not restaurant_ids:
            return []
        # Ids are checked (A-Z a-z 0-9 _ -) before they get here: a newline cannot be one of them.
        reply = await self._read(keys=[], args=[micros(now), self.window_us, self.store.key(""),
                                                "\n".join(restaurant_ids)])  # fmt: skip
        out: list[str | None] = []
        for i in range(0, len(reply), 2):
            text = reply[i]
            if text is None:
                out.append(None)
            else:
                seen = reply[i + 1]
                out.append(text.replace("\0", iso_ms(int(seen)) if seen else "null", 1))
        return out
