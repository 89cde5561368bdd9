"""The Redis side of presence: one hash per restaurant, changed only by single-key Lua scripts."""

import itertools
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core.messages import DeviceState, Event
from core.status import DerivedStatus, DeviceFact, RestaurantRules
from core.status_codec import rules_from_json

STATUS_OUTBOX = "m"  # the retained `restaurants/{rid}/status` still to publish

View = tuple[str, str] | None  # a status view's meta and JSON (core/status_view.py)
NO_VIEW = ("", "")


@lru_cache(maxsize=200_000)
def parse_profile(raw: str) -> tuple[RestaurantRules, str | None]:
    """Cached by the stored text: profiles change rarely and are read on every status."""
    profile = json.loads(raw)
    return rules_from_json(profile), profile.get("group")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def from_ms(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


_FIELD_SEQUENCE = itertools.count()


def outbox_field() -> str:
    """Outbox fields sort by creation time, so recovery republishes in order.

    The process's own sequence number breaks ties within a millisecond: with RabbitMQ away, a device
    event and the STATUS_CHANGED it caused can be committed in the same one, and a random tie-break
    then published the status first. (Between processes a millisecond apart means no order anyway.)
    """
    return f"o:{now_ms():013d}:{next_field_sequence()}:{uuid.uuid4().hex}"


def next_field_sequence() -> str:
    return f"{next(_FIELD_SEQUENCE):012d}"


@dataclass(slots=True)
class RestaurantSnapshot:
    """Everything Redis holds of one restaurant, read in one HGETALL."""

    restaurant_id: str
    version: int = 0
    rules: RestaurantRules | None = None
    group: str | None = None
    devices: list[DeviceFact] = field(default_factory=list)
    last_status: DerivedStatus | None = None
    outbox: dict[str, str] = field(default_factory=dict)
    pending_status: str | None = None

    @classmethod
    def from_hash(cls, restaurant_id: str, raw: dict[str, str]) -> "RestaurantSnapshot":
        snap = cls(restaurant_id, version=int(raw.get("v", 0)))
        if "p" in raw:
            snap.rules, snap.group = parse_profile(raw["p"])
        if "s" in raw:
            snap.last_status = DerivedStatus.model_validate_json(raw["s"])
        snap.pending_status = raw.get(STATUS_OUTBOX)
        for name, value in raw.items():
            if name.startswith("d:"):
                did = name[2:]
                epoch, state, changed, _stale = value.split("|")
                seen = raw.get(f"l:{did}")
                snap.devices.append(
                    DeviceFact(
                        device_id=did,
                        epoch=int(epoch),
                        state=DeviceState(state),
                        last_seen=from_ms(seen) if seen else None,
                        changed_at=from_ms(changed),
                    )
                )
            elif name.startswith("o:"):
                snap.outbox[name] = value
        return snap


UNSETTLED = 3  # a script's code: the restaurant has facts no commit has settled yet; nothing was done


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """code 0 ignored, 1 stored, 2 device transition (its event in `outbox_field`), or UNSETTLED: then
    `version` is the instant (ms) of the newest unsettled fact, as of which to settle the restaurant."""

    code: int
    version: int
    outbox_field: str | None = None
    event: Event | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome:
    ignored: int
    transitions: list[tuple[str, ScriptResult]]
    unsettled: dict[int, int] = field(default_factory=dict)  # index in the batch: newest unsettled fact, ms


def load_script(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(resources.files("core.lua").joinpath(name).read_text())


class PresenceStore:
    """Reads and writes restaurant hashes; every write is one script on one key (cluster-safe)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        """`redis` must be opened with decode_responses=True."""
        self.redis = redis
        self.prefix = prefix
        self.heartbeat_index = f"{prefix}hb"
        self._apply = load_script(redis, "apply_presence.lua")
        self._heartbeat_batch = load_script(redis, "heartbeat_batch.lua")
        self._stale = load_script(redis, "mark_stale.lua")
        self._commit = load_script(redis, "commit_status.lua")
        self._sweep_remove = load_script(redis, "sweep_remove.lua")
        self._clear_if_equal = load_script(redis, "clear_if_equal.lua")
        self._guard_keys: list[str] = []  # `guard_commits`
        self._guard_args: list[str] = []

    def guard_commits(self, marker: str, rebuilding: str, instance: str) -> None:
        """From now on a commit needs `marker` in Redis and no `rebuilding` but `instance`'s (-2 otherwise)."""
        self._guard_keys = [marker, rebuilding]
        self._guard_args = [instance]

    def key(self, restaurant_id: str) -> str:
        return f"{self.prefix}r:{restaurant_id}"

    async def snapshots(self, restaurant_ids: Sequence[str]) -> list[RestaurantSnapshot]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in restaurant_ids:
                pipe.hgetall(self.key(rid))
            raws: list[dict[str, str]] = await pipe.execute()
        return [RestaurantSnapshot.from_hash(rid, raw) for rid, raw in zip(restaurant_ids, raws, strict=True)]

    async def snapshot(self, restaurant_id: str) -> RestaurantSnapshot:
        return (await self.snapshots([restaurant_id]))[0]

    async def lacking_profile(self, restaurant_ids: Sequence[str]) -> list[str]:
        """The ids whose hash holds no profile: one HEXISTS each, in one round trip, nothing parsed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in restaurant_ids:
                pipe.hexists(self.key(rid), "p")
            held: list[int] = await pipe.execute()
        return [rid for rid, has in zip(restaurant_ids, held, strict=True) if not has]

    async def put_profiles(self, profiles: dict[str, str]) -> None:
        """Mirror profiles from MongoDB in one round trip; a profile Redis already holds is kept."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, profile in profiles.items():
                pipe.hsetnx(self.key(rid), "p", profile)
            await pipe.execute()

    async def set_profiles(self, profiles: dict[str, str]) -> None:
        """Replace profiles after a change in MongoDB (hours, zone, group, unavailabilities).

        The version is bumped with it, so a status being committed from the old profile at this very
        moment fails its optimistic check and is recomputed with the new one.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            for rid, profile in profiles.items():
                pipe.hset(self.key(rid), "p", profile)
                pipe.hincrby(self.key(rid), "v", 1)
            await pipe.execute()

    async def restore_statuses(self, statuses: dict[str, DerivedStatus]) -> None:
        """Put back last committed statuses (read from the brokers' retained copies) where Redis has none.

        After Redis comes back empty, the retained `restaurants/{rid}/status` is the platform's last
        word on each restaurant: restoring it keeps an unchanged restaurant from being announced again.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, status in statuses.items():
                pipe.hsetnx(self.key(rid), "s", status.model_dump_json())
                pipe.hsetnx(self.key(rid), "sc", status.core.model_dump_json())
            await pipe.execute()

    async def apply_presence(
        self,
        events: Iterable[tuple[str, str, int, DeviceState, Event]],
        at_ms: int | None = None,
        stamps: Sequence[int] | None = None,
        settled_first: bool = False,
    ) -> list[ScriptResult]:
        """Apply (rid, did, epoch, state, transition event) tuples in one pipeline.

        Each is stamped `at_ms` (default now), or with `stamps` each its own instant (the bridge's
        receipt of each message). With `settled_first`, a restaurant whose earlier facts no commit has
        settled yet gets UNSETTLED and nothing else (apply_presence.lua).
        """
        items = list(events)
        at = at_ms or now_ms()
        times = [str(t) for t in stamps] if stamps is not None else [str(at)] * len(items)
        fields = [outbox_field() for _ in items]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (rid, did, epoch, state, event), name, when in zip(items, fields, times, strict=True):
                await self._apply(
                    keys=[self.key(rid), self.heartbeat_index],
                    args=[did, epoch, state.value, when, name, event.model_dump_json(), f"{rid}/{did}",
                          int(settled_first)],
                    client=pipe,
                )
            raw = await pipe.execute()
        return self._results(raw, items, fields, lambda item: item[4])

    async def heartbeats(
        self,
        beats: Sequence[tuple[str, str, int]],
        at_ms: int | None = None,
        window_ms: int = 0,
        settled_first: bool = False,
    ) -> HeartbeatOutcome:
        """Refresh last_seen of (rid, did, epoch) heartbeats in one script call.

        With `window_ms`, a heartbeat after a silence longer than the window is a transition even when
        the sweep has not flagged the device stale yet (see heartbeat_batch.lua). With `settled_first`,
        the heartbeats of restaurants with unsettled facts are left undone (`HeartbeatOutcome.unsettled`).

        Heartbeats are the bulk of the traffic (3.3k/s for 100k devices, more in bursts), so they go
        as one multi-key call rather than one script per heartbeat: that is what lets one bridge
        process ingest well over 25k/s. On Redis Cluster the caller splits batches by hash slot.
        """
        if not beats:
            return HeartbeatOutcome(0, [])
        at = at_ms or now_ms()
        base = str(uuid.uuid4())[:-4]
        each = "\n".join([f"{did} {epoch}" for _rid, did, epoch in beats])
        args: list[str | int] = [at, from_ms(at).isoformat(), base, len(self.prefix), window_ms, next_field_sequence(),
                                 int(settled_first), each]  # fmt: skip
        reply = await self._heartbeat_batch(
            keys=[self.heartbeat_index, *(self.key(rid) for rid, _, _ in beats)], args=args
        )
        transitions = []
        unsettled: dict[int, int] = {}
        for i in range(1, len(reply), 3):
            index = int(reply[i])
            if index < 0:
                unsettled[-index - 1] = int(reply[i + 1])
                continue
            event = Event.model_validate_json(reply[i + 2])
            transitions.append((beats[index - 1][0], ScriptResult(2, 0, str(reply[i + 1]), event)))
        return HeartbeatOutcome(int(reply[0]), transitions, unsettled)

    async def stale_candidates(self, cutoff_ms: int, limit: int = 5000) -> list[tuple[str, str, int]]:
        rows = await self.redis.zrangebyscore(
            self.heartbeat_index, "-inf", cutoff_ms, start=0, num=limit, withscores=True
        )
        out: list[tuple[str, str, int]] = []
        for row in rows:
            member, score = row[0], row[1]  # the client decodes responses: member is "rid/did"
            rid, _, did = str(member).partition("/")
            out.append((rid, did, int(score)))
        return out

    async def mark_stale(
        self, candidates: Sequence[tuple[str, str, int, Event]], cutoff_ms: int, settled_first: bool = False
    ) -> list[ScriptResult]:
        """Flag stale the (rid, did, index score, event) devices still unheard at `cutoff_ms`; each leaves the
        index whatever the verdict. `settled_first`: see `apply_presence` (UNSETTLED: not flagged)."""
        at = str(now_ms())
        fields = [outbox_field() for _ in candidates]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (rid, did, score, event), name in zip(candidates, fields, strict=True):
                await self._stale(
                    keys=[self.key(rid)], args=[did, cutoff_ms, at, name, event.model_dump_json(), int(settled_first)],
                    client=pipe,
                )
                # Leave the index whatever the verdict; a later heartbeat puts the device back.
                await self._sweep_remove(keys=[self.heartbeat_index], args=[f"{rid}/{did}", score], client=pipe)
            raw = await pipe.execute()
        return self._results(raw, list(candidates), fields, lambda item: item[3])

    async def commit_status(
        self,
        restaurant_id: str,
        version: int,
        status: DerivedStatus,
        event: Event,
        view: View = None,
        status_json: str | None = None,
    ) -> tuple[int, str]:
        """-2: refused by the guard (`guard_commits`); -1: the facts moved on (recompute); 0: no transition;
        1: committed with its outbox entry. `view` (core/status_view.py) is stored with 0 and 1.
        `status_json`, if the caller has it, must be `status.model_dump_json()`: `commit_statuses` of one."""
        commit = (restaurant_id, version, status, event, view, status_json or status.model_dump_json())
        code, name, _ = (await self.commit_statuses([commit]))[0]
        if isinstance(code, Exception):
            raise code
        return code, name

    async def commit_statuses(
        self, commits: Sequence[tuple[str, int, DerivedStatus, Event, View, str]]
    ) -> list[tuple[int | Exception, str, str]]:
        """`commit_status` for many (rid, version, status, event, view, status json) in one round trip.

        A plain pipeline, not a transaction: every script is its own compare-and-set on its own key
        (cluster-safe), and one that fails is returned as its exception without failing the others.
        Returns (code, outbox field, status json) for each, in order.
        """
        names = [outbox_field() for _ in commits]
        statuses = [status_json for *_, status_json in commits]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (rid, version, status, event, view, status_json), name in zip(commits, names, strict=True):
                await self._commit(
                    keys=[self.key(rid), *self._guard_keys],
                    args=[version, status.core.model_dump_json(), status_json, name, event.model_dump_json(),
                          STATUS_OUTBOX, *(view or NO_VIEW), *self._guard_args],
                    client=pipe,
                )  # fmt: skip
            replies = await pipe.execute(raise_on_error=False) if commits else []
        return [
            (reply if isinstance(reply, Exception) else int(reply), name, status_json)
            for reply, name, status_json in zip(replies, names, statuses, strict=True)
        ]

    async def clear_outbox(self, restaurant_id: str, names: Sequence[str]) -> None:
        if names:
            await self.redis.hdel(self.key(restaurant_id), *names)

    async def clear_outboxes(self, published: Sequence[tuple[str, Sequence[str]]]) -> None:
        """`clear_outbox` for many restaurants in one pipeline."""
        if not published:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, names in published:
                if names:
                    pipe.hdel(self.key(rid), *names)
            await pipe.execute()

    async def clear_status_outbox(self, restaurant_id: str, published: str) -> list[tuple[str, str]]:
        """Forget the retained status only if no newer one was queued meanwhile (`clear_status_outboxes`)."""
        return await self.clear_status_outboxes([(restaurant_id, published)])

    async def clear_status_outboxes(self, published: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """After the broker acknowledged these retained statuses: forget each that is still the one queued.

        Returns (restaurant, committed status) where the committed status is no longer the one
        acknowledged: another writer committed a newer one, and its retained copy may have reached the
        broker first (bridge and scheduler publish on connections of their own), leaving the older one
        retained. The caller publishes the committed one again, and checks it likewise once acknowledged:
        whoever lands last then reads the committed status after landing, so the broker ends up with it.
        One compare-and-delete script each, pipelined.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, payload in published:
                await self._clear_if_equal(keys=[self.key(rid)], args=[STATUS_OUTBOX, payload], client=pipe)
            replies = await pipe.execute()
        again: list[tuple[str, str]] = []
        for (rid, _), reply in zip(published, replies, strict=True):
            if isinstance(reply, str):
                again.append((rid, reply))
        return again

    async def restaurant_ids(self, batch: int = 1000) -> list[str]:
        start = len(self.prefix) + 2
        return [key[start:] async for key in self.redis.scan_iter(match=f"{self.prefix}r:*", count=batch)]

    @staticmethod
    def _results(raw: list[Any], items: list[Any], fields: list[str], event_of: Any) -> list[ScriptResult]:
        results: list[ScriptResult] = []
        scripts = [r for r in raw if isinstance(r, list)]
        for reply, item, name in zip(scripts, items, fields, strict=True):
            code, version = int(reply[0]), int(reply[1])
            if code == 2:
                results.append(ScriptResult(code, version, name, event_of(item)))
            else:
                results.append(ScriptResult(code, version))
        return results
