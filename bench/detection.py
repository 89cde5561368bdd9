"""`python -m bench detection`: how soon the platform says a device is gone, on each broker, alone.

The scale benchmark measures crash detection beside 100,000 sessions on Mosquitto shards. This one
runs the same probe devices (bench/scale_probes.py) with nothing else connected, once on Mosquitto
and once on the project's amqtt broker, so that the broker's own part shows, above all in the silent
drop: a device that stops sending anything is ended only by its broker's keep-alive check, which the
platform cannot hasten. Each broker gets its own private servers, bridge and API.

crash   TCP close without DISCONNECT → DISCONNECTED in the API and on the dashboard websocket
drop    nothing sent at all, PINGREQ included (keepalive 4 s) → DISCONNECTED in the API
app     PINGREQs go on, heartbeats stop → DISCONNECTED at the end of the presence window
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from redis import Redis

from api.security import Principal, create_access_token
from bench.harness import private_servers, scrape, wait_for
from bench.report import Row
from bench.scale import Platform, probe_ids
from bench.scale_fleet import store_restaurants
from bench.scale_probes import DashboardWatch, ProbeFigures, ProbeRunner, detection_rows
from core.documents import Role
from stack.process import LOOPBACK, free_port

logger = logging.getLogger(__name__)

BROKERS = ("mosquitto", "amqtt")


@dataclass
class DetectionConfig:
    crash_samples: int = 30
    silent_probes: int = 10  # of each kind, going quiet one after another over SILENCE_SPREAD_S
    keepalive_s: int = 4
    window_s: float = 20.0  # stale_after_s; the goal is the window + 2 s whatever it is

    @classmethod
    def quick(cls) -> "DetectionConfig":
        return cls(crash_samples=10, silent_probes=3, window_s=10.0)


@dataclass
class DetectionResult:
    broker: str
    config: DetectionConfig
    will_grace_s: float = 0.5
    probes: ProbeFigures = field(default_factory=ProbeFigures)


def detection_benchmark(config: DetectionConfig, brokers: tuple[str, ...] = BROKERS,
                        keep: bool = False) -> list[DetectionResult]:  # fmt: skip
    return [detect_on(broker, config, keep) for broker in brokers]


def detect_on(broker: str, config: DetectionConfig, keep: bool) -> DetectionResult:
    with private_servers(f"detection-{broker}", keep, with_amqtt=broker == "amqtt") as servers:
        b = servers.backends
        url = b.amqtt_url if broker == "amqtt" else b.mosquitto_url
        settings = servers.settings("detect", broker_url=url, stale_after_s=config.window_s,
                                    feed_metrics_port=free_port())  # fmt: skip
        bridge_port, api_port = settings.bridge_metrics_port, settings.api_port
        result = DetectionResult(broker, config, will_grace_s=settings.will_grace_s)
        crash_ids = probe_ids("crash", 4)
        drop_ids, app_ids = probe_ids("drop", config.silent_probes), probe_ids("app", config.silent_probes)
        secrets = store_restaurants(settings, dict.fromkeys(crash_ids + drop_ids + app_ids, "P"))
        b.reload_brokers()
        token = create_access_token(settings, Principal(subject="detection-bench", role=Role.SALES))
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        platform = Platform(settings, servers.root)
        watch = DashboardWatch(f"ws://{LOOPBACK}:{api_port}/ws/dashboard?token={token}&group=P")
        try:
            platform.start(platform.bridge, platform.api, platform.feed)  # the feed: the dashboard's frames
            wait_for(lambda: scrape(bridge_port).get("bridge_converged", 0) == 1, 120, "the bridge to converge")
            watch.start()
            if not watch.ready.wait(30) or watch.error:
                result.probes.errors.append(f"dashboard websocket: {watch.error or 'no snapshot in 30 s'}")
            runner = ProbeRunner(settings, redis, api_port, token, secrets, result.probes)
            logger.info("%s: %d crashes, %d silent drops and %d silent apps", broker, config.crash_samples,
                        config.silent_probes, config.silent_probes)  # fmt: skip
            threads = [
                threading.Thread(target=runner.crashes, daemon=True,
                                 args=(crash_ids, config.crash_samples, watch, time.monotonic() + 300)),
                threading.Thread(target=runner.silences, daemon=True,
                                 args=(drop_ids, app_ids, config.keepalive_s, config.window_s + 30)),
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(config.window_s + 360)
            runner.halt.set()
        finally:
            watch.stop()
            platform.stop()
            redis.close()
    return result


def detection_result_rows(results: list[DetectionResult]) -> list[Row]:
    rows = []
    for r in results:
        c = r.config
        rows += detection_rows(f"detection ({r.broker})", r.probes, c.keepalive_s, c.window_s, r.will_grace_s,
                               "nothing else connected")  # fmt: skip
        rows += [Row(f"detection ({r.broker})", "note", note[:120], "") for note in r.probes.errors]
    return rows
