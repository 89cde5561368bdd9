"""The 10:00 opening burst: N restaurants open at the same instant; how long until all of it is right.

What is stored: each restaurant's profile straight in Redis (its hash, field `p`) with the status
the platform would already have committed for it (CLOSED, fields `s`/`sc`), and each queued in the
clock queue at its opening — as the scheduler leaves them the evening before. MongoDB holds none of
them (the scheduler's rebuild finds nothing) and no device is connected, so each opens DISCONNECTED.
Opening hours are whole minutes, so "10:00" is stood in for by the next whole minute far enough
ahead: every restaurant opens at that instant, for 13 hours, whatever its time zone (several are
used, a half-hour one among them, so each local HH:MM differs).

Measured from that instant, with `python -m scheduler` as a process on private servers:
committed  every committed status in Redis is the new one (polled, interval shown)
events     both stream queues hold N STATUS_CHANGED (a message in a queue is a confirmed one)
retained   a subscriber on Mosquitto has received the new retained status of all N
cleared    no outbox field is left (the scheduler saw every confirm and every PUBACK)
Count N in each queue + every status committed + every outbox cleared = exactly one event each.
"""

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aio_pika
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from redis.asyncio import Redis

from bench.harness import BenchError, PrivateServers, cpu_seconds, private_servers, scrape, thread_cpu, wait_for
from bench.ingest import problems_in_log
from bench.report import Row
from core.clock_queue import ClockQueue
from core.hours import DayHours, OpeningHours, zone
from core.ids import STATUS_FILTER
from core.presence_store import STATUS_OUTBOX, PresenceStore
from core.settings import Settings
from core.status import OfflineReason, RestaurantRules, StatusCore, derive_status
from core.status_codec import profile_json
from stack.platform import PythonService
from stack.process import LOOPBACK, free_port

logger = logging.getLogger(__name__)

ZONES = ("America/Sao_Paulo", "America/Manaus", "America/Noronha", "Asia/Kolkata", "UTC")
WRITE_CHUNK = 5000
OPEN_FOR = timedelta(hours=13)


@dataclass
class BurstResult:
    restaurants: int
    boundary: str = ""
    lead_s: float = 0.0  # from the data being in place to the boundary
    poll_s: float = 0.0  # interval of the Redis polls (committed, cleared)
    committed_s: float | None = None
    events_s: float | None = None
    retained_s: float | None = None
    cleared_s: float | None = None
    scheduler_cpu_s: float = 0.0
    main_thread_cpu_s: float = 0.0  # the asyncio loop; the rest is paho's network threads and the like
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of each server during the burst
    queued: dict[str, int] = field(default_factory=dict)
    wrong_since: int = 0
    log_problems: list[str] = field(default_factory=list)

    @property
    def done_s(self) -> float | None:
        parts = [self.committed_s, self.events_s, self.retained_s, self.cleared_s]
        return None if any(p is None for p in parts) else max(p for p in parts if p is not None)


class RetainedCounter:
    """Counts restaurants whose new status reached the broker; paho's thread only bumps counters."""

    def __init__(self, port: int, settings: Settings, boundary: datetime) -> None:
        self.boundary = boundary
        self.seen: set[str] = set()
        self.all_at: float | None = None
        self.expected = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-burst-watch")
        self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(STATUS_FILTER, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.client.connect(LOOPBACK, port, keepalive=30)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise BenchError("the burst's status subscriber could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        status = json.loads(msg.payload)
        if status["reason"] == "DISCONNECTED" and datetime.fromisoformat(status["since"]) == self.boundary:
            with self._lock:
                self.seen.add(status["restaurant_id"])
                if len(self.seen) == self.expected and self.all_at is None:
                    self.all_at = time.time()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def next_boundary(after: datetime) -> datetime:
    return (after + timedelta(minutes=1)).replace(second=0, microsecond=0)


def hours_opening_at(boundary: datetime, tz: str) -> OpeningHours:
    local = boundary.astimezone(zone(tz))
    day = DayHours(open=local.strftime("%H:%M"), close=(local + OPEN_FOR).strftime("%H:%M"))
    return OpeningHours(**dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), day))


