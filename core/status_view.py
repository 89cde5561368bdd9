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

from pydantic import TypeAdapter

from core.hours import SEARCH, open_intervals
from core.messages import DeviceState
from core.presence_store import PresenceStore, RestaurantSnapshot, load_script
from core.status import (
    DerivedStatus,
    OfflineReason,
    next_clock_boundary,
    next_unavailability_start,
    unavailable_until,
)

SPLIT_AT = ',"devices_connected":'
LAST_SEEN = ',"last_seen":'
UNTIL = '"until":'
SEEN = "\0"  # where the reader writes last_seen (NUL is never in JSON text)
MOVING = "\1"  # where the reader writes until = now + SEARCH (hours open all week)
NEVER_CLOSES = SEARCH + timedelta(days=1)  # weekly hours with no closing in 9 days have none at all
_UNTIL_JSON = TypeAdapter(datetime)


def micros(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000 + at.microsecond


def view_of(
    snap: RestaurantSnapshot, status: DerivedStatus, at: datetime, window: timedelta, status_json: str
) -> tuple[str, str] | None:
    """(meta, JSON) of the view of `status`, derived from `snap` at `at`; None where none may stand."""
    rules = snap.rules
    if rules is None or status.since is None or status.until is None:
        return None
    if any((d.changed_at is not None and d.changed_at > at) or (d.last_seen is not None and d.last_seen > at)
           for d in snap.devices):  # fmt: skip
        return None  # stamped ahead of `at` (another host's clock): the status would move when `at` reaches it
    moving = status.until == at + SEARCH
    if moving:
        # `until` is the end of the days looked at, not a boundary: open all week (never closing), and
        # no unavailability starting or ending sooner. It reads `now + SEARCH` while that holds, so the
        # reader writes it in, until the cap (the next unavailability, or the end of the one under way)
        # comes within SEARCH.
        if open_intervals(rules.hours, rules.timezone, at, at + NEVER_CLOSES) != [(at, at + NEVER_CLOSES)]:
            return None
        if status.reason is OfflineReason.UNAVAILABLE:
            cap: datetime | None = unavailable_until(rules.unavailabilities, at)
        else:
            cap = next_unavailability_start(rules.unavailabilities, at)
        boundary = next_clock_boundary(rules, at)
        till = min(t for t in (boundary, cap - SEARCH if cap else None, at + SEARCH) if t is not None)
    elif status.until > at + SEARCH:
        return None
    elif status.reason is OfflineReason.UNAVAILABLE:
        # Overlapping unavailabilities change the detail before the end of their union (`until`).
        till = next_clock_boundary(rules, at) or at
    else:
        # Open (or disconnected): `until` is the closing or the next unavailability, the first boundary.
        # Closed: nothing but the next opening changes the status.
        till = status.until
    if till <= at:
        return None
    online = [d for d in snap.devices if d.state is DeviceState.ONLINE]
    connected = [d.device_id for d in online if d.connected_at(at, window)]
    lapsed = [d.device_id for d in online if not d.connected_at(at, window)]
    offline = [d.device_id for d in snap.devices if d.state is not DeviceState.ONLINE]
    devices = " ".join([*connected, *lapsed, *offline])
    # Field order: …, "until", "last_seen", "devices_connected" (DerivedStatus).
    head, found, rest = status_json.partition(UNTIL)
    until, found_too, rest = rest.partition(LAST_SEEN)
    if not (found and found_too) or SPLIT_AT not in rest:
        return None
    tail = rest[rest.index(SPLIT_AT) :]
    window_us = window // timedelta(microseconds=1)
    meta = f"{micros(at)}|{micros(till)}|{window_us}|{len(connected)}|{len(lapsed)}|{devices}"
    return meta, f"{head}{UNTIL}{MOVING if moving else until}{LAST_SEEN}{SEEN}{tail}"


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
        moving = _UNTIL_JSON.dump_json(now + SEARCH).decode()  # as DerivedStatus writes it
        out: list[str | None] = []
        for i in range(0, len(reply), 2):
            text = reply[i]
            if text is None:
                out.append(None)
            else:
                seen = reply[i + 1]
                text = text.replace(SEEN, iso_ms(int(seen)) if seen else "null", 1)
                out.append(text.replace(MOVING, moving, 1) if MOVING in text else text)
        return out
