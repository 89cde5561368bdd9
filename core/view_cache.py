"""The API's copy of restaurants' view facts, dropped as soon as Redis says their hash changed.

Why: 20 clients asking 1,000 statuses each, every 20 ms, is a million statuses a second. Reading the
views from Redis took 15–18 ms of Redis time per 1,000 on two cores before anything else was done;
kept in the API, a standing view is a dictionary read and a few comparisons (core/view_facts.py).

How the copy stays true (Redis "client-side caching", broadcasting mode):
- A dedicated connection is subscribed to `__redis__:invalidate`, and a second one turns tracking on
  with `REDIRECT` to it, `BCAST` and the restaurant hashes' prefix: Redis then sends the name of every
  restaurant hash any client changes (a heartbeat, a transition, a profile, FLUSHDB) to the first one.
  The facts of a restaurant are dropped when its name arrives.
- Read your writes: before a batch uses the copy it sends a PING down the subscribed connection and
  waits for its answer. Redis answers in order, so every change made before the batch began has been
  dropped by then; the copy is as fresh as a direct read at the batch's start (`synced`). Batches
  asking at the same time share one PING.
- A read that fills the copy marks its restaurants first (`expect`); a change arriving before the read's
  answer unmarks them, and that answer is not kept (`keep`).
- If either connection ends, everything is dropped and nothing is served from the copy until tracking
  is back (`run` reconnects with backoff); the batches meanwhile read Redis as without the copy.
"""

import asyncio
import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from core.standing_texts import StandingTexts
from core.view_facts import ViewFacts

logger = logging.getLogger(__name__)

INVALIDATE = "__redis__:invalidate"
SYNC_TIMEOUT_S = 1.0  # a batch waits no longer for the copy's PING, and reads Redis instead
MAX_ENTRIES = 250_000  # facts kept (~1 KB each); past it the copy starts again empty
RETRY_S = (0.1, 5.0)  # reconnection backoff: first, then doubled up to this


class _Missing:
    __slots__ = ()


MISSING: Final = _Missing()  # not in the copy: read Redis

Facts = ViewFacts | None  # None: no view stands for the facts as they are (derive)


