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
old or a new birth comes); after Redis is lost, every session still open counts as heard from at the
rebuild (docs/architecture.md, Recovery).

While the bridge is dead, or Redis or RabbitMQ is away (`Blind`), device events wait and are applied
(and timestamped) when the bridge catches up; heartbeats then are lost (bridge dead, Redis lost) or
late. The truth is built twice, as early and as late as the platform could have applied them: a
checkpoint where the two differ counts as "in window", and a restaurant's ranking must lie between
the two (within 1 s). Those seconds are the ones the platform could not know; the report counts the
restaurants that had some and the widest span (`ranking_unknowable`). Nothing else is excused.

Faults (`Fault`, used by tests/test_faults.py and `--fault`) run at an instant of the run; a
checkpoint taken from the fault until `recovery_s` after it recovered is reported apart and not
counted as a divergence.
"""

import asyncio
import itertools
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from bench.harness import ALWAYS_OPEN, BenchError, PrivateServers, scrape
from bench.lag import LoopLag, histogram_quantile
from bench.report import Row
from client_sim import RestaurantCredential, SimConfig, Simulator
from client_sim.ground_truth import read_events, unavailabilities_from_log
from core.amqp import declare_topology
from core.db import open_mongo
from core.documents import Restaurant, Role, User
from core.hours import DayHours, OpeningHours
from core.messages import EventType
from core.provisioning import RestaurantSpec, provision_restaurants
from core.replay import Session, status_core_at, status_points
from core.secrets import hash_secret
from core.settings import Settings
from core.status import OfflineReason, RestaurantRules, StatusCore
from feed.stream import FeedKeys
from stack.platform import ApiService, PythonService
from stack.process import LOOPBACK, Service, free_ports

logger = logging.getLogger(__name__)

ALWAYS_CLOSED = OpeningHours(**dict.fromkeys(OpeningHours.model_fields))
DEFAULT_TZ = "America/Sao_Paulo"
SALES = ("churn-sales", "churn-sales-password")
DETECTION_S = 2.0  # a closed socket (≤ 1 s) or a stale sweep (≤ 1 s) plus the API's own round trip
RANKING_TOLERANCE_S = 1.0
STATUS_CHUNK = 10_000
FINAL_STOP_MARGIN_S = 3.0  # no checkpoint this close to the run's end, where every device stops
SESSION_ENDS = {"graceful_offline": False, "crash": True, "flap": True, "connection_lost": True}  # → is a will


# -- configuration and results -------------------------------------------------------------------


@dataclass
class ChurnConfig:
    restaurants: int = 200  # always open (00:00–24:00 every day)
    closed: int = 5  # closed every day: CLOSED whatever their devices do
    boundary: int = 5  # open for one minute that begins during the run (UTC): the scheduler's boundaries
    duration_s: float = 75.0
    ramp_s: float = 5.0
    checkpoint_every_s: float = 15.0
    churn_rate: float = 4.0  # actions per second over all devices
    heartbeat_interval_s: float = 2.0
    stale_after_s: float = 8.0
    silent_s: tuple[float, float] = (3.0, 15.0)
    downtime_s: tuple[float, float] = (1.0, 8.0)
    backoff_cap_s: float = 4.0
    schedule_rate: float = 0.3  # unavailabilities per second through the API
    schedule_lead_s: tuple[float, float] = (0.0, 10.0)
    schedule_length_s: tuple[float, float] = (3.0, 20.0)
    seed: int = 7
    settle_timeout_s: float = 120.0  # after the run: queues drained and the tap quiet

    @classmethod
    def full(cls) -> "ChurnConfig":
        """10,000 restaurants for 10 minutes at the product's own windows, a checkpoint a minute."""
        return cls(restaurants=10_000, closed=20, boundary=20, duration_s=600.0, ramp_s=60.0, checkpoint_every_s=60.0,
                   churn_rate=15.0, heartbeat_interval_s=30.0, stale_after_s=120.0, silent_s=(60.0, 300.0),
                   downtime_s=(5.0, 60.0), backoff_cap_s=30.0, schedule_rate=1.0, schedule_lead_s=(0.0, 60.0),
                   schedule_length_s=(30.0, 240.0), settle_timeout_s=600.0)  # fmt: skip


