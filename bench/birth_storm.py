"""Births per second through ONE bridge process, every birth sent at once, nothing else running.

The 100,000 storm (`bench scale`) measures the platform with six simulators, eight Mosquitto shards and
the API on the same 2 cores; this isolates the bridge's own pace. N restaurants are stored as the scale
bench stores them (profile and a committed DISCONNECTED status in Redis, password entries), N devices
connect from publisher processes, and each publishes one retained birth at once. Measured from the
first birth sent until the bridge has committed N STATUS_CHANGED and published 2N events (each
restaurant's DEVICE_ONLINE and STATUS_CHANGED, confirmed by RabbitMQ), with the CPU of each process
over that time. The bridge's metrics are read every 0.5 s.
"""

import logging
import time
from dataclasses import dataclass, field

from bench.harness import (
    BenchError,
    bridge_process,
    cpu_seconds,
    private_servers,
    restaurant_ids,
    scrape,
    wait_for,
)
from bench.ingest import problems_in_log
from bench.load import Publishers
from bench.report import Row
from bench.scale_fleet import store_restaurants
from stack.process import LOOPBACK

logger = logging.getLogger(__name__)

PUBLISHERS = 4
POLL_S = 0.5
TIMEOUT_S = 300.0


@dataclass
class BirthStormResult:
    births: int
    seconds: float = 0.0
    per_second: float = 0.0
    status_changes: int = 0
    events: int = 0
    cores: dict[str, float] = field(default_factory=dict)
    bridge_ms_per_birth: float = 0.0
    problems: list[str] = field(default_factory=list)


def birth_storm_benchmark(births: int, keep: bool = False) -> BirthStormResult:
    result = BirthStormResult(births)
    with private_servers("birth-storm", keep) as servers:
        broker = servers.backends.mosquitto
        settings = servers.settings("storm", broker.url)
        ids = restaurant_ids(births, prefix="storm")
        secrets = store_restaurants(settings, {rid: f"g{n % 7}" for n, rid in enumerate(ids)})
        servers.backends.reload_brokers()
        bridge = bridge_process(settings, servers.root, "bench-bridge", "bridge", ["--instance", "storm"])
        bridge.start()
        try:
            bridge.wait_ready(60)
            port = settings.bridge_metrics_port
            wait_for(lambda: scrape(port).get("bridge_converged", 0) == 1, 60, "the bridge to converge")
            with Publishers(LOOPBACK, broker.port, list(secrets.items()), PUBLISHERS, epoch=1) as publishers:
                if publishers.connected() != births:
                    raise BenchError("not every device connected")
                assert bridge.pid is not None and broker.pid is not None
                found = {"bridge": bridge.pid, "mosquitto": broker.pid, "redis": servers.backends.redis.pid,
                         "rabbitmq": servers.backends.rabbitmq.signal_pid()}  # fmt: skip
                pids = {name: pid for name, pid in found.items() if pid is not None}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                t0 = time.monotonic()
                publishers.births(0)
                while True:
                    sample = scrape(port)
                    result.status_changes = int(sample.get("bridge_status_changes_total", 0))
                    result.events = int(sample.get("bridge_events_published_total", 0))
                    if result.status_changes >= births and result.events >= 2 * births:
                        break
                    if time.monotonic() - t0 > TIMEOUT_S:
                        raise BenchError(f"after {TIMEOUT_S:.0f} s: {result.status_changes} statuses, "
                                         f"{result.events} events of {births}")  # fmt: skip
                    time.sleep(POLL_S)
                result.seconds = time.monotonic() - t0
                result.cores = {name: (cpu_seconds(pids[name]) - at) / result.seconds for name, at in before.items()}
            result.per_second = births / result.seconds
            result.bridge_ms_per_birth = result.cores.get("bridge", 0.0) * result.seconds / births * 1000
        finally:
            bridge.stop()
        result.problems = problems_in_log(bridge.log_file)
    return result


def birth_storm_rows(r: BirthStormResult) -> list[Row]:
    cores = " / ".join(f"{name} {value:.2f}" for name, value in r.cores.items())
    return [
        Row("births", f"{r.births:,} births at once through one bridge → every status and event out",
            f"{r.seconds:.1f} s: {r.per_second:,.0f} births/s",
            f"{r.status_changes:,} STATUS_CHANGED, {r.events:,} events confirmed"),
        Row("births", "CPU over that time (cores)", cores, f"bridge {r.bridge_ms_per_birth:.2f} ms of CPU a birth"),
        Row("births", "warnings/errors in the bridge's log", str(len(r.problems)), "; ".join(r.problems[:2])[:200]),
    ]  # fmt: skip
