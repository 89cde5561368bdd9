"""`python -m bench churn`: the whole platform under client_sim's churn, checked against its ground truth.

Private Redis, RabbitMQ, FerretDB and Mosquitto (bench.harness.PrivateServers), the platform's five
processes (bridge, scheduler, aggregator, feed, API) started by PID as `make run` starts them, and
client_sim's `Simulator` in this process with its ground-truth log (every heartbeat logged). Three
checks, all against what the log says happened:

checkpoints  every `checkpoint_every_s` the API's POST /restaurants/status/query for every restaurant
             equals the truth: core.replay's status at that instant from the log's device sessions,
             the restaurant's hours and zone, and the unavailabilities the API accepted (log). A
             restaurant with something in its detection window (DESIGN.md §3, docs/architecture.md:
             a closed socket ≤ 1 s, a will held 0.5 s, a silent app ≤ window + sweep) is left out of
             that checkpoint and counted as "in window".
ranking      after the run, GET /reports/offline-ranking over the run's days gives each restaurant's
             DISCONNECTED seconds within 1 s of the truth (core.replay over [created_at, now)).
transitions  a tap queue bound to KEEPALIVE_EVENTS sees every STATUS_CHANGED; each is a real
             transition (no two in a row with the same status), the aggregator's history holds a
             point for each one and nothing else, and the dashboard feed's stream holds each once.

The truth follows the platform's documented contract where the log alone cannot know: a will counts
`will_grace_s` after the socket closed; a connection lost because the broker itself went away ends
nothing (no will reaches anyone: the device stays counted until its heartbeats are `stale_after_s`
old or a new birth comes), unless the broker published the will while shutting down and the bridge's
connection outlived the device's for those milliseconds (once, in a run under load: the early truth
has the will land, the late one not); after Redis is lost, every session still open counts as heard from at the
rebuild (docs/architecture.md, Recovery).

While the bridge is dead, or Redis or RabbitMQ is away (`Blind`), device events wait and are applied
(and timestamped) when the bridge catches up; heartbeats then are lost (bridge dead, Redis lost) or
late. The truth is built twice, as early and as late as the platform could have applied them: a
checkpoint where the two differ counts as "in window", and a restaurant's ranking must lie between
the two (within 1 s). Those seconds are the ones the platform could not know; the report counts the
restaurants that had some and the widest span (`ranking_unknowable`). Nothing else is excused.

Faults (`bench.churn_faults`, used by tests/test_churn_runs.py and `--fault`) run at an instant of the
run; a checkpoint taken from the fault until `recovery_s` after it recovered is reported apart and not
counted as a divergence. The truth is built in `bench.churn_truth`, the report in `bench.churn_report`.
"""

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from bench.churn_faults import Fault
from bench.churn_report import RANKING_TOLERANCE_S, Checkpoint, ChurnConfig, ChurnReport, Divergence, FaultRecord
from bench.churn_truth import Blind, Truth, build_truth, core_text, disconnected_seconds, instant
from bench.harness import ALWAYS_OPEN, PrivateServers, scrape
from bench.lag import LoopLag, histogram_quantile
from bench.report import Row
from client_sim import RestaurantCredential, SimConfig, Simulator
from client_sim.ground_truth import read_events
from core.amqp import declare_topology
from core.db import open_mongo
from core.documents import Restaurant, Role, User
from core.hours import SEARCH, DayHours, OpeningHours
from core.messages import EventType
from core.provisioning import RestaurantSpec, provision_restaurants
from core.replay import status_core_at
from core.secrets import hash_secret
from core.settings import Settings
from feed.stream import FeedKeys
from stack.platform import ApiService, PythonService
from stack.process import LOOPBACK, Service, free_ports

logger = logging.getLogger(__name__)

ALWAYS_CLOSED = OpeningHours(**dict.fromkeys(OpeningHours.model_fields))
DEFAULT_TZ = "America/Sao_Paulo"
SALES = ("churn-sales", "churn-sales-password")
DETECTION_S = 2.0  # a closed socket (≤ 1 s) or a stale sweep (≤ 1 s) plus the API's own round trip
STATUS_CHUNK = 10_000
ANCIENT = SEARCH + timedelta(days=1)  # a new restaurant's first status begins up to SEARCH before it
FINAL_STOP_MARGIN_S = 3.0  # no checkpoint this close to the run's end, where every device stops


