"""100,000 restaurant sessions on this machine: storm, steady heartbeats, failure detection, batch status.

No process may hold more than 20,000 open files here, so the sessions are spread over several
Mosquitto shards (`stack.shards`, restaurants assigned by `core.shards.shard_of`) and several
`client_sim` processes (≤ 18,000 sockets each, from loopback sources of their own in 127.0.0.0/8).
The bridge subscribes to every shard; the API and the dashboard feed run as processes too.

Phases, each bounded in time:
storm    every simulator starts its devices at random instants of the ramp (`--scenario storm`);
         measured: last CONNACK (from the simulators' truth logs) → every committed status online
         (Redis, polled each second), then checked through the API (POST /restaurants/status/query
         in chunks of 10,000). No consumer runs meanwhile, so afterwards both stream queues are
         drained and every restaurant's DEVICE_ONLINE and STATUS_CHANGED counted: exactly one each.
steady   the fleet heartbeats every 30 s; the bridge's CPU over the window; probe devices give
         heartbeat → Redis, TCP close → DISCONNECTED (API and dashboard websocket), silent drop
         (no packet at all: the broker's keepalive) and silent app (pings, no heartbeats: the window).
batch    with the fleet still connected: 1,000 ids per POST /restaurants/status/query, 20 clients at
         once, against the baseline of the same 1,000 ids asked one GET at a time.
"""

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from api.security import Principal, create_access_token
from bench.birth_latency import percentile
from bench.harness import (
    BenchError,
    api_process,
    bridge_process,
    cpu_seconds,
    private_servers,
    scrape,
    thread_cpu,
    tree_cpu_seconds,
    wait_for,
)
from bench.ingest import problems_in_log
from bench.report import Row, dist_ms, verdict
from bench.scale_fleet import SimFleet, not_in_core, store_restaurants, write_credentials
from bench.scale_probes import Api, DashboardWatch, ProbeFigures, ProbeRunner, detection_rows
from bench.scale_status import BatchLoad, QueueCount, api_online_count, batch_load, drain, queue_depths
from bench.wrk_load import WrkLoad, wrk_load
from core.documents import Role
from core.settings import Settings
from stack.platform import PythonService
from stack.process import LOOPBACK, free_ports
from stack.shards import MosquittoShards

logger = logging.getLogger(__name__)

HEARTBEATS = 'bridge_messages_total{kind="heartbeat"}'


@dataclass
class ScaleConfig:
    sessions: int
    shards: int
    sims: int | None = None  # simulator processes; None: enough for ≤ 18,000 sockets each
    ramp_s: float = 60.0  # the storm: every device connects at a random instant of it
    heartbeat_s: float = 30.0
    window_s: float = 120.0  # stale_after_s: the presence window
    keepalive_s: int = 60  # the fleet's MQTT keepalive
    storm_timeout_s: float = 600.0  # from the last CONNACK
    steady_s: float = 150.0  # at least window + a margin: the silent apps are detected inside it
    heartbeat_probes: int = 8
    heartbeat_every_s: float = 0.25
    crash_samples: int = 60
    silent_probes: int = 3  # of each kind
    probe_keepalive_s: int = 4
    batch_clients: int = 20
    batch_ids: int = 1000
    batch_requests: int = 25  # per client
    baseline_rounds: int = 3
    # The simulators' niceness: the devices are not the platform's, so they get what it leaves (0: none).
    sim_nice: int = 10
    # Then the same batches from wrk (a client in C, bench/wrk_load.py) for this long; 0: not run.
    wrk_s: float = 10.0

    @classmethod
    def full(cls) -> "ScaleConfig":
        return cls(sessions=100_000, shards=8, batch_requests=15)

    @classmethod
    def quick(cls) -> "ScaleConfig":
        return cls(sessions=5000, shards=3, ramp_s=15.0, window_s=60.0, storm_timeout_s=180.0, steady_s=70.0,
                   crash_samples=30, batch_requests=15)  # fmt: skip

    @classmethod
    def reduced(cls) -> "ScaleConfig":
        """The test's size: correctness only, in well under a minute of scenario time."""
        return cls(sessions=1000, shards=3, sims=2, ramp_s=4.0, heartbeat_s=2.0, window_s=6.0, keepalive_s=10,
                   storm_timeout_s=60.0, steady_s=10.0, heartbeat_probes=2, heartbeat_every_s=0.2,
                   crash_samples=4, silent_probes=1, probe_keepalive_s=2, batch_clients=4, batch_ids=200,
                   batch_requests=3, baseline_rounds=1, sim_nice=0, wrk_s=0.0)  # fmt: skip