@dataclass
class Divergence:
    checkpoint: int
    at: str
    restaurant_id: str
    api: str
    truth: str
    detail: str = ""


@dataclass
class Checkpoint:
    index: int
    t0: float
    t1: float
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""
    during_fault: str = ""
    checked: int = 0
    in_window: int = 0
    divergent: int = 0


@dataclass
class FaultRecord:
    name: str
    started_s: float = 0.0  # since the run's start
    recovered_s: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ChurnReport:
    restaurants: int
    duration_s: float
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    fault_divergences: int = 0  # in checkpoints taken during a fault (reported, not counted)
    ranking_checked: int = 0
    ranking_off: list[dict[str, Any]] = field(default_factory=list)  # beyond the tolerance
    ranking_max_error_s: float = 0.0
    ranking_unknowable: int = 0  # restaurants with seconds the platform could not know (between two truths)
    ranking_unknowable_max_s: float = 0.0  # the widest such span
    transitions: int = 0
    after_settle: int = 0  # STATUS_CHANGED later than the settle (scheduled boundaries): not looked for
    redelivered: int = 0  # the same event_id again (allowed: consumers are idempotent)
    doubled: list[dict[str, Any]] = field(default_factory=list)  # two STATUS_CHANGED with one status in a row
    lost_in_history: list[dict[str, Any]] = field(default_factory=list)
    extra_in_history: list[dict[str, Any]] = field(default_factory=list)
    lost_in_feed: list[dict[str, Any]] = field(default_factory=list)
    doubled_in_feed: list[dict[str, Any]] = field(default_factory=list)
    feed_checked: bool = True
    sim: dict[str, Any] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    blind: list[dict[str, Any]] = field(default_factory=list)  # Blind stretches, seconds since the run's start
    detection: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float | None] = field(default_factory=dict)  # the simulator's loop, the bridge's message age
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lost_transitions(self) -> int:
        return len(self.lost_in_history) + len(self.doubled)

    def summary(self) -> str:
        lines = [
            f"churn: {self.restaurants} restaurants, {self.duration_s:.0f} s, {len(self.checkpoints)} checkpoints",
            f"  divergences: {len(self.divergences)} (during faults, not counted: {self.fault_divergences})",
            f"  ranking: {self.ranking_checked} restaurants, {len(self.ranking_off)} off by > {RANKING_TOLERANCE_S} s,"
            f" largest error {self.ranking_max_error_s:.3f} s; {self.ranking_unknowable} with seconds the platform"
            f" could not know (at most {self.ranking_unknowable_max_s:.1f} s, tolerated)",
            f"  transitions: {self.transitions} STATUS_CHANGED, {self.redelivered} redelivered, {len(self.doubled)}"
            f" doubled, {len(self.lost_in_history)} lost in the history, {len(self.extra_in_history)} extra there,"
            f" {self.after_settle} after the settle (not looked for)",
            f"  feed: {len(self.lost_in_feed)} missing, {len(self.doubled_in_feed)} doubled"
            + ("" if self.feed_checked else " (not checked: its stream lived in the Redis that was lost)"),
            f"  detection: {json.dumps(self.detection)}",
            f"  blind (s since the start): {json.dumps(self.blind)}",
            f"  lag: {json.dumps(self.lag)}",
            f"  simulator: {json.dumps(self.sim.get('actions', {}))} schedules {json.dumps(self.sim.get('schedules'))}",
        ]
        for fault in self.faults:
            lines.append(f"  fault {fault.name}: at {fault.started_s:.1f} s, recovered at {fault.recovered_s:.1f} s "
                         f"{json.dumps(fault.figures)}")  # fmt: skip
        for d in self.divergences[:20]:
            lines.append(f"  DIVERGENCE cp{d.checkpoint} {d.at} {d.restaurant_id}: api {d.api} truth {d.truth}"
                         f" {d.detail}")
        for item in (self.lost_in_history + self.doubled + self.extra_in_history + self.ranking_off)[:20]:
            lines.append(f"  PROBLEM {json.dumps(item, default=str)}")
        for name, problems in self.log_problems.items():
            for line in problems[:3]:
                lines.append(f"  log {name}: {line[:160]}")
        return "\n".join(lines)

    def rows(self) -> list[Row]:
        return [
            Row("churn", f"{self.restaurants:,} restaurants × {self.duration_s:.0f} s: divergences",
                str(len(self.divergences)), f"{len(self.checkpoints)} checkpoints",
                f"{self.fault_divergences} during faults"),
            Row("churn", "ranking seconds off by > 1 s", str(len(self.ranking_off)),
                f"of {self.ranking_checked}", f"largest error {self.ranking_max_error_s:.3f} s"),
            Row("churn", "lost / doubled transitions", f"{len(self.lost_in_history)} / {len(self.doubled)}",
                f"of {self.transitions}", f"{self.redelivered} redelivered"),
            *[Row("churn", f"detection: {k}", f"{v:.3f} s", "", "") for k, v in self.detection.items()],
        ]  # fmt: skip


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

    def log_problems(self) -> dict[str, list[str]]:
        out = {}
        for name, app in self.apps.items():
            try:
                lines = app.log_file.read_text(errors="replace").splitlines()
            except OSError:
                continue
            bad = [line for line in lines if " ERROR " in line or "Traceback" in line or " CRITICAL " in line]
            if bad:
                out[name] = bad
        return out