async def write_restaurants(settings: Settings, redis: Redis, ids: list[str], boundary: datetime) -> None:
    """Profiles, last committed status (CLOSED) and the clock queue entry, pipelined."""
    store, clock = PresenceStore(redis, settings.redis_prefix), ClockQueue(redis, settings.redis_prefix)
    before = boundary - timedelta(seconds=30)
    per_zone = {}
    for tz in ZONES:
        hours = hours_opening_at(boundary, tz)
        closed = derive_status("x", RestaurantRules(hours, tz), [], before, timedelta(seconds=120))
        assert closed.reason is OfflineReason.CLOSED and closed.until == boundary, closed
        per_zone[tz] = (profile_json("A", tz, hours), closed, closed.core.model_dump_json())
    due_ms = int(boundary.timestamp() * 1000)
    for start in range(0, len(ids), WRITE_CHUNK):
        chunk = ids[start : start + WRITE_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for n, rid in enumerate(chunk, start):
                profile, closed, core = per_zone[ZONES[n % len(ZONES)]]
                status = closed.model_copy(update={"restaurant_id": rid}).model_dump_json()
                pipe.hset(store.key(rid), mapping={"p": profile, "s": status, "sc": core, "v": 1})
            await pipe.execute()
        await clock.schedule(dict.fromkeys(chunk, due_ms))
    await redis.publish(clock.wake_channel, "bench")  # as the API does: the scheduler looks again at once


def _unsent(field: str) -> bool:
    """An outbox field: an event not confirmed yet (`o:…`), or the retained status not acknowledged (`m`)."""
    return field.startswith("o:") or field == STATUS_OUTBOX


async def poll_redis(redis: Redis, settings: Settings, ids: list[str], opened_core: str) -> tuple[int, int]:
    """(restaurants whose committed status is the new one, restaurants with no outbox field left)."""
    prefix = f"{settings.redis_prefix}r:"
    committed = cleared = 0
    for start in range(0, len(ids), WRITE_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for rid in ids[start : start + WRITE_CHUNK]:
                pipe.hget(prefix + rid, "sc")
                pipe.hkeys(prefix + rid)
            replies = await pipe.execute()
        committed += sum(1 for core in replies[0::2] if core == opened_core)
        # Not the count of fields: the status views (`w`, `wv`, `wj`) came after this benchmark, and
        # counting to 4 then never saw a restaurant cleared (the run waited out its time limit).
        cleared += sum(1 for names in replies[1::2] if not any(_unsent(name) for name in names))
    return committed, cleared


async def queue_depths(channel: aio_pika.abc.AbstractChannel, settings: Settings) -> dict[str, int]:
    depths = {}
    for base in (settings.dashboard_queue, settings.aggregator_queue):
        queue = await channel.declare_queue(settings.amqp_name(base), passive=True)
        depths[base] = int(queue.declaration_result.message_count or 0)
    return depths


async def measure(servers: PrivateServers, settings: Settings, count: int, pid: int, timeout: float) -> BurstResult:
    result = BurstResult(count)
    ids = [f"burst-{n:06d}" for n in range(count)]
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        write_estimate = 5 + count / 10_000  # seconds; generous
        boundary = next_boundary(datetime.now(UTC) + timedelta(seconds=write_estimate))
        result.boundary = boundary.isoformat()
        watcher = RetainedCounter(servers.backends.mosquitto.port, settings, boundary)
        watcher.expected = count
        try:
            await write_restaurants(settings, redis, ids, boundary)
            result.lead_s = boundary.timestamp() - time.time()
            logger.info("%d restaurants stored; they open at %s, in %.1f s", count, boundary, result.lead_s)
            if result.lead_s < 1:
                raise BenchError("the restaurants were stored too late for their opening; try again")
            await asyncio.sleep(max(0.0, result.lead_s - 0.3))
            pids = {"redis": servers.backends.redis.pid, "rabbitmq": servers.backends.rabbitmq.signal_pid(),
                    "mosquitto": servers.backends.mosquitto.pid}  # fmt: skip
            cpu0 = {name: cpu_seconds(p) for name, p in pids.items() if p}
            sched0, threads0 = cpu_seconds(pid), thread_cpu(pid)
            t0 = boundary.timestamp()
            opened = StatusCore(online=False, reason=OfflineReason.DISCONNECTED).model_dump_json()
            result.poll_s = max(0.1, count / 100_000)
            next_poll = 0.0
            while result.done_s is None and time.time() - t0 < timeout:
                await asyncio.sleep(0.05)
                now = time.time()
                if now < t0:
                    continue
                if result.events_s is None:
                    result.queued = await queue_depths(channel, settings)
                    if all(n >= count for n in result.queued.values()):
                        result.events_s = time.time() - t0
                if result.retained_s is None and watcher.all_at is not None:
                    result.retained_s = watcher.all_at - t0
                if now >= next_poll and (result.committed_s is None or result.cleared_s is None):
                    next_poll = now + result.poll_s
                    committed, cleared = await poll_redis(redis, settings, ids, opened)
                    if result.committed_s is None and committed == count:
                        result.committed_s = time.time() - t0
                    if result.committed_s is not None and result.cleared_s is None and cleared == count:
                        result.cleared_s = time.time() - t0
            result.scheduler_cpu_s = cpu_seconds(pid) - sched0
            result.main_thread_cpu_s = thread_cpu(pid).get(pid, 0.0) - threads0.get(pid, 0.0)
            result.cpu = {name: cpu_seconds(p) - cpu0[name] for name, p in pids.items() if p and name in cpu0}
            await asyncio.sleep(1.0)  # anything published twice would show in the queues now
            result.queued = await queue_depths(channel, settings)
            result.wrong_since = await count_wrong_since(redis, settings, ids, boundary)
        finally:
            # No clean-up of keys or queues: the private servers go with the run (or stay, with --keep),
            # and deleting the keys while the scheduler still ran took its leader lock from under it.
            watcher.close()
    finally:
        await connection.close()
        await redis.aclose()
    return result


async def count_wrong_since(redis: Redis, settings: Settings, ids: list[str], boundary: datetime) -> int:
    wrong = 0
    for start in range(0, len(ids), WRITE_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for rid in ids[start : start + WRITE_CHUNK]:
                pipe.hget(f"{settings.redis_prefix}r:{rid}", "s")
            for raw in await pipe.execute():
                if raw is None or datetime.fromisoformat(json.loads(raw)["since"]) != boundary:
                    wrong += 1
    return wrong


def burst_benchmark(count: int, keep: bool = False, timeout: float = 600.0) -> BurstResult:
    with private_servers("burst", keep) as servers:
        metrics_port = free_port()
        settings = servers.settings("burst", scheduler_metrics_port=metrics_port)
        args = ["-m", "scheduler", "--instance", "bench"]
        scheduler = PythonService("bench-scheduler", servers.root, metrics_port, args, settings)
        scheduler.start()
        try:
            scheduler.wait_ready(60)
            wait_for(lambda: scrape(metrics_port).get("scheduler_leader", 0) == 1, 60, "the scheduler to lead")
            assert scheduler.pid is not None
            result = asyncio.run(measure(servers, settings, count, scheduler.pid, timeout))
        finally:
            scheduler.stop(timeout=30)
        result.log_problems = problems_in_log(scheduler.log_file)
    return result


def _s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} s"


def burst_rows(r: BurstResult) -> list[Row]:
    n, done = r.restaurants, r.done_s
    rate = f"{n / done:,.0f} transitions/s" if done else "-"
    others = " / ".join(f"{r.cpu.get(k, 0):.1f}" for k in ("redis", "rabbitmq", "mosquitto"))
    per_cpu = f"{r.scheduler_cpu_s / done:.2f} cores; {1000 * r.scheduler_cpu_s / n:.2f} ms each" if done else "-"
    exact = all(q == n for q in r.queued.values()) and r.wrong_since == 0 and done is not None
    return [
        Row("burst", f"{n:,} restaurants open at once → all right", _s(done), rate,
            "exactly one each" if exact else f"queued {r.queued}, wrong since {r.wrong_since}"),
        Row("burst", "  committed status in Redis", _s(r.committed_s), f"Redis polled every {r.poll_s:.1f} s"),
        Row("burst", "  STATUS_CHANGED confirmed (both queues hold N)", _s(r.events_s), f"queues {r.queued}"),
        Row("burst", "  retained status received by a subscriber", _s(r.retained_s), "Mosquitto, QoS 1"),
        Row("burst", "  every outbox field cleared (confirms, PUBACKs)", _s(r.cleared_s), ""),
        Row("burst", "scheduler CPU over the burst (of which its asyncio loop)",
            f"{r.scheduler_cpu_s:.1f} s ({r.main_thread_cpu_s:.1f} s)", per_cpu),
        Row("burst", "Redis / RabbitMQ / Mosquitto CPU (s)", others, ""),
        Row("burst", "warnings/errors in the scheduler's log", str(len(r.log_problems)), "",
            r.log_problems[0].split(" ", 2)[-1][:70] if r.log_problems else ""),
    ]  # fmt: skip