class Ticket:
    """A read that may fill the copy: kept only if nothing changed its restaurants meanwhile."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class ViewCache:
    """Facts of status views by restaurant id; serves nothing until `run` has tracking on."""

    def __init__(self, redis: Redis, key_prefix: str, window_us: int, max_entries: int = MAX_ENTRIES) -> None:
        """`redis` lends its connection settings; `key_prefix` precedes every restaurant id in a key;
        `window_us` is the readers' presence window (views of another window are only ever judged)."""
        pool = redis.connection_pool
        # RESP2 on purpose (redis-py speaks RESP3 by default): the invalidations then come as plain
        # pub/sub messages on a subscribed connection, read here like any reply, in order with PINGs.
        self._make = partial(pool.connection_class, **{**pool.connection_kwargs, "protocol": 2})
        self.key_prefix = key_prefix
        self.max_entries = max_entries
        self._entries: dict[str, Facts] = {}
        self._standing = StandingTexts(window_us, self._entries)  # texts of the entries that stand now
        self._pending: dict[str, Ticket] = {}
        self._generation = 0
        self._listener: AbstractConnection | None = None  # set while tracking is on
        self._pinging: list[asyncio.Future[bool]] | None = None  # waiters of the PING in flight
        self._queued: list[asyncio.Future[bool]] = []  # waiters of the next one
        self.hits = self.fills = self.invalidated = self.resets = self.sync_timeouts = 0

    @property
    def tracking(self) -> bool:
        return self._listener is not None

    def __len__(self) -> int:
        return len(self._entries)

    def client_name(self, role: str) -> str:
        prefix = "".join(c if c.isprintable() and not c.isspace() else "_" for c in self.key_prefix)
        return f"view-copy-{role}:{prefix}"

    async def run(self) -> None:
        """Keep tracking on until cancelled, starting again (empty) whenever a connection ends."""
        delay = RETRY_S[0]
        while True:
            try:
                await self._follow()
            except (RedisError, OSError) as exc:
                if delay == RETRY_S[0]:
                    logger.warning("status view copy off, reading Redis until tracking is back: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_S[1])

    async def _follow(self) -> None:
        listener, tracker = self._make(), self._make()
        try:
            await listener.connect()
            await tracker.connect()
            # Named, so an operator sees them in CLIENT LIST (and a test can end one).
            for connection, role in ((listener, "listener"), (tracker, "tracker")):
                await connection.send_command("CLIENT", "SETNAME", self.client_name(role))
                await connection.read_response()
            await listener.send_command("CLIENT", "ID")
            client_id = await listener.read_response()
            await listener.send_command("SUBSCRIBE", INVALIDATE)
            await listener.read_response()
            await tracker.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self.key_prefix
            )
            await tracker.read_response()
            self._listener = listener
            logger.info("status view copy on: tracking %r*", self.key_prefix)
            # Nothing comes on the tracker: a read on it ends when it does (tracking ends with it).
            watch = asyncio.create_task(tracker.read_response(timeout=math.inf))
            reading = asyncio.create_task(self._read(listener))
            try:
                done, _ = await asyncio.wait({watch, reading}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                reading.cancel()
                await asyncio.gather(watch, reading, return_exceptions=True)
            for task in done:
                task.result()  # its error, if any
            raise RedisError("tracking connection answered unexpectedly")
        finally:
            self._reset()
            await asyncio.gather(listener.disconnect(), tracker.disconnect(), return_exceptions=True)

    async def _read(self, listener: AbstractConnection) -> None:
        while True:
            message: Any = await listener.read_response(timeout=math.inf)
            kind = message[0] if isinstance(message, list) and message else None
            if kind == "message":
                self._drop(message[2])
            elif kind == "pong":
                waiters, self._pinging = self._pinging or [], None
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(True)
                if self._queued:
                    await self._ping(listener)

    def _drop(self, keys: list[str] | None) -> None:
        if keys is None:  # FLUSHDB, FLUSHALL: every key is gone
            self.invalidated += len(self._entries)
            self._entries.clear()
            self._standing.clear()
            self._pending.clear()
            return
        start = len(self.key_prefix)
        for key in keys:
            rid = key[start:]
            if self._entries.pop(rid, MISSING) is not MISSING:
                self.invalidated += 1
                self._standing.drop(rid)
            self._pending.pop(rid, None)

    def _reset(self) -> None:
        if self._listener is not None:
            self.resets += 1
        self._listener = None
        self._generation += 1
        self._entries.clear()
        self._standing.clear()
        self._pending.clear()
        for waiter in [*(self._pinging or []), *self._queued]:
            if not waiter.done():
                waiter.set_result(False)
        self._pinging, self._queued = None, []

    async def _ping(self, listener: AbstractConnection) -> None:
        self._pinging, self._queued = self._queued, []
        try:
            await listener.send_command("PING", "sync")
        except (RedisError, OSError):
            for waiter in self._pinging:
                waiter.set_result(False)
            self._pinging = None  # the reader ends with the connection and resets

    async def synced(self) -> bool:
        """Wait until every change made before now has reached the copy; False: do not use it now."""
        listener = self._listener
        if listener is None:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.append(waiter)
        if self._pinging is None:
            await self._ping(listener)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), SYNC_TIMEOUT_S)
        except TimeoutError:
            self.sync_timeouts += 1
            return False

    def standing(self, restaurant_ids: Sequence[str], now_us: int) -> list[str | None] | None:
        """(After `synced` said True) each id's status text at `now_us` where its view stands as held,
        None where it must be looked up and judged; None for the whole batch if `now_us` is too early
        (core/standing_texts.py)."""
        texts = self._standing.get(restaurant_ids, now_us)
        if texts is not None:
            self.hits += len(texts) - texts.count(None)
        return texts

    def lookup(self, restaurant_ids: Sequence[str]) -> list[Facts | _Missing]:
        """The copy's facts of each id (after `synced` said True), MISSING where it has none."""
        get = self._entries.get
        found = [get(rid, MISSING) for rid in restaurant_ids]
        self.hits += len(found) - found.count(MISSING)
        return found

    def expect(self, restaurant_ids: Sequence[str]) -> Ticket | None:
        """Mark a read about to be sent; None while tracking is off (nothing will be kept)."""
        if self._listener is None:
            return None
        ticket = Ticket(self._generation)
        for rid in restaurant_ids:
            self._pending[rid] = ticket
        return ticket

    def keep(self, ticket: Ticket | None, restaurant_ids: Sequence[str], facts: Sequence[Facts]) -> None:
        """Keep what a read answered, for the ids nothing changed since `expect`."""
        if ticket is None or ticket.generation != self._generation:
            return
        if len(self._entries) + len(restaurant_ids) > self.max_entries:
            self._entries.clear()
            self._standing.clear()
        for rid, fact in zip(restaurant_ids, facts, strict=True):
            if self._pending.get(rid) is ticket:
                del self._pending[rid]
                self._entries[rid] = fact
                self._standing.add(rid, fact)
                self.fills += 1