# -- the ground truth ------------------------------------------------------------------------------


@dataclass
class _Open:
    start_ms: int
    beats: list[int] = field(default_factory=list)
    end_ms: int | None = None
    will: bool = False  # the end is a will (a newer birth before it lands cancels it)


@dataclass(frozen=True)
class Blind:
    """A stretch (wall clock s) in which the bridge could not apply what devices did, by the fault's kind.

    `late`: device events were held back and applied somewhere between when they happened and `end`
    (RabbitMQ away: batches retried). `lost`: presence held back the same way, heartbeats lost or late
    (the bridge dead: the broker queues QoS 1 presence for it). `rebuild`: presence held back, heartbeats
    lost, and every session open at the rebuild counts as heard from then (Redis lost: docs/architecture.md,
    Recovery), the rebuild being between `rebuild_from` (Redis answering again) and `end`.
    """

    start: float
    end: float
    kind: str
    rebuild_from: float = 0.0


@dataclass
class Truth:
    """Device sessions, unavailabilities and clock rules per restaurant, as the log and the contract say.

    `sessions` is the earliest the platform could have known each fact, `late` the latest (they differ
    only around `Blind` stretches); the platform must agree with both where they agree, and lie between
    them where they do not: those are the seconds it could not know.
    """

    sessions: dict[str, list[Session]]
    late: dict[str, list[Session]]
    unavailabilities: dict[str, list[Any]]
    sensitive: dict[str, list[int]]  # per restaurant, instants (ms) where a detection window begins
    window: timedelta

    def rules(self, rid: str, hours: OpeningHours, tz: str) -> RestaurantRules:
        return RestaurantRules(hours, tz, tuple(self.unavailabilities.get(rid, ())))