@dataclass
class ScaleResult:
    config: ScaleConfig
    sims: int = 0
    storm_connected: int = 0
    storm_connect_span_s: float = 0.0  # first CONNECT attempt → last CONNACK
    storm_right_after_s: float | None = None  # last CONNACK → every committed status online
    storm_right_count: int = 0
    storm_api_online: int = 0  # what the API said, every restaurant asked once the storm settled
    storm_api_seconds: float = 0.0
    storm_events_after_s: float | None = None  # last CONNACK → both queues hold every event
    storm_cores: dict[str, float] = field(default_factory=dict)  # from the first CONNECT to all right
    storm_reconnects: int = 0  # connections lost or refused during the storm (each adds transitions)
    queues: dict[str, dict[str, int]] = field(default_factory=dict)  # type → count, per queue
    once_each: dict[str, int] = field(default_factory=dict)  # restaurants with exactly one of each, per queue
    not_once: dict[str, list[str]] = field(default_factory=dict)  # a few that were not
    offline_causes: dict[str, dict[str, int]] = field(default_factory=dict)  # DEVICE_OFFLINE by cause, per queue
    steady_window_s: float = 0.0
    bridge_cores: float = 0.0
    bridge_main_thread_cores: float = 0.0
    heartbeat_rate: float = 0.0  # taken by the bridge, per second, over the window
    cores: dict[str, float] = field(default_factory=dict)  # others, over the window
    open_files: dict[str, list[int]] = field(default_factory=dict)  # per shard and per simulator
    probes: ProbeFigures = field(default_factory=ProbeFigures)
    batch: BatchLoad | None = None
    wrk: WrkLoad | None = None  # the batches again from wrk, the fleet still connected
    wrk_api_cpu_s: float = 0.0
    will_grace_s: float = 0.5  # the bridge's hold of every will (PRESENCE_WILL_GRACE_S)
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    limited_by: list[str] = field(default_factory=list)


def fleet_ids(count: int) -> list[str]:
    return [f"scale-{n:06d}" for n in range(count)]


def probe_ids(kind: str, count: int) -> list[str]:
    return [f"probe-{kind}-{n:02d}" for n in range(count)]


