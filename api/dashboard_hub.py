"""One per API process: every restaurant's current status in memory, kept up to date from the feed's
Redis stream and fanned out to the connected dashboards.

The statuses are read from the MongoDB cold cache once (on the first dashboard), then replayed from
the stream, so a connect costs no database scan. Applying an entry and queueing it for every socket
happen with no await in between, and so does taking a snapshot and subscribing: a snapshot at seq S
therefore holds exactly the entries up to S, and its socket is queued exactly those after S.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from core.settings import Settings
from core.task_stop import cancel_and_wait
from feed.documents import DashboardStatus
from feed.stream import FeedStream, StreamEntry

logger = logging.getLogger(__name__)

PAGE = 5000  # stream entries or cache documents read per round trip
CHECK_EVERY_S = 1.0  # longest blocking read, so heartbeats and the stop are timely
RESET = object()  # queued for a socket that must take a new snapshot (reason in Subscriber.reset_reason)
CLOSED = object()  # queued when this process shuts down


class MissedTooOld(Exception):
    """What a reconnecting dashboard missed is no longer (or not yet) in the stream."""


@dataclass(eq=False)
class Subscriber:
    group: str | None
    after: int  # the socket has (or will be sent from the stream) everything up to this seq
    start: int  # the hub's head when it subscribed: live frames begin after this
    queue: asyncio.Queue[Any]
    reset_reason: str = ""


@dataclass(slots=True)
class Current:
    seq: int
    group: str | None
    status_json: str


def status_frame(seq: int, status_json: str) -> str:
    return f'{{"type":"status","seq":{seq},"status":{status_json}}}'


def reset_frame(reason: str) -> str:
    return json.dumps({"type": "reset", "reason": reason})


@dataclass
class DashboardHub:
    redis: Redis
    settings: Settings
    head: int = 0  # the seq the in-memory statuses are consistent with
    statuses: dict[str, Current] = field(default_factory=dict)
    subscribers: set[Subscriber] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.stream = FeedStream(self.redis, self.settings.redis_prefix)
        self._last_id = "0-0"
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def ensure_started(self) -> None:
        """Load the statuses and start following the stream, once, on the first dashboard."""
        if self._task is not None:
            return
        async with self._lock:
            if self._task is None:
                await self._load()
                self._task = asyncio.create_task(self._follow(), name="dashboard-hub")

    async def close(self) -> None:
        if self._task is not None:
            # Cancelled again if it ignores it: `_follow` loops around Redis reads, and on 3.11 a read can
            # swallow the cancellation (core/task_stop.py). A single cancel and gather once hung a test's
            # teardown for 120 s (fresh-clone make test, 2026-11-27).
            await cancel_and_wait([self._task])
        for sub in list(self.subscribers):
            self._replace_queued(sub, CLOSED)
        self.subscribers.clear()

    def snapshot(self, group: str | None) -> tuple[Subscriber, str]:
        """Subscribe and take the snapshot frame it continues from, in one step."""
        texts = [c.status_json for c in self.statuses.values() if group is None or c.group == group]
        frame = f'{{"type":"snapshot","seq":{self.head},"group":{json.dumps(group)},"statuses":[{",".join(texts)}]}}'
        return self._subscribe(group, self.head), frame

    def follow(self, group: str | None, since: int) -> Subscriber:
        """Subscribe a socket that has everything up to `since`; it reads (since, start] with `missed`."""
        return self._subscribe(group, since)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def missed(self, since: int, sub: Subscriber) -> AsyncIterator[list[str]]:
        """Frames of the entries after `since` up to the subscription's start, page by page, in order."""
        if since > sub.start:
            current = await self.stream.current_seq()
            if current is None or since > current:
                raise MissedTooOld(f"since={since} is ahead of the feed (at {current or 0})")
            return  # this process lags behind the feed; the live frames after `since` cover it
        expected = since + 1
        while expected <= sub.start:
            entries = await self.stream.read_range(expected, sub.start, PAGE)
            if not entries or entries[0].seq != expected:
                raise MissedTooOld(f"since={since} is older than the {self.settings.feed_stream_maxlen} changes kept")
            frames = []
            for entry in entries:
                if entry.seq != expected:
                    raise MissedTooOld("the feed's history has a gap")
                expected += 1
                if entry.concerns(sub.group):
                    frames.append(status_frame(entry.seq, entry.status_json))
            yield frames

    def _subscribe(self, group: str | None, after: int) -> Subscriber:
        sub = Subscriber(group, after, self.head, asyncio.Queue(maxsize=self.settings.dashboard_socket_queue))
        self.subscribers.add(sub)
        return sub

    def _offer(self, sub: Subscriber, frame: str) -> None:
        try:
            sub.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # A socket this far behind takes a new snapshot instead of holding ever more frames.
            self.subscribers.discard(sub)
            sub.reset_reason = "too slow: fell behind the live changes"
            self._replace_queued(sub, RESET)

    @staticmethod
    def _replace_queued(sub: Subscriber, item: object) -> None:
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(item)

    def _publish(self, entry: StreamEntry) -> None:
        self.statuses[entry.restaurant_id] = Current(entry.seq, entry.group, entry.status_json)
        self.head = entry.seq
        frame = status_frame(entry.seq, entry.status_json)
        for sub in list(self.subscribers):
            if entry.seq > sub.after and entry.concerns(sub.group):
                self._offer(sub, frame)

    def _heartbeat(self) -> None:
        for sub in list(self.subscribers):
            self._offer(sub, f'{{"type":"heartbeat","seq":{max(self.head, sub.after)}}}')

    async def _load(self) -> None:
        """The cold cache, then the whole stream over it (the newest seq per restaurant wins).

        The cache is read first: the worker writes it after the stream, so whatever it holds is in the
        stream too, or was trimmed from it long ago; statuses still on their way to it are in the stream.
        Built aside and swapped in at once, so a dashboard connecting meanwhile sees the old whole.
        """
        started = time.monotonic()
        statuses: dict[str, Current] = {}
        head = 0
        async for doc in DashboardStatus.get_pymongo_collection().find({}, batch_size=PAGE):
            group = doc.get("group")
            status_json = json.dumps({**doc["status"], "group": group}, separators=(",", ":"))
            statuses[doc["_id"]] = Current(int(doc["seq"]), group, status_json)
            head = max(head, int(doc["seq"]))
        cached, first, last_id = len(statuses), 1, "0-0"
        while entries := await self.stream.read_range(first, None, PAGE):
            for entry in entries:
                current = statuses.get(entry.restaurant_id)
                if current is None or entry.seq > current.seq:
                    statuses[entry.restaurant_id] = Current(entry.seq, entry.group, entry.status_json)
            first = entries[-1].seq + 1
            head, last_id = max(head, entries[-1].seq), f"{entries[-1].seq}-0"
        self.statuses, self.head, self._last_id = statuses, head, last_id
        logger.info(
            "dashboard hub loaded %d statuses (%d from the cache) at seq %d in %.2fs",
            len(statuses), cached, head, time.monotonic() - started,
        )  # fmt: skip

    async def _reload(self, reason: str) -> None:
        logger.warning("dashboard hub reloads: %s; every dashboard takes a new snapshot", reason)
        await self._load()
        for sub in list(self.subscribers):
            sub.reset_reason = reason
            self._replace_queued(sub, RESET)
        self.subscribers.clear()

    async def _follow(self) -> None:
        every = self.settings.dashboard_heartbeat_s
        next_beat = time.monotonic() + every
        delay = 0.2
        while True:
            try:
                wait_s = min(max(next_beat - time.monotonic(), 0.001), CHECK_EVERY_S)
                for _, entry in await self.stream.read_after(self._last_id, int(wait_s * 1000) or 1, PAGE):
                    if entry.seq > self.head + 1:
                        # Missed entries: trimmed while this process lagged, or the counter restarted.
                        await self._reload(f"the feed jumped from seq {self.head} to {entry.seq}")
                        break
                    self._last_id = f"{entry.seq}-0"
                    if entry.seq > self.head:
                        self._publish(entry)
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + every
                    current = await self.stream.current_seq()
                    if current is not None and current < self.head:
                        await self._reload(f"the feed restarted below seq {self.head}")
                    self._heartbeat()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if delay == 0.2:
                    logger.warning("dashboard hub cannot read the feed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