def _at(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def build_truth(events: Sequence[dict[str, Any]], window_s: float, will_grace_s: float,
                broker_outages: Sequence[tuple[float, float]] = (), blind: Sequence[Blind] = ()) -> Truth:
    """Sessions per device from the log (every heartbeat logged), with the contract's delays applied.

    Built twice over the `blind` stretches: as early as the platform could have applied what happened
    there (when it happened; heartbeats it lost dropped) and as late (at the stretch's end).
    """
    early, sensitive = _sessions(events, window_s, will_grace_s, broker_outages, blind, late=False)
    late, late_marks = _sessions(events, window_s, will_grace_s, broker_outages, blind, late=True)
    for rid, instants in late_marks.items():
        sensitive.setdefault(rid, []).extend(instants)
    unav = unavailabilities_from_log(events)
    for rid, items in unav.items():
        marks = sensitive.setdefault(rid, [])
        for e in events:
            if e.get("rid") == rid and e["event"] in ("unavailability_created", "unavailability_cancelled"):
                marks.append(int(e["ts"]))
        for u in items:
            marks.extend(int(t.timestamp() * 1000) for t in (u.start, u.effective_end))
    return Truth(early, late, unav, sensitive, timedelta(seconds=window_s))


def _sessions(events: Sequence[dict[str, Any]], window_s: float, will_grace_s: float,
              broker_outages: Sequence[tuple[float, float]], blind: Sequence[Blind],
              late: bool) -> tuple[dict[str, list[Session]], dict[str, list[int]]]:
    grace_ms = int(will_grace_s * 1000)
    outages = [(a * 1000, b * 1000) for a, b in broker_outages]
    blinds = [(int(b.start * 1000), int(b.end * 1000), b) for b in blind]

    def stretch(ms: int) -> Blind | None:
        return next((b for lo, hi, b in blinds if lo <= ms <= hi), None)

    def effective(ms: int) -> int:
        held = stretch(ms)
        return int(held.end * 1000) if held is not None and late else ms

    def beat_at(ms: int) -> int | None:
        held = stretch(ms)
        if held is None:
            return ms
        if late:
            return int(held.end * 1000)  # applied (last_seen = then) when the bridge caught up
        return ms if held.kind == "late" else None  # early: a lost heartbeat never counted

    per_device: dict[tuple[str, str], list[_Open]] = {}
    epochs: dict[tuple[str, str], int] = {}
    sensitive: dict[str, list[int]] = {}
    ordered = sorted((e for e in events if e.get("rid") and e.get("did")), key=lambda e: e["ts"])
    for event in ordered:
        key = (event["rid"], event["did"])
        kind, ts, epoch = event["event"], int(event["ts"]), event.get("epoch")
        sessions = per_device.setdefault(key, [])
        current = sessions[-1] if sessions else None
        live = current is not None and (current.end_ms is None or current.will)
        if kind == "birth_sent":
            if epoch is None or epoch <= epochs.get(key, -1):
                continue
            epochs[key] = epoch
            if current is not None and (current.end_ms is None or (current.will and current.end_ms > ts)):
                current.end_ms, current.will = effective(ts), False  # superseded (a takeover, or a will not landed)
            sessions.append(_Open(effective(ts)))
            sensitive.setdefault(key[0], []).append(ts)
        elif epoch != epochs.get(key) or current is None or not live:
            continue
        elif kind == "heartbeat" or kind == "heartbeat_last":
            if current.end_ms is None:
                previous = current.beats[-1] if current.beats else current.start_ms
                if ts - previous >= window_s * 1000:
                    sensitive.setdefault(key[0], []).append(ts)  # a stale session revived
                at = beat_at(ts)
                if at is not None and (not current.beats or current.beats[-1] < at):
                    current.beats.append(at)
        elif kind == "takeover":
            if current.end_ms is None:
                current.end_ms, current.will = effective(ts + grace_ms), True  # unless the new birth comes first
                sensitive.setdefault(key[0], []).append(ts)
        elif kind in SESSION_ENDS and current.end_ms is None:
            if kind == "connection_lost" and any(a <= ts <= b for a, b in outages):
                continue  # the broker went away: no will reaches the platform
            is_will = SESSION_ENDS[kind]
            current.end_ms, current.will = (effective(ts + grace_ms), True) if is_will else (effective(ts), False)
            sensitive.setdefault(key[0], []).append(ts)
    rebuilds = [int((b.end if late else b.rebuild_from) * 1000) for b in blind if b.kind == "rebuild"]
    out: dict[str, list[Session]] = {}
    for (rid, did), sessions in per_device.items():
        # A session begun and ended inside one blind stretch never showed (late): the next one starts there too.
        sessions = [s for s, nxt in zip(sessions, [*sessions[1:], None], strict=True)
                    if nxt is None or nxt.start_ms > s.start_ms]  # fmt: skip
        for s in sessions:
            revived = {r for r in rebuilds if s.start_ms < r and (s.end_ms is None or r < s.end_ms)}
            beats = sorted(set(s.beats) | revived)
            if s.end_ms is not None:
                beats = [b for b in beats if b <= s.end_ms]
            out.setdefault(rid, []).append(Session(did, _at(s.start_ms), _at(s.end_ms) if s.end_ms else None,
                                                   tuple(_at(b) for b in beats)))
            marks = sensitive.setdefault(rid, [])
            if s.end_ms is not None:
                marks.append(s.end_ms)
            # Where the heartbeats stop for a window, the session goes stale: a detection window too.
            seen = [s.start_ms, *beats]
            for a, b in zip(seen, [*seen[1:], None], strict=True):
                stale = a + int(window_s * 1000)
                if (b is None or b > stale) and (s.end_ms is None or stale < s.end_ms):
                    marks.append(stale)
    return out, sensitive


def core_text(core: StatusCore | dict[str, Any]) -> str:
    if isinstance(core, dict):
        online, reason, detail = core["online"], core.get("reason"), core.get("detail")
    else:
        online, reason, detail = core.online, core.reason, core.detail
    return "online" if online else f"{reason}{'/' + str(detail) if detail else ''}"


def disconnected_seconds(truth: Truth, rules: RestaurantRules, rid: str, start: datetime, end: datetime,
                         late: bool = False) -> float:
    """DISCONNECTED seconds in [start, end) by the status function over the log's sessions."""
    sessions = (truth.late if late else truth.sessions).get(rid, [])
    points = status_points(rid, rules, sessions, start, end, truth.window)
    total = 0.0
    for (at, status), nxt in zip(points, [*points[1:], None], strict=True):
        until = end if nxt is None else nxt[0]
        if status.reason is OfflineReason.DISCONNECTED:
            total += (until - at).total_seconds()
    return total


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Restaurant_:
    rid: str
    secret: str
    hours: OpeningHours
    tz: str
    created_at: datetime


FaultAction = Callable[["ChurnRun"], Awaitable[dict[str, float]]]


@dataclass
class Fault:
    """`action` runs `at_s` into the run and returns when the platform is whole again (figures)."""

    name: str
    at_s: float
    action: FaultAction
    recovery_s: float = 5.0  # checkpoints this long after recovery still count as "during the fault"


class EventTap:
    """A durable queue of our own on KEEPALIVE_EVENTS: a copy of every event both stream queues get."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.amqp_name("CHURN_TAP")
        self.events: list[dict[str, Any]] = []
        self.last_at = time.monotonic()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def open(self) -> None:
        self._connection = await aio_pika.connect_robust(self.settings.amqp_url, reconnect_interval=1)
        channel = await self._connection.channel()
        exchange = await declare_topology(channel, self.settings)
        queue = await channel.declare_queue(self.name, durable=True)
        await queue.bind(exchange)
        await queue.consume(self._on_message)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            event["_heard_ms"] = time.time_ns() // 1_000_000  # when the platform had said it
            self.events.append(event)
            self.last_at = time.monotonic()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


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
        self.settled_at = float("inf")  # wall clock: transitions later than this are not looked for

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
                # A fresh copy: OpeningHours caches `key` in its __dict__ once used, and Beanie's encoder
                # would store that too (FerretDB refuses its nested arrays) in the next run of this process.
                fresh = OpeningHours.model_validate(hours.model_dump())
                specs.append(RestaurantSpec(restaurant_id=rid, hours=fresh, timezone=tz, group="ABCD"[len(specs) % 4]))
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
            logger.warning("the queues did not drain in %.0f s", self.config.settle_timeout_s)
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
        """Every point of the aggregator's history: rid → {ms: [online, reason, detail, ts]}."""
        client: AsyncMongoClient[Any] = AsyncMongoClient(self.settings.mongo_url)
        out: dict[str, dict[int, list[Any]]] = {}
        try:
            async for doc in client[self.settings.mongo_db]["history_days"].find({}):
                rid = str(doc["_id"]).rsplit("|", 1)[0]
                out.setdefault(rid, {}).update({int(ms): value for ms, value in doc.get("points", {}).items()})
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
                    expected, *others = (status_core_at(rules, sessions.get(rid, []), _at(t * 1000), truth.window)
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
                                cp.index, _at(cp.t0 * 1000).isoformat(), rid, core_text(status), core_text(expected),
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
            bounds = [disconnected_seconds(truth, rules, r.rid, r.created_at, _at(t * 1000), late)
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
            off["history"] = [(rel(ms / 1000), core_text({"online": v[0], "reason": v[1], "detail": v[2]}))
                              for ms, v in sorted(history.get(rid, {}).items())]  # fmt: skip
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
                    self.report.lost_in_history.append({"lost": rid, "at": _at(ms).isoformat(), "status": text,
                                                        "history": got})  # fmt: skip
            for ms in sorted(set(points) - set(expected) - late):
                self.report.extra_in_history.append({"extra": rid, "at": _at(ms).isoformat(), "value": points[ms]})

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


# -- faults --------------------------------------------------------------------------------------


async def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def _metric(port: int, name: str) -> float | None:
    try:
        return scrape(port).get(name)
    except OSError:
        return None


async def kill_bridge(run: ChurnRun) -> dict[str, float]:
    bridge = run.platform.apps["bridge"]
    assert bridge.process is not None
    down = time.time()
    os.kill(bridge.process.pid, signal.SIGKILL)
    await asyncio.to_thread(bridge.process.wait, 10)
    await asyncio.sleep(2.0)
    t0 = time.monotonic()
    await asyncio.to_thread(bridge.start)
    await asyncio.to_thread(bridge.wait_ready, 60)
    port = run.settings.bridge_metrics_port
    await _wait(lambda: _metric(port, "bridge_converged") == 1, 60, "the bridge to converge")
    run.blind.append(Blind(down, time.time(), "lost"))
    return {"down_s": 2.0, "converged_after_restart_s": round(time.monotonic() - t0, 2)}


async def restart_redis(run: ChurnRun) -> dict[str, float]:
    redis = run.platform.backends.redis
    down = time.time()
    await asyncio.to_thread(redis.stop)
    t0 = time.monotonic()
    await asyncio.to_thread(redis.start)
    await asyncio.to_thread(redis.wait_ready, 30)
    back = time.time()
    run.feed_lost = True  # the feed's stream lived there
    port = run.settings.bridge_metrics_port
    await _wait(lambda: _metric(port, "bridge_converged") == 0, 10, "the bridge to notice")
    converged = await _wait(lambda: _metric(port, "bridge_converged") == 1, 60, "the bridge to converge")
    run.blind.append(Blind(down, time.time(), "rebuild", rebuild_from=back))
    return {"redis_restart_s": round(time.monotonic() - t0 - converged, 2), "converge_s": round(converged, 2)}


async def restart_rabbitmq(run: ChurnRun) -> dict[str, float]:
    rabbit = run.platform.backends.rabbitmq
    t0, down = time.monotonic(), time.time()
    await asyncio.to_thread(rabbit.stop, 60)
    await asyncio.to_thread(rabbit.start)
    await asyncio.to_thread(rabbit.wait_ready, 120)
    back = time.monotonic()
    # The bridge retries a held batch with backoff (at most 5 s apart): it has caught up at its first
    # confirmed publish after its last retry.
    port = run.settings.bridge_metrics_port
    retries, published, last_retry, caught_up = None, None, back, 0.0
    while not caught_up or time.monotonic() - last_retry < 6.0:
        if time.monotonic() - back > 60:
            raise BenchError("the bridge did not catch up within 60 s of RabbitMQ's restart")
        now_retries = _metric(port, "bridge_batch_retries_total")
        now_published = _metric(port, "bridge_events_published_total")
        if now_retries != retries:
            retries, published, last_retry, caught_up = now_retries, now_published, time.monotonic(), 0.0
        elif now_published != published:
            published, caught_up = now_published, caught_up or time.time()
        await asyncio.sleep(0.1)
    run.blind.append(Blind(down, caught_up, "late"))
    return {"rabbitmq_down_s": round(back - t0, 2), "caught_up_s": round(caught_up - down, 2)}


async def stop_ferretdb(run: ChurnRun, seconds: float = 30.0) -> dict[str, float]:
    ferret = run.platform.backends.ferretdb
    await asyncio.to_thread(ferret.stop)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(ferret.start)
    await asyncio.to_thread(ferret.wait_ready, 30)
    return {"ferretdb_down_s": seconds}


async def restart_broker(run: ChurnRun) -> dict[str, float]:
    broker = run.platform.backends.mosquitto
    down = time.time()
    t0 = time.monotonic()
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(broker.wait_ready, 30)
    back = time.monotonic() - t0
    run.broker_outages.append((down - 1.0, time.time() + 1.0))
    port = run.settings.bridge_metrics_port
    await _wait(lambda: _metric(port, "bridge_converged") == 1, 60, "the bridge to reconnect")
    return {"broker_down_s": round(back, 2), "bridge_back_s": round(time.monotonic() - t0, 2)}


FAULTS: dict[str, FaultAction] = {
    "kill-bridge": kill_bridge,
    "redis": restart_redis,
    "rabbitmq": restart_rabbitmq,
    "ferretdb": stop_ferretdb,
    "broker": restart_broker,
}


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


