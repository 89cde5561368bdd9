"""Heartbeats per second through ONE bridge process, and through the naive baseline, on Mosquitto.

A run: start the bridge (or `bench.naive_bridge`) as a subprocess, connect every device from the
publisher processes, publish one birth each and wait until the bridge has applied them, then send
heartbeats for a fixed time. The bridge's own `bridge_messages_total{kind="heartbeat"}` counter is
sampled twice a second; the rate is taken over the middle of the sending phase (first and last fifth
left out). Then the bridge gets a bounded time to drain what the broker still holds for it.
"""

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    BenchError,
    PrivateServers,
    bridge_process,
    cpu_seconds,
    private_servers,
    provision,
    restaurant_ids,
    scrape,
    thread_cpu,
    wait_for,
)
from bench.load import Publishers
from stack.process import LOOPBACK
from stack.services import Mosquitto

logger = logging.getLogger(__name__)

HEARTBEATS = 'bridge_messages_total{kind="heartbeat"}'
PRESENCE = 'bridge_messages_total{kind="presence"}'
SAMPLE_EVERY_S = 0.5
STALL_S = 5.0  # no progress for this long while draining: the rest is not coming
NAIVE_DRAIN_S = 5.0  # the baseline's backlog would take many minutes: only this long is waited


@dataclass
class IngestConfig:
    devices: int
    publishers: int
    duration_s: float
    rate: float  # heartbeats/s offered in total; 0 = as fast as the publishers can
    drain_timeout_s: float
    # Births per second while connecting; 0 = all at once. Not what is measured here, so paced: a burst
    # makes the bridge settle up to 200 restaurants at once, beyond redis-py's pool of 100 connections,
    # and it dies of MaxConnectionsError (seen at 500/s with 8,000 devices).
    birth_rate: float = 200.0
    naive_concurrency: int = 100


@dataclass
class Sample:
    at: float
    processed: float
    cpu: dict[str, float]
    threads: dict[int, float]


@dataclass
class IngestResult:
    target: str
    devices: int
    published: int = 0
    send_seconds: float = 0.0
    processed_rate: float = 0.0
    window_s: float = 0.0
    backlog_at_end: int = 0
    processed_total: int = 0
    drain_seconds: float = 0.0
    drain_outcome: str = ""  # "drained", "stalled" (no progress for STALL_S: lost) or "timeout" (still going)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used on average over the window
    main_thread_cpu: float = 0.0
    other_threads_cpu: float = 0.0
    batch_size: float = 0.0
    batch_ms: float = 0.0
    ignored: int = 0
    log_problems: list[str] = field(default_factory=list)  # WARNING/ERROR lines of the process under test

    @property
    def offered_rate(self) -> float:
        return self.published / self.send_seconds if self.send_seconds else 0.0

    @property
    def unprocessed(self) -> int:
        return max(0, self.published - self.processed_total)


class Sampler(threading.Thread):
    """Reads the bridge's counter and the CPU time of every process involved, twice a second."""

    def __init__(self, metrics_port: int, pids: dict[str, list[int]], bridge_pid: int) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.metrics_port = metrics_port
        self.pids = pids
        self.bridge_pid = bridge_pid
        self.samples: list[Sample] = []
        self.failed = False
        self._halt = threading.Event()

    def take(self) -> Sample:
        processed = scrape(self.metrics_port).get(HEARTBEATS, 0.0)
        cpu = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        return Sample(time.monotonic(), processed, cpu, thread_cpu(self.bridge_pid))

    def run(self) -> None:
        failures = 0
        while not self._halt.wait(SAMPLE_EVERY_S):
            try:
                self.samples.append(self.take())
                failures = 0
            except OSError as exc:
                failures += 1
                if failures == 4:  # two seconds without an answer: it is gone, not busy
                    logger.error("the process under test no longer answers on its metrics port: %s", exc)
                    self.failed = True
                    return

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def nearest(self, at: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.at - at))


def _summarise(result: IngestResult, sampler: Sampler, t0: float, t1: float, bridge_pid: int) -> None:
    """Rate and CPU between the samples nearest to the middle of [t0, t1]."""
    margin = (t1 - t0) / 5
    a, b = sampler.nearest(t0 + margin), sampler.nearest(t1 - margin)
    span = b.at - a.at
    if span <= 0:
        raise BenchError("too few metric samples in the sending phase; run longer")
    result.window_s = span
    result.processed_rate = (b.processed - a.processed) / span
    result.cpu = {name: (b.cpu[name] - a.cpu[name]) / span for name in b.cpu}
    main = b.threads.get(bridge_pid, 0.0) - a.threads.get(bridge_pid, 0.0)
    others = sum(v - a.threads.get(t, 0.0) for t, v in b.threads.items() if t != bridge_pid)
    result.main_thread_cpu, result.other_threads_cpu = main / span, others / span


def _wait_births_applied(port: int, births: int, full_bridge: bool, timeout: float) -> None:
    wait_for(lambda: scrape(port).get(PRESENCE, 0) >= births, timeout, f"the bridge to take {births} births")
    if not full_bridge:
        return
    # Then its RabbitMQ events (DEVICE_ONLINE, STATUS_CHANGED) and retained statuses: quiet for a second.
    last = [-1.0]

    def quiet() -> bool:
        now = scrape(port).get("bridge_events_published_total", 0.0)
        settled, last[0] = now == last[0], now
        return settled

    wait_for(quiet, timeout, "the births' events to be published", interval=1.0)