def open_files(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


class Platform:
    """Bridge, API and (after the storm) the feed, as processes; stopped by PID in reverse."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.bridge = bridge_process(settings, root, "scale-bridge", "bridge", ["--instance", "scale"])
        self.api = api_process(settings, root)
        self.feed = PythonService("scale-feed", root, settings.feed_metrics_port, ["-m", "feed"], settings)
        self.started: list[PythonService] = []

    def start(self, *services: PythonService) -> None:
        for service in services:
            service.start()
            self.started.append(service)
        for service in services:
            service.wait_ready(90)

    def stop(self) -> None:
        for service in reversed(self.started):
            try:
                service.stop(timeout=30)
            except BaseException:
                logger.exception("could not stop %s (pid %s) cleanly; killing it", service.name, service.pid)
            process = service.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session): only it


def process_groups(platform: Platform, shards: MosquittoShards, fleet: SimFleet,
                   backend_pids: dict[str, int]) -> dict[str, list[int]]:  # fmt: skip
    """The processes whose CPU is reported, by name (the bridge's is reported on its own)."""
    groups = {"mosquitto (all shards)": shards.pids, "client_sim (all)": fleet.pids}
    for service in (platform.api, platform.feed):
        if service.pid is not None:
            groups[service.name.removeprefix("scale-")] = [service.pid]
    return groups | {name: [pid] for name, pid in backend_pids.items()}


def cpu_of(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}


def run_scale(base: Settings, shards: MosquittoShards, root: Path, config: ScaleConfig,
              backend_pids: dict[str, int] | None = None) -> ScaleResult:  # fmt: skip
    """The whole scenario against servers the caller started (Redis, RabbitMQ, FerretDB) and `shards`."""
    result = ScaleResult(config, will_grace_s=base.will_grace_s)
    bridge_port, api_port, feed_port = free_ports(3)
    settings = base.model_copy(update={
        "mqtt_brokers": shards.urls, "stale_after_s": config.window_s, "heartbeat_interval_s": config.heartbeat_s,
        "bridge_metrics_port": bridge_port, "api_port": api_port, "feed_metrics_port": feed_port,
    })  # fmt: skip
    ids = fleet_ids(config.sessions)
    hb_ids, crash_ids = probe_ids("hb", config.heartbeat_probes), probe_ids("crash", 4)
    drop_ids, app_ids = probe_ids("drop", config.silent_probes), probe_ids("app", config.silent_probes)
    groups = dict.fromkeys(ids, "F") | dict.fromkeys(hb_ids + crash_ids + drop_ids + app_ids, "P")
    started = time.monotonic()
    secrets = store_restaurants(settings, groups)
    shards.reload()
    credentials = root / "scale-credentials.json"
    write_credentials(credentials, {rid: secrets[rid] for rid in ids})
    logger.info("%d restaurants stored in %.1f s", len(groups), time.monotonic() - started)
    token = create_access_token(settings, Principal(subject="scale-bench", role=Role.SALES))
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    platform = Platform(settings, root)
    # The fleet runs until stopped; its own duration is only a bound in case this process dies.
    bound = config.ramp_s + config.storm_timeout_s + config.steady_s + 1800
    fleet = SimFleet(root, settings, credentials, config.sessions, shards.urls,
                     ["--scenario", "storm", "--ramp", str(config.ramp_s), "--duration", str(bound),
                      "--heartbeat-interval", str(config.heartbeat_s), "--keepalive", str(config.keepalive_s)],
                     config.sims, config.sim_nice)  # fmt: skip
    result.sims = len(fleet.slices)

    def watched() -> dict[str, list[int]]:
        bridge = [p for p in [platform.bridge.pid] if p is not None]
        return process_groups(platform, shards, fleet, backend_pids or {}) | {"bridge": bridge}

    try:
        platform.start(platform.bridge, platform.api)
        wait_for(lambda: scrape(bridge_port).get("bridge_converged", 0) == 1, 300, "the bridge to converge")
        api = Api(api_port, token)
        try:
            storm(result, settings, redis, fleet, api, ids, watched)
        finally:
            api.close()
        storm_queues(result, settings, ids)
        platform.start(platform.feed)
        steady(result, settings, redis, fleet, shards, platform, token, secrets,
               (hb_ids, crash_ids, drop_ids, app_ids), backend_pids or {})  # fmt: skip
        result.batch = BatchLoad(config.batch_clients, config.batch_ids)
        logger.info("batch status: %d clients × %d ids", config.batch_clients, config.batch_ids)
        batch_load(api_port, token, ids, result.batch, config.batch_requests, config.baseline_rounds)
        if config.wrk_s > 0 and platform.api.pid is not None:
            # The Python clients share the 2 cores, and the GIL, with the fleet: wrk asks as a client in C.
            cpu_before = tree_cpu_seconds(platform.api.pid)
            result.wrk = wrk_load(api_port, token, ids, root, WrkLoad(config.batch_clients, config.batch_ids,
                                                                      config.wrk_s))  # fmt: skip
            result.wrk_api_cpu_s = tree_cpu_seconds(platform.api.pid) - cpu_before
        if (died := fleet.died()) is not None:
            raise BenchError(died)
    finally:
        try:
            fleet.stop()
        finally:
            platform.stop()  # even when stopping the simulators failed
            redis.close()
            for service in platform.started:
                result.log_problems[service.name] = problems_in_log(service.log_file)
    return result


def storm(result: ScaleResult, settings: Settings, redis: Redis, fleet: SimFleet, api: Api, ids: list[str],
          groups: Callable[[], dict[str, list[int]]]) -> None:  # fmt: skip
    config = result.config
    n = len(ids)
    logger.info("storm: %d sessions over %d shards from %d simulators, ramp %.0f s",
                n, config.shards, result.sims, config.ramp_s)  # fmt: skip
    fleet.start()
    t0, pids = time.monotonic(), groups() | {"bench (its polls)": [os.getpid()]}
    cpu0 = cpu_of(pids)
    deadline = time.monotonic() + config.ramp_s + config.storm_timeout_s
    right_at = events_at = None
    waiting = ids  # not yet online when last polled: nothing takes a device offline in the storm
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if (died := fleet.died()) is not None:
            raise BenchError(died)
        tally = fleet.read_truth()
        result.storm_connected = len(tally.connected)
        all_connected = result.storm_connected >= n
        if right_at is None:
            waiting = not_in_core(redis, settings, waiting)
            if not waiting:  # all online by the shrinking poll: confirmed by asking about every restaurant once
                waiting = not_in_core(redis, settings, ids)
            result.storm_right_count = n - len(waiting)
        if right_at is None and result.storm_right_count >= n:
            right_at = time.time()
        if right_at is not None and events_at is None:
            depths = asyncio.run(queue_depths(settings))
            if all(d >= 2 * n for d in depths.values()):
                events_at = time.time()
        if all_connected and right_at is not None and events_at is not None:
            break
        logger.info("storm: %d connected, %d statuses online", result.storm_connected, result.storm_right_count)
    span = time.monotonic() - t0
    result.storm_cores = {name: (v - cpu0[name]) / span for name, v in cpu_of(pids).items()}
    time.sleep(1.5)  # the truth logs are flushed once a second
    tally = fleet.read_truth()
    result.storm_connected = len(tally.connected)
    result.storm_reconnects = tally.lost + tally.refused + tally.failures
    last = tally.last_connack_ms / 1000
    result.storm_connect_span_s = last - tally.first_attempt_ms / 1000
    if right_at is not None:
        result.storm_right_after_s = max(0.0, right_at - last)
    if events_at is not None:
        result.storm_events_after_s = max(0.0, events_at - last)
    started = time.monotonic()
    result.storm_api_online, _answered = api_online_count(api, ids)
    result.storm_api_seconds = time.monotonic() - started
    logger.info("storm: %d connected; right %.1f s after the last CONNACK; API says %d online",
                result.storm_connected, result.storm_right_after_s or -1, result.storm_api_online)  # fmt: skip


def storm_queues(result: ScaleResult, settings: Settings, ids: list[str]) -> None:
    """Both queues drained: per restaurant, exactly one DEVICE_ONLINE and one STATUS_CHANGED?"""
    counts: dict[str, QueueCount] = drain(settings, timeout=120 + len(ids) / 1000)
    for name, count in counts.items():
        result.queues[name] = dict(count.by_type)
        result.offline_causes[name] = dict(count.offline_causes)
        once, wrong = 0, list[str]()
        for rid in ids:
            per = count.per_restaurant.get(rid)
            if per is not None and per["STATUS_CHANGED"] == 1 and per["DEVICE_ONLINE"] == 1 and sum(per.values()) == 2:
                once += 1
            elif len(wrong) < 5:
                wrong.append(f"{rid}: {dict(per) if per else {}}")
        result.once_each[name] = once
        result.not_once[name] = wrong


def steady(result: ScaleResult, settings: Settings, redis: Redis, fleet: SimFleet, shards: MosquittoShards,
           platform: Platform, token: str, secrets: dict[str, str], probes: tuple[list[str], ...],
           backend_pids: dict[str, int]) -> None:  # fmt: skip
    config = result.config
    hb_ids, crash_ids, drop_ids, app_ids = probes
    # Every device heartbeats within one interval of its CONNACK: after that the load is steady.
    last_connack = fleet.tally.last_connack_ms / 1000
    time.sleep(max(0.0, last_connack + config.heartbeat_s - time.time()))
    watch = DashboardWatch(f"ws://{LOOPBACK}:{settings.api_port}/ws/dashboard?token={token}&group=P")
    watch.start()
    if not watch.ready.wait(30) or watch.error:
        result.probes.errors.append(f"dashboard websocket: {watch.error or 'no snapshot in 30 s'}")
    bridge = platform.bridge
    assert bridge.pid is not None
    pids = process_groups(platform, shards, fleet, backend_pids)
    cpu0 = cpu_of(pids)
    b0, main0, hb0, t0 = cpu_seconds(bridge.pid), thread_cpu(bridge.pid).get(bridge.pid, 0.0), \
        scrape(settings.bridge_metrics_port).get(HEARTBEATS, 0.0), time.monotonic()  # fmt: skip
    until = t0 + config.steady_s
    runner = ProbeRunner(settings, redis, settings.api_port, token, secrets, result.probes)
    threads = [
        threading.Thread(target=runner.heartbeats, args=(hb_ids, config.heartbeat_every_s, until), daemon=True),
        threading.Thread(target=runner.crashes, args=(crash_ids, config.crash_samples, watch, until), daemon=True),
        threading.Thread(
            target=runner.silences,
            args=(drop_ids, app_ids, config.probe_keepalive_s, config.window_s + 30),
            daemon=True,
        ),
    ]
    logger.info("steady: %.0f s of heartbeats every %.0f s, probes running", config.steady_s, config.heartbeat_s)
    for thread in threads:
        thread.start()
    try:
        while time.monotonic() < until:
            time.sleep(min(5.0, max(0.0, until - time.monotonic())))
            if (died := fleet.died()) is not None:
                raise BenchError(died)
            result.open_files["mosquitto shards"] = [open_files(p) for p in shards.pids]
            result.open_files["client_sim"] = [open_files(p) for p in fleet.pids]
        span = time.monotonic() - t0
        result.steady_window_s = span
        result.bridge_cores = (cpu_seconds(bridge.pid) - b0) / span
        result.bridge_main_thread_cores = (thread_cpu(bridge.pid).get(bridge.pid, 0.0) - main0) / span
        result.heartbeat_rate = (scrape(settings.bridge_metrics_port).get(HEARTBEATS, 0.0) - hb0) / span
        result.cores = {name: (v - cpu0[name]) / span for name, v in cpu_of(pids).items()}
    except BaseException:
        runner.halt.set()  # interrupted (SIGTERM, a simulator died): the probes stop now, not in 3 × 3 min
        raise
    finally:
        for thread in threads:
            thread.join(config.window_s + 60)
        runner.halt.set()
        watch.stop()


def scale_benchmark(config: ScaleConfig, keep: bool = False) -> ScaleResult:
    with private_servers("scale", keep) as servers:
        b = servers.backends
        base = servers.settings("scale")
        backend_pids = {"redis": b.redis.pid, "rabbitmq": b.rabbitmq.signal_pid()}
        with MosquittoShards(servers.root, config.shards, b.passwd_file, b.platform_user) as shards:
            return run_scale(base, shards, servers.root, config,
                             {k: v for k, v in backend_pids.items() if v is not None})  # fmt: skip


# --- the table -----------------------------------------------------------------------------------------


def _wrk_rows(w: WrkLoad | None, api_cpu_s: float) -> list[Row]:
    if w is None:
        return []
    figure = f"batch status: {w.ids_per_request:,} ids, {w.connections} connections of wrk, under the load"
    if w.missing:
        return [Row("scale", figure, "not measured", "goal p99 ≤ 20 ms", w.missing)]
    return [Row("scale", figure, f"p50 {w.p50_ms:.1f} / p99 {w.p99_ms:.1f} / max {w.max_ms:.1f} ms",
                f"goal p99 ≤ 20 ms; {w.ids_per_s:,.0f} ids/s; API {api_cpu_s / max(w.seconds, 1e-9):.2f} cores",
                verdict(w.met(20), f"{w.non_2xx} non-2xx, {w.socket_errors} socket errors"))]  # fmt: skip


def _storm_verdict(r: ScaleResult) -> str:
    """The 15 s goal, and whether the connects came as fast as the goal's 60 s (a slower storm is easier)."""
    met = r.storm_right_after_s is not None and r.storm_right_after_s <= 15
    if r.storm_connect_span_s > r.config.ramp_s * 1.1:
        span, ramp = r.storm_connect_span_s, r.config.ramp_s
        return verdict(met, f"for connects over {span:.0f} s, not the goal's {ramp:.0f} s: the simulators had "
                            "the CPU the platform left")  # fmt: skip
    return verdict(met)


def scale_rows(r: ScaleResult) -> list[Row]:
    c, p, will_grace_s = r.config, r.probes, r.will_grace_s
    n = c.sessions
    rows = [
        Row("scale", f"sessions connected ({c.shards} Mosquitto shards, {r.sims} client_sim processes "
            f"at nice {c.sim_nice})", f"{r.storm_connected:,} of {n:,}",
            f"connects spread over {r.storm_connect_span_s:.1f} s (ramp {c.ramp_s:.0f} s)",
            verdict(r.storm_connected == n, f"{r.storm_reconnects} lost/refused/failed")),
        Row("scale", "storm: last CONNACK → every committed status online (Redis, polled 1/s)",
            "not reached" if r.storm_right_after_s is None else f"{r.storm_right_after_s:.1f} s",
            f"goal ≤ 15 s; {r.storm_right_count:,} of {n:,} online at the end", _storm_verdict(r)),
        Row("scale", "storm: the API's status of every restaurant afterwards",
            f"{r.storm_api_online:,} of {n:,} online", f"POST /restaurants/status/query × {-(-n // 10_000)}: "
            f"{r.storm_api_seconds:.1f} s", "all right" if r.storm_api_online == n else "WRONG"),
        Row("scale", "storm: last CONNACK → both queues hold every event",
            "not reached" if r.storm_events_after_s is None else f"{r.storm_events_after_s:.1f} s", "", ""),
    ]  # fmt: skip
    for name, once in r.once_each.items():
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(r.queues.get(name, {}).items()))
        if causes := r.offline_causes.get(name):
            shown += " (offline causes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(causes.items())) + ")"
        rows.append(
            Row(
                "scale",
                f"storm: restaurants with exactly one DEVICE_ONLINE + STATUS_CHANGED in {name}",
                f"{once:,} of {n:,}",
                shown or "empty",
                "once each" if once == n else f"NOT ONCE: {'; '.join(r.not_once.get(name, []))[:80]}",
            )
        )
    storm_cores = " / ".join(f"{name} {v:.2f}" for name, v in r.storm_cores.items())
    rows.append(Row("scale", "storm: CPU of each process (group) over the storm (cores)", storm_cores or "-", ""))
    hb_expected = n / c.heartbeat_s + 1 / c.heartbeat_every_s
    rows += [
        Row("scale", f"steady: bridge CPU, {n:,} sessions, heartbeats every {c.heartbeat_s:.0f} s",
            f"{100 * r.bridge_cores:.1f}% of a core",
            f"goal ≤ 30%; asyncio thread {100 * r.bridge_main_thread_cores:.1f}%; "
            f"over {r.steady_window_s:.0f} s", verdict(r.bridge_cores <= 0.30)),
        Row("scale", "steady: heartbeats taken by the bridge", f"{r.heartbeat_rate:,.0f}/s",
            f"expected ~{hb_expected:,.0f}/s", ""),
        Row("scale", f"steady: heartbeat → Redis `l:` visible ({len(p.heartbeat_ms)} probes, polled 2 ms)",
            dist_ms(p.heartbeat_ms), f"goal p99 ≤ 100 ms; bridge's own write time {dist_ms(p.heartbeat_bridge_ms)}",
            verdict(bool(p.heartbeat_ms) and percentile(p.heartbeat_ms, 99) <= 100, f"{p.heartbeat_missed} missed")),
    ]  # fmt: skip
    rows += detection_rows("scale", p, c.probe_keepalive_s, c.window_s, will_grace_s, "under the steady load")
    b = r.batch
    if b is not None:
        rows.append(Row(
            "scale", f"batch status: {b.ids_per_request:,} ids, {b.clients} concurrent clients",
            dist_ms(b.latencies_ms),
            f"goal p99 ≤ 20 ms; {len(b.latencies_ms) * b.ids_per_request / max(b.seconds, 1e-9):,.0f} ids/s; "
            f"alone {dist_ms(b.one_client_ms)}; baseline {b.ids_per_request:,} single GETs {dist_ms(b.single_get_ms)}; "
            f"first reading of every id {dist_ms(b.first_pass_ms)}",
            verdict(bool(b.latencies_ms) and percentile(b.latencies_ms, 99) <= 20,
                     f"{b.wrong_answers} wrong, {len(b.errors)} errors"),
        ))  # fmt: skip
    rows += _wrk_rows(r.wrk, r.wrk_api_cpu_s)
    cores = " / ".join(f"{name} {v:.2f}" for name, v in r.cores.items())
    rows.append(Row("scale", "other processes over the steady window (cores)", cores or "-", ""))
    files = "; ".join(f"{name} max {max(v):,}" for name, v in r.open_files.items() if v)
    rows.append(Row("scale", "open files per process (most loaded shard / simulator)", files or "-",
                    "limit 20,000 per process"))  # fmt: skip
    problems = {name: v for name, v in r.log_problems.items() if v}
    rows.append(Row("scale", "warnings/errors in the platform's logs", str(sum(len(v) for v in problems.values())),
                    ", ".join(f"{k} {len(v)}" for k, v in problems.items()),
                    next(iter(problems.values()))[0].split(" ", 2)[-1][:70] if problems else ""))  # fmt: skip
    for note in r.limited_by + p.errors:
        rows.append(Row("scale", "note", note[:120], ""))
    return rows
