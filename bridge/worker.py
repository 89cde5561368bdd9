"""The bridge worker: batches from the brokers → Redis scripts → outbox → RabbitMQ and retained status."""

import asyncio
import contextlib
import itertools
import logging
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import partial

import aio_pika.exceptions
import aiormq.exceptions
import pymongo.errors
import redis.exceptions
from prometheus_client import start_http_server
from redis.asyncio import BlockingConnectionPool, Redis

from bridge.dead_letters import DeadLetters
from bridge.event_outbox import EventOutbox
from bridge.inbox import Inbox
from bridge.metrics import BridgeMetrics
from bridge.mqtt_link import BrokerLink, Inbound
from core.amqp import EventPublisher
from core.db import open_mongo
from core.errors import InvalidMessage
from core.horizons import PUBLISH_EVERY_S as HORIZON_EVERY_S
from core.horizons import Horizons
from core.ids import parse_device_topic, status_topic, status_topic_restaurant
from core.messages import DeviceState, Event, EventType, heartbeat_fields, parse_presence
from core.presence_store import UNSETTLED, PresenceStore, ScriptResult, from_ms, now_ms
from core.redis_connection import PackedConnection
from core.settings import Settings
from core.shards import shard_of
from core.state_marker import StateLost, StateMarker
from core.status import DerivedStatus
from core.status_service import Settled, StatusService
from core.task_stop import cancel_and_wait

logger = logging.getLogger(__name__)

PresenceRow = tuple[Inbound, str, str, int, DeviceState, str | None]
# One turn of applying a batch's items (their indexes; whether to refuse restaurants with unsettled facts):
# the restaurants it settled, and (index, restaurant, newest unsettled fact in ms) for each item refused.
Turn = Callable[[list[int], bool], Awaitable[tuple[set[str], list[tuple[int, str, int]]]]]

OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPError,
    pymongo.errors.ConnectionFailure,
    ConnectionError,
    TimeoutError,
    StateLost,  # a commit refused: Redis restarted empty after the batch's check (core/state_marker.py)
)

CAUGHT_UP_MS = 1000  # links whose last tick is this close to the inbox's horizon are not running behind
PUBLISH_CONCURRENCY = 500  # restaurants whose events are in flight to RabbitMQ at once
SETTLE_BATCH = 1000  # restaurants settled per pipelined read and commit
REDIS_CONNECTIONS = 64
REBUILD_KEEP_S = 30.0  # how often a long reconciliation renews its `rebuilding` key (core/state_marker.py)
REDIS_WATCH_S = 1.0  # how often the marker key is checked for a Redis that lost its state
PUBLISH_TIMEOUT_S = 2.0  # a confirm slower than this: RabbitMQ is taken as away, events wait in Redis
FLUSH_EVERY_S = 0.5  # how often events held in Redis are offered to RabbitMQ again
STOP_FLUSH_S = 5.0  # at the stop, the held events' last offer to RabbitMQ, and closing the connection