# -- the platform ------------------------------------------------------------------------------


class Platform:
    """Private backing servers and the platform's five processes, each a `Service` stopped by PID."""

    def __init__(self, name: str = "churn", keep: bool = False, **overrides: object) -> None:
        self.servers = PrivateServers(name, keep)
        self.overrides = overrides
        self.settings: Settings | None = None
        self.apps: dict[str, Service] = {}

    def start_backends(self) -> Settings:
        self.servers.start()
        feed, aggregator, scheduler = free_ports(3)
        settings = self.servers.settings(
            "churn", feed_metrics_port=feed, aggregator_metrics_port=aggregator, scheduler_metrics_port=scheduler,
            mqtt_shared_group="churn",
            jwt_secret=uuid.uuid4().hex, **self.overrides,  # type: ignore[arg-type]
        )  # fmt: skip
        self.settings = settings
        root, api, bridge = self.servers.root, settings.api_port, settings.bridge_metrics_port
        self.apps = {
            "bridge": PythonService("bridge", root, bridge, ["-m", "bridge"], settings),
            "scheduler": PythonService("scheduler", root, scheduler, ["-m", "scheduler"], settings),
            "aggregator": PythonService("aggregator", root, aggregator, ["-m", "aggregator"], settings),
            "feed": PythonService("feed", root, feed, ["-m", "feed"], settings),
            "api": ApiService("api", root, api, ["-m", "uvicorn", "--factory", "api.main:create_app", "--host",
                                                 LOOPBACK, "--port", str(api), "--log-level", "warning",
                                                 "--no-access-log"], settings),
        }  # fmt: skip
        for app in self.apps.values():
            app.log_dir = root / "log"
        return settings

    def start_apps(self) -> None:
        for app in self.apps.values():
            app.start()
        for app in self.apps.values():
            app.wait_ready(90)

    def stop(self) -> None:
        for app in reversed(list(self.apps.values())):
            try:
                app.stop(timeout=20)
            except Exception:
                logger.exception("could not stop %s", app.name)
        self.servers.stop()

    @property
    def backends(self) -> Any:
        return self.servers.backends

    def api_url(self) -> str:
        assert self.settings is not None
        return f"http://{LOOPBACK}:{self.settings.api_port}"

    def log_lines(self, name: str, marks: Sequence[str], most: int = 40) -> list[str]:
        """The first `most` lines of one process's log that contain any of `marks`."""
        try:
            lines = self.apps[name].log_file.read_text(errors="replace").splitlines()
        except OSError as exc:
            return [f"no log: {exc}"]
        return [line for line in lines if any(m in line for m in marks)][:most]

    def log_problems(self) -> dict[str, list[str]]:
        out = {}
        for name, app in self.apps.items():
            try:
                lines = app.log_file.read_text(errors="replace").splitlines()
            except OSError:
                continue
            bad = []
            for i, line in enumerate(lines):
                if " ERROR " in line or " CRITICAL " in line:
                    bad.append(line)
                elif line.startswith("Traceback"):
                    # The exception itself: the traceback's first line that is not indented.
                    raised = next((later for later in lines[i + 1 :] if later and not later[0].isspace()), "?")
                    bad.append(f"{line} ... {raised}")
            if bad:
                out[name] = bad
        return out


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Restaurant_:
    rid: str
    secret: str
    hours: OpeningHours
    tz: str
    created_at: datetime