def run_ingest(
    servers: PrivateServers,
    broker: Mosquitto,
    devices: list[tuple[str, str]],
    target: str,
    config: IngestConfig,
    profile_to: Path | None = None,
    overrides: dict[str, object] | None = None,
) -> IngestResult:
    """One run against `target` ("bridge" or "naive"); everything it starts is stopped before it returns."""
    settings = servers.settings(target, broker.url, **(overrides or {}))
    if target == "bridge":
        service = bridge_process(settings, servers.root, "bench-bridge", "bridge", ["--instance", "bench"])
    else:
        concurrency = ["--concurrency", str(config.naive_concurrency)]
        service = bridge_process(settings, servers.root, "bench-naive", "bench.naive_bridge", concurrency)
    if profile_to is not None:
        service.args = ["-m", "bench.profiling", str(profile_to), *service.args]
    result = IngestResult(target, len(devices))
    service.start()
    try:
        service.wait_ready(60)
        port = settings.bridge_metrics_port
        wait_for(lambda: scrape(port).get("bridge_converged", 0) == 1, 60, f"{target} to converge")
        with Publishers(LOOPBACK, broker.port, devices, config.publishers, epoch=1) as publishers:
            connected = publishers.connected()
            logger.info("%s: %d devices connected", target, connected)
            births = publishers.births(config.birth_rate)
            _wait_births_applied(port, births, target == "bridge", timeout=120)
            logger.info("%s: %d births applied; heartbeats for %.0f s", target, births, config.duration_s)
            assert service.pid is not None and broker.pid is not None
            pids = {
                target: [service.pid],
                "mosquitto": [broker.pid],
                "publishers": publishers.pids,
                "redis": [p for p in [servers.backends.redis.pid] if p],
                "rabbitmq": [p for p in [servers.backends.rabbitmq.signal_pid()] if p],
            }
            sampler = Sampler(port, pids, service.pid)
            sampler.samples.append(sampler.take())
            sampler.start()
            try:
                start_at = time.time() + 0.5
                t0 = time.monotonic() + 0.5
                publishers.start_heartbeats(start_at, config.duration_s, config.rate)
                result.published, result.send_seconds = publishers.heartbeats_sent()
                t1 = t0 + result.send_seconds
                at_end = sampler.nearest(t1)
                result.backlog_at_end = int(result.published - at_end.processed)
                _drain(result, sampler, config.drain_timeout_s)
            finally:
                sampler.stop()
            if sampler.failed or (service.process is not None and service.process.poll() is not None):
                raise BenchError(f"{target} died during the run; its log ends with:\n{service.log_tail()}")
            _summarise(result, sampler, t0, t1, service.pid)
        final = scrape(port)
        result.processed_total = int(final.get(HEARTBEATS, 0))
        if result.processed_total >= result.published:
            result.drain_outcome = "drained"  # possibly in the moments after the last sample
        result.ignored = int(final.get('bridge_ignored_total{kind="heartbeat"}', 0))
        count = final.get('bridge_batch_seconds_count{kind="heartbeat"}', 0)
        if count:
            result.batch_ms = 1000 * final['bridge_batch_seconds_sum{kind="heartbeat"}'] / count
            batches = max(1.0, final.get("bridge_batch_size_count", 1))
            result.batch_size = final.get("bridge_batch_size_sum", 0) / batches
    except OSError as exc:
        if service.process is not None and service.process.poll() is not None:
            raise BenchError(f"{target} exited during the run; its log ends with:\n{service.log_tail()}") from exc
        raise
    finally:
        service.stop(timeout=30)
        result.log_problems = problems_in_log(service.log_file)
    return result


def problems_in_log(path: Path) -> list[str]:
    """The WARNING/ERROR lines of a log (a run that needed retries is worth saying so)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if " WARNING " in line or " ERROR " in line]


def _drain(result: IngestResult, sampler: Sampler, timeout: float) -> None:
    """Wait until the bridge has taken everything published, stalls, or the bound is reached."""
    started = time.monotonic()
    last_progress, last = started, -1.0
    result.drain_outcome = "timeout"
    while time.monotonic() - started < timeout and not sampler.failed:
        processed = sampler.samples[-1].processed
        if processed >= result.published:
            result.drain_outcome = "drained"
            break
        if processed != last:
            last_progress, last = time.monotonic(), processed
        elif time.monotonic() - last_progress > STALL_S:
            result.drain_outcome = "stalled"
            break
        time.sleep(SAMPLE_EVERY_S)
    result.drain_seconds = time.monotonic() - started


def ingest_benchmark(
    config: IngestConfig,
    profile_to: Path | None = None,
    overrides: dict[str, object] | None = None,
    keep: bool = False,
) -> tuple[IngestResult, IngestResult]:
    """The bridge, then the naive baseline, with the same devices and traffic on one set of servers.

    Each run gets a Mosquitto of its own, so no retained birth of the first is read by the second.
    `overrides` are Settings fields for the bridge only (e.g. `mqtt_protocol`).
    """
    with private_servers("ingest", keep) as servers:
        secrets = provision(servers, restaurant_ids(config.devices))
        devices = list(secrets.items())
        bridge = run_ingest(servers, servers.backends.mosquitto, devices, "bridge", config, profile_to, overrides)
        # The baseline cannot catch up with its backlog in any useful time: what is left is reported.
        naive_config = dataclasses.replace(config, drain_timeout_s=min(NAIVE_DRAIN_S, config.drain_timeout_s))
        naive = run_ingest(servers, servers.fresh_mosquitto(), devices, "naive", naive_config)
    return bridge, naive
