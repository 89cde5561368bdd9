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

A view is served only when all of that holds at the reader's instant (`ViewFacts.serve`), so a view is
never a cache that can go stale: every other restaurant of the batch is derived as before. The API keeps
a copy of the views' facts (core/view_cache.py), dropped whenever Redis reports their hash changed. A
view is not written where `until` is unknown or a search limit (hours open past the 8 days looked at):
there the status still changes with the clock alone.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import TypeAdapter

from core.hours import SEARCH, opening_end
from core.messages import DeviceState
from core.presence_store import PresenceStore, RestaurantSnapshot, load_script
from core.status import (
    DerivedStatus,
    OfflineReason,
    next_clock_boundary,
    next_unavailability_start,
    unavailable_until,
)
from core.view_cache import MISSING, ViewCache
from core.view_facts import MOVING, SEEN, ViewFacts, parse_facts

SPLIT_AT = ',"devices_connected":'
LAST_SEEN = ',"last_seen":'
UNTIL = '"until":'
NEVER_CLOSES = SEARCH + timedelta(days=1)  # open 9 days on: no weekly closing, or one a DST change skipped
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
        # `until` is the end of the days looked at, not a boundary: open all week, and no unavailability
        # starting or ending sooner. It reads `now + SEARCH` while that holds, so the reader writes it in,
        # until the cap (the next unavailability, or the end of the one under way) or the closing comes
        # within SEARCH. Weekly hours open 9 days do close where a DST change skipped the hour of their
        # weekly closing: two weeks after the one before, within SEARCH of a view a few days old.
        closes = opening_end(rules.hours, rules.timezone, at)
        if closes is None or closes < at + NEVER_CLOSES:
            return None
        if status.reason is OfflineReason.UNAVAILABLE:
            cap: datetime | None = unavailable_until(rules.unavailabilities, at)
        else:
            cap = next_unavailability_start(rules.unavailabilities, at)
        boundary = next_clock_boundary(rules, at)
        till = min(t for t in (boundary, cap - SEARCH if cap else None, closes - SEARCH, at + SEARCH) if t is not None)
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


class StatusViews:
    """Reads the views of a batch, from the API's copy where it holds them (core/view_cache.py), else
    in one script call; whether each still stands is decided here, at the reader's instant."""

    def __init__(self, store: PresenceStore, window: timedelta) -> None:
        self.store = store
        self.window_us = window // timedelta(microseconds=1)
        self._read = load_script(store.redis, "view_facts.lua")
        # Off until the API runs it (`cache.run()`): the bridge and the scheduler only write views.
        self.cache = ViewCache(store.redis, store.key(""), self.window_us)

    async def read(self, restaurant_ids: Sequence[str], now: datetime) -> list[str | None]:
        """Each id's status JSON as it would be derived at `now`, or None where it must be derived."""
        if not restaurant_ids:
            return []
        cache = self.cache
        now_us = micros(now)
        synced = await cache.synced()
        held = cache.standing(restaurant_ids, now_us) if synced else None
        if held is not None and None not in held:
            return held  # every view standing as the copy holds it: the usual batch
        if held is None:
            out: list[str | None] = [None] * len(restaurant_ids)
            places: Sequence[int] = range(len(restaurant_ids))
            ids = restaurant_ids
        else:
            out = held
            places = [i for i, text in enumerate(held) if text is None]
            ids = [restaurant_ids[i] for i in places]
        facts = cache.lookup(ids) if synced else [MISSING] * len(ids)
        missing = [rid for rid, fact in zip(ids, facts, strict=True) if fact is MISSING]
        if missing:
            ticket = cache.expect(missing)
            # Ids are checked (A-Z a-z 0-9 _ -) before they get here: a newline cannot be one of them.
            reply = await self._read(keys=[], args=[self.store.key(""), "\n".join(missing)])
            read = [parse_facts(*reply[i : i + 3]) for i in range(0, len(reply), 3)]
            cache.keep(ticket, missing, read)
            answers = iter(read)
            facts = [next(answers) if fact is MISSING else fact for fact in facts]
        window_us = self.window_us
        moving = _UNTIL_JSON.dump_json(now + SEARCH).decode()  # as DerivedStatus writes it
        for place, fact in zip(places, facts, strict=True):
            if not isinstance(fact, ViewFacts):
                continue
            if fact.lo <= now_us < fact.hi and fact.window == window_us:  # ViewFacts.serve's first test
                out[place] = fact.shown.replace(MOVING, moving, 1) if fact.moving else fact.shown
            else:  # outside the stretch: the rule itself (serve would test the stretch again first)
                text = fact.judge(now_us, window_us)
                out[place] = text.replace(MOVING, moving, 1) if text is not None and MOVING in text else text
        return out