class EventTap:
    """A durable queue of our own on KEEPALIVE_EVENTS: a copy of every event both stream queues get.

    It reconnects by itself, with a plain connection and a loop of its own rather than aio-pika's
    robust one: in one RabbitMQ fault run of `make test` the robust connection came back without its
    consumer, the tap heard nothing more, and the run reported 117 transitions "extra" in the history
    that the tap had missed. The queue is durable, so a reconnection loses nothing (what was delivered
    and not yet acknowledged comes again, counted as redelivered).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.amqp_name("CHURN_TAP")
        self.events: list[dict[str, Any]] = []
        self.last_at = time.monotonic()
        self.reconnects = 0
        self._ready = asyncio.Event()
        self._closing = False
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.create_task(self._run(), name="churn-tap")
        await asyncio.wait_for(self._ready.wait(), 60)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._consume_until_lost()
            except (aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
                logger.info("event tap: %s; connecting again", exc)
            if not self._closing:
                self.reconnects += 1
                await asyncio.sleep(1.0)

    async def _consume_until_lost(self) -> None:
        self._connection = connection = await aio_pika.connect(self.settings.amqp_url)
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel()
        exchange = await declare_topology(channel, self.settings)
        queue = await channel.declare_queue(self.name, durable=True)
        await queue.bind(exchange)
        await queue.consume(self._on_message)
        self._ready.set()
        await lost.wait()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            event["_heard_ms"] = time.time_ns() // 1_000_000  # when the platform had said it
            self.events.append(event)
            self.last_at = time.monotonic()

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            await self._connection.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


class ChurnRun:
    def __init__(self, platform: Platform, config: ChurnConfig, faults: Sequence[Fault] = ()) -> None:
        self.platform = platform
        self.config = config
        self.faults = list(faults)
        self.restaurants: list[Restaurant_] = []
        self.report = ChurnReport(config.restaurants + config.closed + config.boundary, config.duration_s)
        self.broker_outages: list[tuple[float, float]] = []
        self.blind: list[Blind] = []  # the bridge could not apply device events (build_truth)
        self.fault_windows: list[tuple[float, float, str]] = []
        self.started = 0.0  # wall clock
        self.token = ""
        self.feed_lost = False
        self.days_offline_s: dict[str, dict[str, float]] = {}  # rid → local day → consolidated offline s
        self.ongoing_since: dict[str, datetime] = {}  # rid → its open DISCONNECTED stretch (history_ongoing)
        self.settled_at = float("inf")  # wall clock: transitions later than this are not looked for
        self.undrained: dict[str, int] = {}  # queue depths when the settle gave up waiting (empty: drained)

    @property
    def settings(self) -> Settings:
        assert self.platform.settings is not None
        return self.platform.settings

    # set-up
    async def provision(self) -> None:
        cfg, settings = self.config, self.settings
        client = await open_mongo(settings)
        try:
            specs: list[RestaurantSpec] = []
            kinds: dict[str, tuple[OpeningHours, str]] = {}
            for n in range(cfg.restaurants):
                kinds[f"open-{n:05d}"] = (ALWAYS_OPEN, DEFAULT_TZ)
            for n in range(cfg.closed):
                kinds[f"closed-{n:03d}"] = (ALWAYS_CLOSED, DEFAULT_TZ)
            if cfg.boundary:
                # Opens at the first whole minute after the start-up and ramp, for one minute (UTC).
                opens = datetime.now(UTC) + timedelta(seconds=15 + cfg.ramp_s)
                opens = opens.replace(second=0, microsecond=0) + timedelta(minutes=1)
                day = DayHours(open=opens.strftime("%H:%M"), close=(opens + timedelta(minutes=1)).strftime("%H:%M"))
                minute = OpeningHours(**dict.fromkeys(OpeningHours.model_fields, day))
                for n in range(cfg.boundary):
                    kinds[f"minute-{n:03d}"] = (minute, "UTC")
            for rid, (hours, tz) in kinds.items():
                specs.append(RestaurantSpec(restaurant_id=rid, hours=hours, timezone=tz, group="ABCD"[len(specs) % 4]))
            made = await provision_restaurants(settings, specs)
            await User(username=SALES[0], password_hash=await asyncio.to_thread(hash_secret, SALES[1]),
                       role=Role.SALES).insert()  # fmt: skip
            created = {doc.restaurant_id: doc.created_at async for doc in Restaurant.find_all()}
        finally:
            await client.close()
        await asyncio.to_thread(self.platform.backends.reload_brokers)
        for item in made:
            rid = item["restaurant_id"]
            hours, tz = kinds[rid]
            at = created[rid] if created[rid].tzinfo else created[rid].replace(tzinfo=UTC)
            self.restaurants.append(Restaurant_(rid, item["secret"], hours, tz, at))

    def sim_config(self, truth_path: Path) -> SimConfig:
        cfg = self.config
        return SimConfig(
            brokers=[self.platform.backends.mosquitto_url], scenario="churn", duration_s=cfg.duration_s,
            ramp_s=cfg.ramp_s, heartbeat_interval_s=cfg.heartbeat_interval_s, keepalive_s=30,
            backoff_base_s=0.5, backoff_cap_s=cfg.backoff_cap_s, churn_rate=cfg.churn_rate,
            downtime_s=cfg.downtime_s, silent_s=cfg.silent_s, seed=cfg.seed, truth_path=truth_path,
            truth_heartbeats="all", api_url=self.platform.api_url(), schedule_rate=cfg.schedule_rate,
            schedule_lead_s=cfg.schedule_lead_s, schedule_length_s=cfg.schedule_length_s,
        )  # fmt: skip

    # the run
    async def run(self) -> ChurnReport:
        t_start = time.monotonic()
        settings = self.platform.start_backends()
        await self.provision()
        tap = EventTap(settings)
        await tap.open()
        await asyncio.to_thread(self.platform.start_apps)
        truth_path = self.platform.servers.root / "truth.jsonl"
        http = httpx.AsyncClient(base_url=self.platform.api_url(), timeout=60)
        checkpoints: list[Checkpoint] = []
        try:
            self.token = await self._login(http)
            credentials = [RestaurantCredential(r.rid, r.secret) for r in self.restaurants]
            sim = Simulator(self.sim_config(truth_path), credentials)
            self.started = time.time()
            loop_lag = LoopLag()
            loop_lag.start()
            sim_task = asyncio.create_task(sim.run())
            fault_tasks = [asyncio.create_task(self._fault(f)) for f in self.faults]
            index = 0
            while not sim_task.done():
                await asyncio.wait([sim_task], timeout=self.config.checkpoint_every_s)
                # Not while every device stops at the run's end (10,000 graceful stops in a few seconds, a
                # storm the bridge takes seconds to apply): the checkpoint after the settle covers it.
                if not sim_task.done() and time.time() < self.started + self.config.duration_s - FINAL_STOP_MARGIN_S:
                    index += 1
                    checkpoints.append(await self._checkpoint(http, index))
            stats = sim_task.result()
            await loop_lag.stop()
            self.report.lag = {f"simulator loop {k}": v for k, v in loop_lag.figures().items()}
            self.report.sim = asdict(stats)
            for task in fault_tasks:
                await task
            await self._settle(tap)
            self.report.lag.update(self._bridge_age())
            self.report.lag["event tap reconnects"] = tap.reconnects
            checkpoints.append(await self._checkpoint(http, index + 1))
            ranking, r0, r1 = await self._ranking(http)
            feed = None if self.feed_lost else await self._feed_entries()
            history = await self._history()
            if self.platform.servers.keep:
                await self._dump_redis()
        finally:
            await http.aclose()
            await tap.close()
        with (self.platform.servers.root / "tap.jsonl").open("w") as out:  # kept with --keep, for a closer look
            out.writelines(json.dumps(e) + "\n" for e in tap.events)
        events = read_events(truth_path)
        truth = build_truth(events, settings.stale_after_s, settings.will_grace_s, self.broker_outages, self.blind)
        self.report.blind = [{"kind": b.kind, "start_s": round(b.start - self.started, 2),
                              "end_s": round(b.end - self.started, 2)} for b in self.blind]  # fmt: skip
        self._check_checkpoints(truth, checkpoints)
        self._check_ranking(truth, ranking, r0, r1)
        self._explain_ranking(truth, history, tap.events)
        self._check_transitions(tap.events, history, feed)
        self.report.detection = self._detection(tap.events, events)
        self.report.log_problems = self.platform.log_problems()
        if self.report.divergences or self.report.ranking_off:
            # How the bridges started and met the faults: once, every restaurant's birth waited for the
            # restarted bridge, the first one having applied nothing in 8 s, and nothing else said why.
            started = datetime.fromtimestamp(self.started, UTC).strftime("%H:%M:%S.%f")[:-3]
            self.report.bridge_story = [f"run started at {started} UTC",
                *self.platform.log_lines("bridge", ("connected", "converged", "refused", "reconnect", "WARNING",
                                                    "stopped", "bridge "))]  # fmt: skip
        if self.report.lost_in_history or self.undrained:
            # How the consumers met the fault: once (make test, 2026-11-27) the aggregator and the feed had
            # both exited at RabbitMQ's restart (core/status_events.py `settle`), and the report did not say.
            marks = ("consuming", "subscribing again", "not reachable", "could not look", "WARNING", "stopped")
            self.report.consumer_story = [f"queues left undrained: {json.dumps(self.undrained)}"] + [
                f"{name}: {line}" for name in ("aggregator", "feed") for line in self.platform.log_lines(name, marks)
            ]
        self.report.seconds = round(time.monotonic() - t_start, 1)
        return self.report

    def _bridge_age(self) -> dict[str, float | None]:
        """p50/p99 of `bridge_message_age_seconds` (upper bucket bounds), by kind."""
        samples = scrape(self.settings.bridge_metrics_port)
        out = {}
        for kind in ("birth", "graceful", "heartbeat"):
            for name, q in (("p50", 0.5), ("p99", 0.99)):
                out[f"bridge {kind} age {name}"] = histogram_quantile(
                    samples, "bridge_message_age_seconds", f'kind="{kind}"', q
                )
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            out[f"bridge inbox wait {name}"] = histogram_quantile(samples, "bridge_inbox_wait_seconds", "", q)
        return out

    async def _login(self, http: httpx.AsyncClient) -> str:
        response = await http.post("/auth/token", data={"username": SALES[0], "password": SALES[1]})
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def _fault(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, self.started + fault.at_s - time.time()))
        record = FaultRecord(fault.name, started_s=time.time() - self.started)
        logger.info("fault %s at %.1f s", fault.name, record.started_s)
        record.figures = await fault.action(self)
        record.recovered_s = time.time() - self.started
        logger.info("fault %s: recovered at %.1f s %s", fault.name, record.recovered_s, record.figures)
        self.fault_windows.append((self.started + record.started_s, self.started + record.recovered_s
                                   + fault.recovery_s, fault.name))  # fmt: skip
        self.report.faults.append(record)

    async def _checkpoint(self, http: httpx.AsyncClient, index: int) -> Checkpoint:
        ids = [r.rid for r in self.restaurants]
        point = Checkpoint(index, time.time(), 0.0)
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            for start in range(0, len(ids), STATUS_CHUNK):
                response = await http.post("/restaurants/status/query", json={"ids": ids[start:start + STATUS_CHUNK]},
                                           headers=headers)  # fmt: skip
                response.raise_for_status()
                for status in response.json()["statuses"]:
                    point.statuses[status["restaurant_id"]] = status
        except (httpx.HTTPError, ValueError) as exc:
            point.error = f"{type(exc).__name__}: {exc}"[:200]
        point.t1 = time.time()
        return point

    async def _settle(self, tap: EventTap) -> None:
        """Until both stream queues are empty and the tap has heard nothing for 3 s."""
        deadline = time.monotonic() + self.config.settle_timeout_s
        connection = await aio_pika.connect(self.settings.amqp_url)
        try:
            channel = await connection.channel()
            while time.monotonic() < deadline:
                depths = []
                for base in (self.settings.dashboard_queue, self.settings.aggregator_queue, "CHURN_TAP"):
                    queue = await channel.declare_queue(self.settings.amqp_name(base), passive=True)
                    depths.append(int(queue.declaration_result.message_count or 0))
                if not any(depths) and time.monotonic() - tap.last_at > 3.0:
                    # Scheduled boundaries go on after the run; what comes after this instant may not be
                    # in the history or the feed by the time they are read, so it is not looked for.
                    self.settled_at = time.time()
                    await asyncio.sleep(1.0)  # the consumers' last writes (acked before written? no: after)
                    return
                await asyncio.sleep(0.5)
            self.undrained = dict(zip(("dashboard", "aggregator", "tap"), depths, strict=True))
            logger.warning("the queues did not drain in %.0f s: %s", self.config.settle_timeout_s, self.undrained)
        finally:
            await connection.close()

    async def _ranking(self, http: httpx.AsyncClient) -> tuple[dict[str, float], float, float]:
        today = datetime.now(UTC).date()
        params: dict[str, str | int] = {"from": (today - timedelta(days=1)).isoformat(),
                                        "to": (today + timedelta(days=1)).isoformat(), "limit": len(self.restaurants)}
        t0 = time.time()
        response = await http.get("/reports/offline-ranking", params=params,
                                  headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        t1 = time.time()
        response.raise_for_status()
        return {row["restaurant_id"]: float(row["offline_seconds"]) for row in response.json()["rows"]}, t0, t1

    async def _history(self) -> dict[str, dict[int, list[Any]]]:
        """Every point of the aggregator's history: rid → {ms: [online, reason, detail, ts]}.

        Also kept for `_explain_ranking`: what the ranking adds up, each day's consolidated offline time
        (`days_offline_s`) and the open DISCONNECTED stretch (`ongoing_since`).
        """
        client: AsyncMongoClient[Any] = AsyncMongoClient(self.settings.mongo_url)
        out: dict[str, dict[int, list[Any]]] = {}
        try:
            db = client[self.settings.mongo_db]
            async for doc in db["history_days"].find({}):
                rid, day = str(doc["_id"]).rsplit("|", 1)
                out.setdefault(rid, {}).update({int(ms): value for ms, value in doc.get("points", {}).items()})
                self.days_offline_s.setdefault(rid, {})[day] = doc.get("offline_ms", 0) / 1000
            async for doc in db["history_ongoing"].find({}):
                self.ongoing_since[str(doc["_id"])] = doc["since"].replace(tzinfo=UTC)
        finally:
            await client.close()
        return out

    async def _dump_redis(self) -> None:
        """With --keep: every restaurant's hash, for a closer look at a divergence."""
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            dump = {r.rid: await redis.hgetall(f"{self.settings.redis_prefix}r:{r.rid}") for r in self.restaurants}
        finally:
            await redis.aclose()
        (self.platform.servers.root / "redis.json").write_text(json.dumps(dump, indent=1))

    async def _feed_entries(self) -> list[tuple[str, dict[str, Any]]]:
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            keys = FeedKeys(self.settings.redis_prefix)
            entries: list[tuple[str, dict[str, str]]] = await redis.xrange(keys.stream)  # type: ignore[assignment]
        finally:
            await redis.aclose()
        return [(fields["r"], json.loads(fields["d"])) for _id, fields in entries]

    # the checks
    def _fault_at(self, t0: float, t1: float) -> str:
        return next((name for a, b, name in self.fault_windows if t0 <= b and t1 >= a), "")

    def _check_checkpoints(self, truth: Truth, checkpoints: list[Checkpoint]) -> None:
        by_id = {r.rid: r for r in self.restaurants}
        for cp in checkpoints:
            cp.during_fault = self._fault_at(cp.t0, cp.t1)
            if not cp.error:
                lo, hi = int((cp.t0 - DETECTION_S) * 1000), int((cp.t1 + 0.2) * 1000)
                for rid, status in cp.statuses.items():
                    r = by_id[rid]
                    if any(lo <= t <= hi for t in truth.sensitive.get(rid, ())):
                        cp.in_window += 1
                        continue
                    rules = truth.rules(rid, r.hours, r.tz)
                    expected, *others = (status_core_at(rules, sessions.get(rid, []), instant(t * 1000), truth.window)
                                         for sessions in (truth.sessions, truth.late) for t in (cp.t0, cp.t1))
                    if any(other != expected for other in others):
                        # A clock boundary inside the request, or what the platform could not know yet (Blind).
                        cp.in_window += 1
                        continue
                    cp.checked += 1
                    if core_text(status) != core_text(expected):
                        cp.divergent += 1
                        if cp.during_fault:
                            self.report.fault_divergences += 1
                        else:
                            self.report.divergences.append(Divergence(
                                cp.index, instant(cp.t0 * 1000).isoformat(), rid, core_text(status),
                                core_text(expected),
                                f"since {status.get('since')} last_seen {status.get('last_seen')} "
                                f"devices {status.get('devices_connected')}"))  # fmt: skip
            self.report.checkpoints.append({"index": cp.index, "at_s": round(cp.t0 - self.started, 1),
                                            "request_s": round(cp.t1 - cp.t0, 2), "answered": len(cp.statuses),
                                            "checked": cp.checked, "in_window": cp.in_window,
                                            "divergent": cp.divergent, "during_fault": cp.during_fault,
                                            "error": cp.error})  # fmt: skip

    def _check_ranking(self, truth: Truth, ranking: dict[str, float], t0: float, t1: float) -> None:
        worst = 0.0
        for r in self.restaurants:
            rules = truth.rules(r.rid, r.hours, r.tz)
            # Between the earliest and the latest the platform could have known what happened (Blind).
            bounds = [disconnected_seconds(truth, rules, r.rid, r.created_at, instant(t * 1000), late)
                      for t in (t0, t1) for late in (False, True)]  # fmt: skip
            low, high = min(bounds), max(bounds)
            early = bounds[0], bounds[2]
            if max(early) - min(early) < high - low - 0.001:
                self.report.ranking_unknowable += 1
                self.report.ranking_unknowable_max_s = max(self.report.ranking_unknowable_max_s,
                                                           round(high - low - (max(early) - min(early)), 3))
            got = ranking.get(r.rid, 0.0)
            error = 0.0 if low <= got <= high else min(abs(got - low), abs(got - high))
            worst = max(worst, error)
            self.report.ranking_checked += 1
            if error > RANKING_TOLERANCE_S:
                self.report.ranking_off.append({"ranking": r.rid, "api_s": round(got, 3), "truth_low_s": round(low, 3),
                                                "truth_high_s": round(high, 3)})  # fmt: skip
        self.report.ranking_max_error_s = worst

    def _explain_ranking(self, truth: Truth, history: dict[str, dict[int, list[Any]]],
                         events: list[dict[str, Any]]) -> None:  # fmt: skip
        """Beside each ranking off: the truth's sessions, the history's points and the STATUS_CHANGED heard,
        in seconds since the run's start, so that a failure in CI says which instant went wrong."""

        def rel(at: datetime | float | None) -> float | None:
            if at is None:
                return None
            return round((at.timestamp() if isinstance(at, datetime) else at) - self.started, 2)

        for off in self.report.ranking_off:
            rid = off["ranking"]
            off["sessions"] = [(s.device_id, rel(s.start), rel(s.end), rel(s.beats[-1]) if s.beats else None)
                               for s in truth.sessions.get(rid, [])]  # fmt: skip
            # Where each truth hears nothing for over half a window: the stretches a stale can come from.
            half = truth.window.total_seconds() / 2
            off["silences"] = {
                which: [(s.device_id, rel(a), rel(b)) for s in sessions.get(rid, [])
                        for a, b in itertools.pairwise([s.start, *s.beats, s.end or s.start])
                        if (b - a).total_seconds() > half]
                for which, sessions in (("early", truth.sessions), ("late", truth.late))
            }  # fmt: skip
            off["history"] = [(rel(ms / 1000), core_text({"online": v[0], "reason": v[1], "detail": v[2]}))
                              for ms, v in sorted(history.get(rid, {}).items())]  # fmt: skip
            # What the ranking added up: a sum that disagrees with the points above is the aggregator's.
            off["days_offline_s"] = self.days_offline_s.get(rid, {})
            off["ongoing_since"] = rel(self.ongoing_since.get(rid))
            off["heard"] = [(rel(_point_at(e)), rel(datetime.fromisoformat(e["ts"])), rel(e["_heard_ms"] / 1000),
                             e["type"], e.get("device_id"), core_text(e["data"]) if "online" in e["data"] else
                             e["data"].get("cause"))
                            for e in events if e.get("restaurant_id") == rid]  # fmt: skip

    def _check_transitions(self, events: list[dict[str, Any]], history: dict[str, dict[int, list[Any]]],
                           feed: list[tuple[str, dict[str, Any]]] | None) -> None:
        created = {r.rid: r.created_at for r in self.restaurants}
        seen: set[str] = set()
        per_rid: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            if e["type"] != EventType.STATUS_CHANGED.value:
                continue
            if e["event_id"] in seen:
                self.report.redelivered += 1
                continue
            seen.add(e["event_id"])
            per_rid.setdefault(e["restaurant_id"], []).append(e)
            since, rid = e["data"].get("since"), e["restaurant_id"]
            if since and rid in created and datetime.fromisoformat(since) < created[rid] - ANCIENT:
                self.report.before_creation.append({"before_creation": rid, "since": since,
                                                    "status": core_text(e["data"])})  # fmt: skip
        self.report.transitions = len(seen)
        feed_keys: dict[tuple[str, str, str], int] = {}
        for rid, status in feed or []:
            key = (rid, status["since"], core_text(status))
            feed_keys[key] = feed_keys.get(key, 0) + 1
        for key, count in feed_keys.items():
            if count > 1:
                self.report.doubled_in_feed.append({"feed_doubled": key, "count": count})
        self.report.feed_checked = feed is not None
        for rid in sorted(set(per_rid) | set(history)):
            changes = sorted(per_rid.get(rid, []), key=lambda e: (_point_at(e), e["ts"]))
            for a, b in itertools.pairwise(changes):
                if core_text(a["data"]) == core_text(b["data"]):
                    self.report.doubled.append({"doubled": rid, "first": a["data"]["since"],
                                                "second": b["data"]["since"], "status": core_text(b["data"])})
            expected: dict[int, tuple[str, int]] = {}
            late: set[int] = set()
            for e in changes:
                since = _point_at(e)  # as the aggregator takes it
                at = max(since, created[rid]) if rid in created else since
                ms = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
                ts = int(datetime.fromisoformat(e["ts"]).timestamp() * 1000)
                if ts > self.settled_at * 1000:
                    late.add(ms)
                    self.report.after_settle += 1
                    continue
                if ms not in expected or expected[ms][1] <= ts:
                    expected[ms] = (core_text(e["data"]), ts)
                if feed is not None and (rid, e["data"]["since"], core_text(e["data"])) not in feed_keys:
                    self.report.lost_in_feed.append({"feed_lost": rid, "since": e["data"]["since"],
                                                     "status": core_text(e["data"])})
            points = history.get(rid, {})
            for ms, (text, _ts) in sorted(expected.items()):
                value = points.get(ms)
                got = None if value is None else core_text({"online": value[0], "reason": value[1], "detail": value[2]})
                if got != text:
                    self.report.lost_in_history.append({"lost": rid, "at": instant(ms).isoformat(), "status": text,
                                                        "history": got})  # fmt: skip
            for ms in sorted(set(points) - set(expected) - late):
                self.report.extra_in_history.append({"extra": rid, "at": instant(ms).isoformat(), "value": points[ms]})

    def _detection(self, events: list[dict[str, Any]], log: list[dict[str, Any]]) -> dict[str, float]:
        """Median and p99 from a device's session end (log) to its DEVICE_OFFLINE heard, per cause."""
        ends: dict[tuple[str, str], list[tuple[int, str]]] = {}
        final_ms = (self.started + self.config.duration_s) * 1000
        for e in log:
            if e["event"] in ("crash", "flap", "graceful_offline") and e.get("rid"):
                kind = "final_stop" if e["event"] == "graceful_offline" and e["ts"] >= final_ms else e["event"]
                ends.setdefault((e["rid"], e["did"]), []).append((int(e["ts"]), kind))
        delays: dict[str, list[float]] = {}
        for e in events:
            if e["type"] != EventType.DEVICE_OFFLINE.value or not e.get("device_id"):
                continue
            # When the event was heard, not its ts: the bridge stamps a fact with its arrival, and
            # detection is how long until the platform says so.
            seen_ms = int(e["_heard_ms"])
            candidates = [(t, kind) for t, kind in ends.get((e["restaurant_id"], e["device_id"]), ()) if t <= seen_ms]
            if candidates and e["data"].get("cause") != "stale":
                t, kind = max(candidates)
                if seen_ms - t < 10_000 or kind == "final_stop":
                    delays.setdefault(kind, []).append((seen_ms - t) / 1000)
        out = {}
        for kind, values in sorted(delays.items()):
            values.sort()
            out[f"{kind} p50"] = round(values[len(values) // 2], 3)
            out[f"{kind} p99"] = round(values[min(len(values) - 1, int(len(values) * 0.99))], 3)
        return out


def _point_at(event: dict[str, Any]) -> datetime:
    """A STATUS_CHANGED's instant as the aggregator takes it: its status's `since`, else its `ts`."""
    return datetime.fromisoformat(event["data"].get("since") or event["ts"])


def churn(config: ChurnConfig, faults: Sequence[Fault] = (), keep: bool = False) -> ChurnReport:
    """One churn run on private servers; everything started is stopped by PID however it ends."""
    platform = Platform("churn", keep, stale_after_s=config.stale_after_s,
                        heartbeat_interval_s=config.heartbeat_interval_s)  # fmt: skip
    try:
        return asyncio.run(ChurnRun(platform, config, faults).run())
    finally:
        platform.stop()


def churn_rows(report: ChurnReport) -> list[Row]:
    return report.rows()