class Bridge:
    """`run()` until `request_stop()`; then in-flight batches drain and resources close in reverse."""

    def __init__(self, settings: Settings, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or uuid.uuid4().hex[:8]
        self.metrics = BridgeMetrics()
        self.window = timedelta(seconds=settings.stale_after_s)
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self.converged = asyncio.Event()
        # Redis lost its state: device facts are still applied, statuses wait for the retained ones to be
        # restored (else each restaurant's unchanged status would be announced again) and are then all
        # settled once, at the end of the reconciliation.
        self._defer_settles = False
        self._applying: Inbound | None = None  # the first message of the batch being applied
        self.links: list[BrokerLink] = []
        self._known: set[str] = set()
        # Retained statuses published, by token until the broker's PUBACK moves them to `_retained_acked`
        # (`_on_retained_acked`); a link holds them, in order, while it is down (core/retained_window.py).
        self._retained_inflight: dict[int, tuple[str, str]] = {}
        self._retained_acked: list[tuple[str, str]] = []
        self._retained_tokens = itertools.count()
        self.metrics_port: int | None = None
        self._retained_after_start: list[tuple[str, str]] = []
        self._held_wills: list[tuple[float, PresenceRow]] = []
        self._sweeping = asyncio.Lock()
        self._group_ms, self._group_read_at = 0, -float("inf")  # the other bridges' lowest horizon, and when read
        self._stop_at: float | None = None
        self._gave_up = False

    def request_stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    def _giving_up(self) -> bool:
        """Stopping, and a backing service has been away for `bridge_stop_give_up_s` since the stop."""
        if self._gave_up or self._stop_at is None:
            return self._gave_up
        self._gave_up = time.monotonic() - self._stop_at >= self.settings.bridge_stop_give_up_s
        return self._gave_up

    async def run(self) -> None:
        self.inbox: Inbox[Inbound] = Inbox()
        # Blocking: a burst of settles waits for a connection instead of failing when the pool is empty.
        # PackedConnection: a heartbeat batch's key per heartbeat is packed in one join (core/redis_connection.py).
        pool = BlockingConnectionPool.from_url(self.settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=30,
                                               decode_responses=True, connection_class=PackedConnection)  # fmt: skip
        redis = Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
        mongo = await open_mongo(self.settings)
        self.publisher = EventPublisher(self.settings, confirm_timeout_s=PUBLISH_TIMEOUT_S)
        await self.publisher.open()
        self.store = PresenceStore(redis, self.settings.redis_prefix)
        # Its own connection: a storm's settles can hold all of the pool's, and a horizon that waited its turn
        # went stale, so the scheduler took this busy bridge for a dead one (core/horizons.py).
        horizon_redis = Redis.from_url(self.settings.redis_url, decode_responses=True, single_connection_client=True)
        self.horizons = Horizons(horizon_redis, self.settings.redis_prefix)
        self.state = StateMarker(redis, self.settings.redis_prefix, guarded=self.store, instance=self.instance)
        self.status = StatusService(self.store, self.window)
        self.dead_letters = DeadLetters(self.publisher, redis, self.settings.redis_prefix, self.metrics,
                                        PUBLISH_TIMEOUT_S)  # fmt: skip
        self.outbox = EventOutbox(self.store, self.publisher, self.metrics, PUBLISH_TIMEOUT_S)
        httpd = None
        tasks: list[asyncio.Task[None]] = []
        if self.settings.bridge_metrics_port >= 0:
            httpd, _ = start_http_server(self.settings.bridge_metrics_port, "127.0.0.1", self.metrics.registry)
            self.metrics_port = httpd.server_port
        try:
            # Not `rebuilding` here: a Redis without the marker is more often new than lost, and a new
            # restaurant's first status (DISCONNECTED since its creation) must not wait for the bridge's
            # first convergence, or a birth meanwhile would leave that stretch out of the history.
            await self.state.mark(rebuilding=False)
            await self._recover_outbox()
            await self.dead_letters.recover()
            self.links = [
                BrokerLink(url, i, self.settings, self.instance, self.inbox, self._on_retained_acked)
                for i, url in enumerate(self.settings.mqtt_brokers)
            ]
            for link in self.links:
                await link.start()
            for rid, status_json in self._retained_after_start:
                self._publish_retained(rid, status_json)  # each link holds them until connected
            tasks = [
                asyncio.create_task(self._sweep_loop(), name="sweep"),
                asyncio.create_task(self._convergence_loop(), name="convergence"),
                asyncio.create_task(self._flush_loop(), name="flush"),
                asyncio.create_task(self._horizon_loop(), name="horizon"),
            ]
            await self._main_loop()
        finally:
            await cancel_and_wait(tasks)  # also when the main loop failed: nothing runs on after close()
            await self.close(redis, mongo, httpd)

    async def close(self, redis: Redis, mongo: object, httpd: object) -> None:
        for link in reversed(self.links):
            await link.stop()
        with contextlib.suppress(*OUTAGES):  # else it goes stale by itself (core/horizons.py)
            await asyncio.wait_for(self.horizons.withdraw(self.instance), 2.0)
        await self.horizons.redis.aclose()
        with contextlib.suppress(*OUTAGES):  # RabbitMQ away (or the close timed out): nothing to close cleanly
            await asyncio.wait_for(self.publisher.close(), STOP_FLUSH_S)
        await redis.aclose()
        await mongo.close()  # type: ignore[attr-defined]
        if httpd is not None:
            httpd.shutdown()  # type: ignore[attr-defined]
            httpd.server_close()  # type: ignore[attr-defined]
        logger.info("bridge %s stopped", self.instance)

    async def _main_loop(self) -> None:
        while not self._stop.is_set():
            batch = await self.inbox.take(self.settings.heartbeat_batch_max, wait_s=self._next_wait())
            self.metrics.queue_depth.set(len(self.inbox))
            if batch:
                self._applying = batch[0]
                try:
                    await self._run_batch(partial(self._process, batch), batch)
                finally:
                    self._applying = None
            if self._held_wills:
                await self._run_batch(self._release_wills, [])
            await self._check_retained()
        # SIGTERM: stop reading from the brokers but stay connected, so the drained batches can still be
        # acknowledged and their retained statuses published; then disconnect. Draining is bounded: the
        # 100,000 fleet's own stop left ~50,000 messages and as many held wills at the bridge's SIGTERM,
        # and applying them all ran past the 30 s after which the bridge was killed (2026-11-28).
        for link in self.links:
            link.pause_reading()
        batch_max = self.settings.heartbeat_batch_max
        while self._may_drain() and (batch := await self.inbox.take(batch_max, wait_s=0)):
            await self._run_batch(partial(self._process, batch), batch)
        while self._may_drain() and (held := len(self._held_wills)):
            await self._run_batch(partial(self._release_wills, everything=True, at_most=batch_max), [])
            if len(self._held_wills) == held:
                break  # the batch failed (logged by `_run_batch`): the rest is left to the session
        if self.inbox or self._held_wills:
            why = "a backing service away" if self._gave_up else f"{self.settings.bridge_stop_drain_s:g} s of draining"
            logger.warning("stopping with %s: %d message(s) and %d held will(s) left unacknowledged; this "
                           "bridge's MQTT session keeps them for the next start",
                           why, len(self.inbox), len(self._held_wills))  # fmt: skip
        if self.outbox.backlog:
            try:  # what still waits stays in Redis for the next bridge's start
                await asyncio.wait_for(self.outbox.flush(), STOP_FLUSH_S)
            except OUTAGES as exc:  # TimeoutError among them
                logger.warning("events left in Redis for the next bridge: %s", exc)
        await self._check_retained(wait=True)
        for link in self.links:
            await link.stop()

    def _next_wait(self) -> float:
        if not self._held_wills:
            return 0.2
        return max(0.0, min(0.2, self._held_wills[0][0] - time.monotonic()))

    def _may_drain(self) -> bool:
        """After SIGTERM: neither given up on a backing service nor past `bridge_stop_drain_s`."""
        assert self._stop_at is not None
        return not self._gave_up and time.monotonic() - self._stop_at < self.settings.bridge_stop_drain_s

    async def _release_wills(self, everything: bool = False, at_most: int | None = None) -> None:
        """Apply the wills whose grace is over (a newer birth meanwhile makes the rule ignore them),
        the oldest `at_most` of them if given."""
        now = time.monotonic()
        due = [row for at, row in self._held_wills if everything or at <= now][:at_most]
        if due:
            await self._sweep_once()
            with self.metrics.batch_seconds.labels("presence").time():
                await self._apply_presence(due, held_s=self.settings.will_grace_s)
            released = {id(row) for row in due}
            self._held_wills = [(at, row) for at, row in self._held_wills if id(row) not in released]
            for row in due:
                row[0].link.ack(row[0].mid, row[0].qos)

    async def _run_batch(self, work: Callable[[], Awaitable[None]], batch: list[Inbound]) -> None:
        """Retry a batch while Redis, RabbitMQ or MongoDB is away; its effects are idempotent.

        Meanwhile the hand-off fills and paho stops reading, so the brokers queue for the bridge
        instead of anything being dropped. A failure that is not an outage is a bug: logged with its
        traceback, counted, and the batch acknowledged so one poison batch cannot stall the bridge.
        """
        delay = 0.2
        while True:
            try:
                await work()
                break
            except OUTAGES as exc:
                self.metrics.retries.inc()
                if self._giving_up():
                    return  # not acknowledged: the broker keeps the batch in this bridge's session
                if delay == 0.2:
                    logger.warning("a backing service is away (%s: %s); retrying the batch", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                logger.exception("batch of %d failed; acknowledged so the bridge goes on", len(batch))
                self.metrics.invalid.labels("batch_error").inc()
                break
        held = {id(row[0]) for _, row in self._held_wills}
        for msg in batch:
            if id(msg) not in held:
                msg.link.ack(msg.mid, msg.qos)

    async def _process(self, batch: list[Inbound]) -> None:
        self.metrics.batch_size.observe(len(batch))
        presence: list[PresenceRow] = []
        beats: list[tuple[Inbound, str, str, int]] = []
        statuses: dict[str, DerivedStatus] = {}
        ages: list[tuple[str, int]] = []  # a will's ts is its connection's, so wills are not timed
        oldest_beat = sys.maxsize
        invalid: list[tuple[str, bytes, str, str]] = []  # (topic, payload, reason, detail): dead-lettered together
        for msg in batch:
            status_of = status_topic_restaurant(msg.topic)
            if status_of is not None:
                # Our own retained statuses, read back while reconciling; live echoes are ignored.
                if msg.retain and msg.payload:
                    with contextlib.suppress(ValueError):
                        statuses[status_of] = DerivedStatus.model_validate_json(msg.payload)
                continue
            try:
                topic = parse_device_topic(msg.topic)
                if topic.kind == "presence":
                    p = parse_presence(msg.payload, self.settings.max_payload_bytes)
                    presence.append((msg, topic.restaurant_id, topic.device_id, p.epoch, p.state, p.cause))
                    if not msg.retain and (p.state is DeviceState.ONLINE or p.cause is not None):
                        ages.append(("birth" if p.state is DeviceState.ONLINE else "graceful", p.ts))
                else:
                    epoch, ts = heartbeat_fields(msg.payload, self.settings.max_payload_bytes)
                    beats.append((msg, topic.restaurant_id, topic.device_id, epoch))
                    oldest_beat = min(oldest_beat, ts)
            except InvalidMessage as exc:
                invalid.append((msg.topic, msg.payload, exc.reason, exc.detail))
        await self.dead_letters.reject_all(invalid)
        self._observe_ages(ages, oldest_beat)
        if statuses:
            await self.store.restore_statuses(statuses)
        unknown = await self._unknown({rid for _, rid, *_ in presence} | {rid for _, rid, *_ in beats})
        if unknown:
            rejected = [(p[0], p[1]) for p in presence if p[1] in unknown]
            rejected += [(b[0], b[1]) for b in beats if b[1] in unknown]
            await self.dead_letters.reject_all([(bad.topic, bad.payload, "unknown_restaurant", rid)
                                                for bad, rid in rejected])  # fmt: skip
            presence = [p for p in presence if p[1] not in unknown]
            beats = [b for b in beats if b[1] not in unknown]
        grace = self.settings.will_grace_s
        if grace > 0:
            live_wills = [p for p in presence if p[4] is DeviceState.OFFLINE and p[5] is None and not p[0].retain]
            if live_wills:
                due = time.monotonic() + grace
                self._held_wills.extend((due, row) for row in live_wills)
                presence = [p for p in presence if p not in live_wills]
        if (presence or beats) and not self._defer_settles and not await self._redis_holds_state():
            self._defer_settles = True  # noticed at once, not at the next REDIS_WATCH_S tick
            logger.warning("Redis lost the platform's state; statuses wait for the reconciliation")
        if presence or beats:
            await self._sweep_once(itertools.chain(((p[1], p[2]) for p in presence), ((b[1], b[2]) for b in beats)))
        if presence:
            with self.metrics.batch_seconds.labels("presence").time():
                await self._apply_presence(presence)
        if beats:
            with self.metrics.batch_seconds.labels("heartbeat").time():
                await self._apply_heartbeats(beats)
        self.metrics.inbox_wait.observe(time.monotonic() - batch[0].received)

    def _observe_ages(self, ages: list[tuple[str, int]], oldest_beat: int) -> None:
        """How far behind the devices the bridge runs (by their clocks: a skewed tablet skews it)."""
        now = now_ms()
        for kind, ts in ages:
            self.metrics.message_age.labels(kind).observe(max(0, now - ts) / 1000)
        if oldest_beat != sys.maxsize:
            self.metrics.message_age.labels("heartbeat").observe(max(0, now - oldest_beat) / 1000)

    async def _unknown(self, restaurant_ids: set[str]) -> set[str]:
        """Restaurants never provisioned (a known one stays known: restaurants are not deleted).

        First sight of a restaurant asks Redis only whether its profile is there: reading and parsing
        whole snapshots for that cost a storm of 100,000 births ~13 s of the bridge (2026-11-28).
        """
        ask = [rid for rid in restaurant_ids if rid not in self._known]
        if not ask:
            return set()
        lacking = await self.store.lacking_profile(ask)
        missing = set(await self.status.fill_profiles(await self.store.snapshots(lacking))) if lacking else set()
        self._known.update(rid for rid in ask if rid not in missing)
        return missing

    async def _apply_presence(self, items: Sequence[PresenceRow], held_s: float = 0.0) -> None:
        """Stamped when the bridge received each message, not when its batch got its turn: a storm's
        10,000th graceful stop still counts from its arrival. A will held `held_s` counts from its
        hold's end (`derive_status` keeps a status's `since` from going back past the last one).
        """
        self.metrics.messages.labels("presence").inc(len(items))
        now = now_ms()
        stamps = [min(now, _wall_ms(row[0].received) + int(held_s * 1000)) for row in items]
        rows: list[tuple[str, str, int, DeviceState, Event]] = []
        for (_msg, rid, did, epoch, state, cause), at in zip(items, stamps, strict=True):
            if state is DeviceState.ONLINE:
                event = Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id=did, ts=from_ms(at),
                              data={"epoch": epoch, "cause": "birth"})
            else:
                event = Event(type=EventType.DEVICE_OFFLINE, restaurant_id=rid, device_id=did, ts=from_ms(at),
                              data={"epoch": epoch, "cause": cause or "will"})
            rows.append((rid, did, epoch, state, event))

        async def turn(todo: list[int], settled_first: bool) -> tuple[set[str], list[tuple[int, str, int]]]:
            results = await self.store.apply_presence(
                [rows[i] for i in todo], stamps=[stamps[i] for i in todo], settled_first=settled_first
            )
            self.metrics.ignored.labels("presence").inc(sum(1 for r in results if r.code == 0))
            done = [(i, res) for i, res in zip(todo, results, strict=True) if res.code != UNSETTLED]
            if done:
                # Each restaurant as of its own newest message: a batch of the final stop spans seconds of receipt.
                each: dict[str, int] = {}
                for i, _res in done:
                    each[rows[i][0]] = max(stamps[i], each.get(rows[i][0], stamps[i]))
                await self._after_transitions([(rows[i][0], res) for i, res in done], max(each.values()), each)
            return _split(todo, [rows[i][0] for i in todo], results)

        await self._in_turns(len(rows), turn)

    async def _apply_heartbeats(self, items: Sequence[tuple[Inbound, str, str, int]]) -> None:
        self.metrics.messages.labels("heartbeat").inc(len(items))
        # One instant for the batch: its newest message's arrival, so no beat counts from before it came.
        at = _wall_ms(max(row[0].received for row in items))
        # A beat more than a window after the device's last one makes it connected again (the status may
        # have read it as disconnected meanwhile: heartbeat_batch.lua). Not while the links run behind:
        # the gap is then between two reads, not two beats; the 100,000 storm got 137,000 DEVICE_ONLINE
        # events more than it had births that way (2026-11-27). The sweep judges silence meanwhile.
        # Nor while another bridge of the group does: it may hold the beats in between (core/horizons.py).
        received, heard = self._horizons()
        caught_up = _caught_up(received, min(heard, await self._group_horizon()))
        window_ms = int(self.settings.stale_after_s * 1000) if caught_up else 0

        async def turn(todo: list[int], settled_first: bool) -> tuple[set[str], list[tuple[int, str, int]]]:
            outcome = await self.store.heartbeats(
                [items[i][1:] for i in todo], at_ms=at, window_ms=window_ms, settled_first=settled_first
            )
            self.metrics.ignored.labels("heartbeat").inc(outcome.ignored)
            await self._after_transitions(outcome.transitions, at)
            refused = [(todo[j], items[todo[j]][1], ms) for j, ms in outcome.unsettled.items()]
            return {rid for rid, _ in outcome.transitions}, refused

        await self._in_turns(len(items), turn)

    async def _in_turns(self, count: int, turn: Turn) -> None:
        """Apply a batch's `count` items; those of restaurants with unsettled facts after their settle.

        A writer that dies between applying a device's fact and settling its restaurant (kill -9, or a batch
        that failed there and is retried: its facts then read as already applied) leaves the facts changed
        and the status not. If the device came back before anybody settled the restaurant, the stretch that
        fact began was never committed, and never reached the history (a kill-bridge churn run: one
        restaurant's ranking 4.3 s short). So the scripts refuse any message of a restaurant whose facts
        are unsettled (field `u`, core/lua/apply_presence.lua): it is settled as of its newest unsettled
        fact, then the refused items are applied, without the check this time (a restaurant that cannot be
        settled must not hold its messages back). Items of a restaurant that the first turn settled itself
        (two facts of one restaurant in one batch) are applied after that settle, and cost one more turn.
        While statuses wait for a reconciliation (`_defer_settles`) nothing is refused.
        """
        todo, check = list(range(count)), True
        while todo:
            settled, refused = await turn(todo, check and not self._defer_settles)
            unsettled: dict[str, int] = {}
            for _i, rid, ms in refused:
                if rid not in settled:
                    unsettled[rid] = max(ms, unsettled.get(rid, ms))
            if unsettled:
                self.metrics.unsettled_settles.inc(len(unsettled))
                await self._settle(sorted(unsettled), each_ms=unsettled)
            todo, check = [i for i, _rid, _ms in refused], False

    async def _after_transitions(
        self, results: Sequence[tuple[str, ScriptResult]], as_of_ms: int, each_ms: dict[str, int] | None = None
    ) -> None:
        """Publish each restaurant's device events in order, then settle the batch's restaurants together,
        as of the batch's own instant, or each restaurant's own where given (`_settle`)."""
        per_restaurant: dict[str, list[tuple[str, Event]]] = defaultdict(list)
        for rid, res in results:
            if res.code == 2:
                assert res.event is not None and res.outbox_field is not None
                per_restaurant[rid].append((res.outbox_field, res.event))
                self.metrics.device_transitions.labels(res.event.type.value).inc()
        if not per_restaurant:
            return
        # The device events wait for RabbitMQ's confirms while their restaurants are settled; each
        # restaurant's STATUS_CHANGED still goes out only after them (`_settle`, `_announce`).
        device_events = asyncio.ensure_future(self._publish_each(per_restaurant))
        try:
            await self._settle(list(per_restaurant), as_of_ms, each_ms, after=device_events)
        finally:
            await device_events  # done by now unless the settle failed before its first batch

    async def _publish_each(self, per_restaurant: dict[str, list[tuple[str, Event]]]) -> None:
        """Each restaurant's events in order; the restaurants at once, so their confirms overlap."""
        await self.outbox.publish(per_restaurant, PUBLISH_CONCURRENCY)

    async def _settle(
        self,
        restaurant_ids: Sequence[str],
        as_of_ms: int | None = None,
        each_ms: dict[str, int] | None = None,
        after: asyncio.Future[None] | None = None,
    ) -> None:
        """Settle restaurants in batches (one pipelined read, one of commits; `StatusService.settle_batch`).

        As of `as_of_ms` (the receipt of the facts just applied; `core.status_service.as_of`), not the
        wall clock: seconds behind its devices, the bridge would otherwise let a clock boundary that came
        after a fact's arrival hide the status that fact began. `each_ms` gives a restaurant its own
        instant: as of the batch's newest receipt, a graceful stop received 1.6 s before an
        unavailability's start, in a batch of the final stop that ended after the start, went straight to
        UNAVAILABLE (the full churn run).

        A batch's statuses are announced (`_announce`) while the next batch is settled, and only once
        `after` (the publishing of these restaurants' device events) and the batches before are out.
        Waiting for each batch's confirms before settling the next left the bridge idle half of a
        storm's 100,000 births (2026-11-28). Nothing is left behind on a failure: what was started is
        awaited before the failure is raised.

        Births once settled one restaurant at a time, each waiting for its own confirms: 200-300 births
        per second, too slow for a storm of 100,000 connections in a minute.
        """
        announced = after
        try:
            if self._defer_settles:
                return  # _settle_all settles every restaurant when the reconciliation ends
            each = {rid: from_ms(ms) for rid, ms in (each_ms or {}).items()}
            at = None if as_of_ms is None else from_ms(as_of_ms)
            for start in range(0, len(restaurant_ids), SETTLE_BATCH):
                batch = await self.status.settle_batch(restaurant_ids[start : start + SETTLE_BATCH], at, each)
                self.metrics.status_changes.inc(len(batch.settled))
                # What was committed goes out even if the batch fails: a retried settle would find it
                # committed and publish nothing.
                announced = asyncio.ensure_future(self._announce(batch.settled, announced))
                outage: BaseException | None = None
                for rid, exc in batch.failed.items():
                    if isinstance(exc, OUTAGES):
                        outage = exc
                    else:
                        logger.error("settling %s failed", rid, exc_info=exc)
                if outage is not None:
                    raise outage  # the whole batch is retried: settling is idempotent
        finally:
            if announced is not None:
                await announced

    async def _announce(self, settled: Mapping[str, Settled], before: asyncio.Future[None] | None) -> None:
        """Publish committed statuses, and their retained copies, once what was started before is out."""
        try:
            if before is not None:
                await before
        finally:
            await self._publish_each({rid: [(s.outbox_field, s.event)] for rid, s in settled.items()})
            for rid, one in settled.items():
                self._publish_retained(rid, one.status_json)  # devices hear it even while RabbitMQ is away

    async def _flush_loop(self) -> None:
        """Offer the events held in Redis to RabbitMQ again until it takes them all."""
        while not self._stop.is_set():
            await asyncio.sleep(FLUSH_EVERY_S)
            if not self.outbox.backlog and not self.dead_letters.waiting:
                continue
            try:
                if self.outbox.backlog:
                    await self.outbox.flush()
                if self.dead_letters.waiting:
                    await self.dead_letters.flush()
            except OUTAGES as exc:  # Redis away: the next round tries again
                logger.info("could not flush held events (%s)", exc)

    def _publish_retained(self, restaurant_id: str, status_json: str) -> None:
        token = next(self._retained_tokens)
        self._retained_inflight[token] = (restaurant_id, status_json)
        link = self.links[shard_of(restaurant_id, len(self.links))]
        link.publish_retained(status_topic(restaurant_id), status_json.encode(), token)

    def _on_retained_acked(self, token: int) -> None:
        item = self._retained_inflight.pop(token, None)
        if item is not None:
            self._retained_acked.append(item)

    def _retained_waiting(self) -> bool:
        return bool(self._retained_inflight or self._retained_acked)

    async def _check_retained(self, wait: bool = False) -> None:
        """Forget retained statuses the broker has acknowledged; send the committed status again where
        another writer's newer one may have landed first (`clear_status_outboxes`).

        Only what changed is looked at: the PUBACKs arrive through `_on_retained_acked`. Looking at every
        queued status on every pass (`MQTTMessageInfo.is_published`, a lock each) took 82 % of the bridge
        in the steady phase after the 100,000 storm, with its ~100,000 statuses still queued in paho: it
        then read ~4,400 heartbeats a second, minutes behind (2026-11-27).
        """
        deadline = time.monotonic() + (5 if wait else 0)
        while True:
            if self._retained_acked:
                # Taken, not read in place: the sweep may settle (and queue more) while this awaits Redis.
                acked, self._retained_acked = self._retained_acked, []
                try:
                    again = await self.store.clear_status_outboxes(acked)
                except OUTAGES:
                    self._retained_acked[:0] = acked  # cleared on a later pass
                else:
                    for rid, committed in again:
                        self._publish_retained(rid, committed)
                    self.metrics.retained_republished.inc(len(again))
            if not self._retained_waiting() or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)

    async def _sweep_loop(self) -> None:
        """Mark stale the devices whose last heartbeat is older than the window."""
        away = False
        while not self._stop.is_set():
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self._sweep_once()
                away = False
            except OUTAGES as exc:
                if not away:  # once per outage: the batches log it too
                    logger.warning("stale sweep: a backing service is away (%s: %s)", type(exc).__name__, exc)
                away = True
            except Exception:
                logger.exception("stale sweep failed; retrying at the next tick")

    async def _horizon_loop(self) -> None:
        """Tell the scheduler how far this bridge has applied what it received (core/horizons.py)."""
        while not self._stop.is_set():
            horizon = self._horizon_ms()
            self.metrics.horizon_lag.set(max(0, now_ms() - horizon) / 1000)
            with contextlib.suppress(*OUTAGES):
                await asyncio.wait_for(self.horizons.publish(self.instance, horizon, now_ms()), HORIZON_EVERY_S * 5)
            await asyncio.sleep(HORIZON_EVERY_S)

    def _horizon_ms(self) -> int:
        """The instant up to which the bridge has applied all it received: silence is judged up to there.

        Under a storm the inbox runs seconds behind. A device's graceful stop that waits there is not
        silence: swept by the wall clock it was marked stale first, and its offline then counted from
        the window's end rather than from the stop (the full churn run's final stop, a few seconds off).
        """
        return min(self._horizons())

    def _horizons(self) -> tuple[int, int]:
        """(receipt of the oldest message not applied yet, how far every link has read: `heard_up_to`)."""
        waiting = (self._applying, self.inbox.first(), *(row[0] for _, row in self._held_wills[:1]))
        received = _wall_ms(min((msg.received for msg in waiting if msg is not None), default=time.monotonic()))
        return received, min([received, *(link.heard_up_to(received) for link in self.links)])

    async def _sweep_once(self, speaking: Iterable[tuple[str, str]] = ()) -> None:
        """One sweep; also run before every batch of device messages, under one lock with the loop's.

        A device silent past the window reads as disconnected from that instant, but until the sweep
        flags it its next heartbeat or birth finds it still "connected" in Redis and commits nothing:
        the DISCONNECTED interval in between would never reach the history. Sweeping first commits it.

        Silence is judged up to how far every link has read (`_horizons`). A device `speaking` in the
        batch about to be applied, back after the window, was silent at least up to the batch's first
        receipt, a little later: while the links are caught up, it is judged up to there, so that its
        DISCONNECTED interval is still committed. Not while they run behind: receipt times are then
        reading times, and a gap between two reads of a device is no silence of its own (the 100,000
        storm marked 18,534 devices stale that way, 2026-11-27).
        """
        window_ms = int(self.settings.stale_after_s * 1000)
        async with self._sweeping:
            received, heard = self._horizons()
            cutoff = received - window_ms
            silent = await self.store.stale_candidates(cutoff)
            # Another bridge of the group may hold a silent-looking device's beats unread (core/horizons.py).
            group = min(heard, await self._group_horizon()) if silent else heard
            # The batch's (restaurant, device) pairs, gathered only when a device may be judged by them.
            back = frozenset(speaking) if silent and _caught_up(received, group) else frozenset()
            candidates = [(rid, did, score) for rid, did, score in silent
                          if score < group - window_ms or (rid, did) in back]  # fmt: skip
            if not candidates:
                return
            at = from_ms(now_ms())
            rows = [
                (rid, did, score, Event(type=EventType.DEVICE_OFFLINE, restaurant_id=rid, device_id=did, ts=at,
                                        data={"cause": "stale", "last_seen": from_ms(score).isoformat()}))
                for rid, did, score in candidates
            ]

            async def turn(todo: list[int], settled_first: bool) -> tuple[set[str], list[tuple[int, str, int]]]:
                results = await self.store.mark_stale([rows[i] for i in todo], cutoff, settled_first)
                self.metrics.stale_marked.inc(sum(1 for r in results if r.code == 2))
                # As of the horizon the silence was judged up to, not later (see `_settle`).
                await self._after_transitions([(rows[i][0], res) for i, res in zip(todo, results, strict=True)
                                               if res.code != UNSETTLED], cutoff + window_ms)  # fmt: skip
                return _split(todo, [rows[i][0] for i in todo], results)

            await self._in_turns(len(rows), turn)

    async def _group_horizon(self) -> int:
        """The lowest horizon the other live bridges published, read at most every `HORIZON_EVERY_S`."""
        if time.monotonic() - self._group_read_at >= HORIZON_EVERY_S:
            self._group_ms = await self.horizons.others(self.instance, now_ms())
            self._group_read_at = time.monotonic()
        return self._group_ms

    async def _convergence_loop(self) -> None:
        """Say when every shard's retained presence has been read; read it again if Redis loses it."""
        started = self._started
        quiet_s = self.settings.bridge_retained_quiet_s
        while not self._stop.is_set():
            kept = time.monotonic()
            while any(link.reconciling for link in self.links):
                await asyncio.sleep(0.1)
                if time.monotonic() - kept > REBUILD_KEEP_S:
                    kept = time.monotonic()
                    with contextlib.suppress(*OUTAGES):
                        await self.state.keep_rebuilding()
                for link in self.links:
                    if not link.reconciling or link.reconcile_subscribed_at is None:
                        continue
                    quiet_since = max(link.last_retained_at, link.reconcile_subscribed_at)
                    if time.monotonic() - quiet_since >= quiet_s and len(self.inbox) == 0:
                        link.end_reconciliation()
            self._defer_settles = False
            await self._run_batch(self._settle_all, [])
            await self._run_batch(self.state.rebuilt, [])  # the scheduler may settle again
            elapsed = time.monotonic() - started
            self.metrics.reconcile_seconds.set(elapsed)
            self.metrics.converged.set(1)
            self.converged.set()
            logger.info("converged on retained presence of %d shard(s) in %.2f s", len(self.links), elapsed)
            while not self._stop.is_set():
                await asyncio.sleep(REDIS_WATCH_S)
                if any(link.reconciling for link in self.links):
                    break  # a link reconnected: it is reading the retained state again
                if not await self._redis_holds_state():
                    logger.warning(
                        "Redis lost the platform's state (restarted empty?); reconciling from retained presence"
                    )
                    self._defer_settles = True
                    await self._run_batch(partial(self.state.mark, rebuilding=True), [])
                    self._known.clear()
                    for link in self.links:
                        link.begin_reconciliation()
                    break
            started = time.monotonic()
            self.converged.clear()
            self.metrics.converged.set(0)

    async def _redis_holds_state(self) -> bool:
        """False only when Redis answers and the marker is gone; an unreachable Redis is not a loss yet."""
        try:
            return await self.state.holds_state()
        except OUTAGES:
            return True

    async def _settle_all(self) -> None:
        """Statuses may have moved while no bridge ran (devices, clock): one settle per restaurant."""
        await self._settle(await self.store.restaurant_ids())

    async def _recover_outbox(self) -> None:
        """Publish what a previous bridge committed to Redis but died before RabbitMQ confirmed."""
        ids = await self.store.restaurant_ids()
        recovered = 0
        for start in range(0, len(ids), 1000):
            for snap in await self.store.snapshots(ids[start : start + 1000]):
                for name in sorted(snap.outbox):
                    await self.publisher.publish(Event.model_validate_json(snap.outbox[name]))
                    recovered += 1
                await self.store.clear_outbox(snap.restaurant_id, sorted(snap.outbox))
                if snap.pending_status is not None:
                    self._retained_after_start.append((snap.restaurant_id, snap.pending_status))
        if recovered:
            logger.info("republished %d events left in the outbox by an earlier bridge", recovered)


def _split(
    todo: list[int], restaurant_ids: list[str], results: list[ScriptResult]
) -> tuple[set[str], list[tuple[int, str, int]]]:
    """A turn's restaurants with a device transition (settled by it), and its items refused as UNSETTLED."""
    settled = {rid for rid, res in zip(restaurant_ids, results, strict=True) if res.code == 2}
    refused = [(i, rid, res.version) for i, rid, res in zip(todo, restaurant_ids, results, strict=True)
               if res.code == UNSETTLED]  # fmt: skip
    return settled, refused


def _caught_up(received_ms: int, heard_ms: int) -> bool:
    """Whether every link has read what its broker held up to ~a second before the inbox's horizon."""
    return received_ms - heard_ms <= CAUGHT_UP_MS


def _wall_ms(monotonic_s: float) -> int:
    """A `time.monotonic()` instant (paho notes one on every message it reads) as wall-clock milliseconds."""
    return now_ms() - int((time.monotonic() - monotonic_s) * 1000)
