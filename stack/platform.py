"""`python -m stack run`: the whole platform of DESIGN.md §9 on the fixed loopback ports, state in var/.

Backing servers first (concurrently), then the demo data, then the platform's own processes (bridge,
scheduler, aggregator, dashboard feed, API); Ctrl-C or SIGTERM stops everything this process started,
in reverse order, by PID.
"""

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from core.db import open_mongo
from core.provisioning import provision_demo
from core.settings import Settings
from stack.backends import BackendPorts, Backends
from stack.process import LOOPBACK, REPO_ROOT, Service, poll, start_all, stop_all
from stack.process import free_ports as pick_free_ports

logger = logging.getLogger(__name__)

DEMO_RESTAURANTS = 200


class Shutdown(BaseException):
    """Raised from the signal handler so that start-up and the wait loop unwind through `finally`."""


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as a PRESENCE_* variable, so the children read exactly the supervisor's Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"PRESENCE_{name.upper()}"] = text
    return env


class PythonService(Service):
    """One of the platform's own processes run with the supervisor's interpreter; ready once its port
    (the Prometheus /metrics endpoint, opened after its first connections) accepts."""

    def __init__(self, name: str, var_dir: Path, port: int, args: list[str], settings: Settings) -> None:
        super().__init__(var_dir, port)
        self.name = name
        self.log_dir = var_dir / "log"
        self.args = args
        self.settings = settings

    def command(self) -> list[str]:
        return [sys.executable, *self.args]

    def cwd(self) -> Path:
        return REPO_ROOT

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items() if not k.startswith("PRESENCE_")}
        env.update(settings_env(self.settings))
        return env


class ApiService(PythonService):
    start_timeout = 60.0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/healthz", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass(frozen=True)
class PlatformPorts:
    backends: BackendPorts
    api: int
    bridge_metrics: int
    feed_metrics: int
    aggregator_metrics: int
    scheduler_metrics: int

    @classmethod
    def fixed(cls, settings: Settings) -> "PlatformPorts":
        return cls(
            BackendPorts.fixed(), settings.api_port, settings.bridge_metrics_port,
            feed_metrics=settings.feed_metrics_port if settings.feed_metrics_port > 0 else 9103,
            aggregator_metrics=settings.aggregator_metrics_port if settings.aggregator_metrics_port > 0 else 9104,
            scheduler_metrics=settings.scheduler_metrics_port if settings.scheduler_metrics_port > 0 else 9105,
        )  # fmt: skip

    @classmethod
    def free(cls) -> "PlatformPorts":
        api, bridge, feed, aggregator, scheduler = pick_free_ports(5)
        return cls(BackendPorts.free(), api, bridge, feed, aggregator, scheduler)

    def named(self) -> dict[str, int]:
        b = self.backends
        return {
            "Redis": b.redis,
            "RabbitMQ (AMQP)": b.amqp,
            "RabbitMQ (Erlang distribution)": b.amqp_dist,
            "FerretDB (MongoDB protocol)": b.mongo,
            "Mosquitto (MQTT)": b.mqtt,
            "Mosquitto (MQTT over WebSocket)": b.mqtt_ws,
            "amqtt (MQTT)": b.amqtt,
            "amqtt (MQTT over WebSocket)": b.amqtt_ws,
            "API": self.api,
            "bridge metrics": self.bridge_metrics,
            "feed metrics": self.feed_metrics,
            "aggregator metrics": self.aggregator_metrics,
            "scheduler metrics": self.scheduler_metrics,
        }


def taken_ports(ports: PlatformPorts) -> list[str]:
    """Ports someone already listens on or holds (a previous `make run`, a system service)."""
    taken = []
    for name, port in ports.named().items():
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            taken.append(f"{name} port {port}")
        finally:
            probe.close()
    return taken


def broker_ports(ports: PlatformPorts, broker: str) -> tuple[int, int]:
    """(MQTT, MQTT over WebSocket) of the broker the platform runs with."""
    b = ports.backends
    return (b.amqtt, b.amqtt_ws) if broker == "amqtt" else (b.mqtt, b.mqtt_ws)


def platform_settings(base: Settings, var_dir: Path, ports: PlatformPorts, broker: str) -> Settings:
    """The supervisor's Settings: the environment's, with the addresses of what it starts itself."""
    mqtt_port, ws_port = broker_ports(ports, broker)
    return base.model_copy(
        update={
            "var_dir": var_dir,
            "redis_url": f"redis://{LOOPBACK}:{ports.backends.redis}/0",
            "amqp_url": f"amqp://guest:guest@{LOOPBACK}:{ports.backends.amqp}/",
            "mongo_url": f"mongodb://{LOOPBACK}:{ports.backends.mongo}",
            "mqtt_brokers": [f"mqtt://{LOOPBACK}:{mqtt_port}"],
            "mosquitto_passwd_file": var_dir / "mosquitto" / "passwd",
            "api_host": LOOPBACK,
            "api_port": ports.api,
            "bridge_metrics_port": ports.bridge_metrics,
            "feed_metrics_port": ports.feed_metrics,
            "aggregator_metrics_port": ports.aggregator_metrics,
            "scheduler_metrics_port": ports.scheduler_metrics,
            # The browser client dials the same broker over its WebSocket listener.
            "public_mqtt_ws_urls": [f"ws://{LOOPBACK}:{ws_port}"],
        }
    )


async def provision(settings: Settings) -> Path:
    client = await open_mongo(settings)
    try:
        await provision_demo(settings, DEMO_RESTAURANTS)
    finally:
        await client.close()
    return settings.var_dir / "demo-credentials.json"


def write_pid_files(run_dir: Path, services: list[Service]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for service in services:
        # Mosquitto writes its own; RabbitMQ's is beam's, the process that a `kill` must reach.
        pid = service.signal_pid()
        if pid is not None and service.name != "mosquitto":
            (run_dir / f"{service.name}.pid").write_text(f"{pid}\n")


def live_pid_files(run_dir: Path) -> list[str]:
    """`name pid` of every pid file in `run_dir` whose process still exists (left by a killed run)."""
    alive = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        alive.append(f"{pid_file.stem} {pid}")
    return alive


def remove_pid_files(run_dir: Path, services: list[Service]) -> None:
    for service in services:
        (run_dir / f"{service.name}.pid").unlink(missing_ok=True)


def banner(settings: Settings, ports: PlatformPorts, credentials: Path, broker: str) -> str:
    api = f"http://{LOOPBACK}:{ports.api}"
    mqtt_port, ws_port = broker_ports(ports, broker)
    metrics = {"Bridge": ports.bridge_metrics, "Feed": ports.feed_metrics, "Aggregator": ports.aggregator_metrics,
               "Scheduler": ports.scheduler_metrics}  # fmt: skip
    metric_lines = [f"  {name + ' metrics:':<20}http://{LOOPBACK}:{port}/metrics" for name, port in metrics.items()]
    return "\n".join(
        [
            "",
            "Restaurant presence platform is running.",
            f"  Pages and API:      {api}/",
            f"  Sales dashboard:    {api}/ui/dashboard  (log in as sales; see Credentials)",
            f"  Offline ranking:    {api}/ui/ranking",
            f"  Restaurant app:     {api}/ui/client  (a restaurant id and its secret)",
            f"  API docs:           {api}/docs",
            f"  MQTT:               mqtt://{LOOPBACK}:{mqtt_port}  ws://{LOOPBACK}:{ws_port}  ({broker})",
            *metric_lines,
            f"  Credentials:        {credentials}",
            f"  Logs:               {settings.var_dir / 'log'}",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def _raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def _already_stopping(signum: int, _frame: FrameType | None) -> None:
    logger.warning("%s received while stopping; still stopping", signal.Signals(signum).name)


def run(broker: str = "mosquitto", var_dir: Path | None = None, free_ports: bool = False) -> int:
    """Run until SIGINT/SIGTERM; `free_ports` picks unused ports instead of the fixed ones (a second demo)."""
    base = Settings()
    var = (var_dir or base.var_dir).resolve()
    ports = PlatformPorts.free() if free_ports else PlatformPorts.fixed(base)
    taken = taken_ports(ports)
    if taken:
        leftovers = live_pid_files(var / "run")
        hint = (
            "\nAn earlier run's processes are still alive: " + ", ".join(leftovers) + " (stop them with `kill PID`)."
            if leftovers
            else "\nStop that process (an earlier `make run`, or a system service) and try again."
        )
        print(
            "stack: cannot start, these ports are already in use by another process:\n  " + "\n  ".join(taken) + hint,
            file=sys.stderr,
        )
        return 1
    settings = platform_settings(base, var, ports, broker)
    backends = Backends(
        var,
        ports.backends,
        platform_user=settings.mqtt_username,
        platform_password=settings.mqtt_password,
        with_amqtt=broker == "amqtt",
        log_dir=var / "log",
    )
    bridge = PythonService("bridge", var, ports.bridge_metrics, ["-m", "bridge"], settings)
    feed = PythonService("feed", var, ports.feed_metrics, ["-m", "feed"], settings)
    aggregator = PythonService("aggregator", var, ports.aggregator_metrics, ["-m", "aggregator"], settings)
    scheduler = PythonService("scheduler", var, ports.scheduler_metrics, ["-m", "scheduler"], settings)
    api = ApiService(
        "api", var, ports.api,
        ["-m", "uvicorn", "--factory", "api.main:create_app", "--host", LOOPBACK, "--port", str(ports.api)],
        settings,
    )  # fmt: skip
    apps: list[Service] = [bridge, feed, aggregator, scheduler, api]
    started: list[Service] = []
    signal.signal(signal.SIGINT, _raise_shutdown)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    try:
        print(f"stack: starting Redis, RabbitMQ, FerretDB and {broker} (state in {var})", file=sys.stderr)
        backends.start()
        started.extend(backends.services)
        write_pid_files(var / "run", started)
        print(f"stack: provisioning {DEMO_RESTAURANTS} demo restaurants", file=sys.stderr)
        credentials = asyncio.run(provision(settings))
        print("stack: starting the bridge, dashboard feed, aggregator, scheduler and API", file=sys.stderr)
        start_all(apps)
        started.extend(apps)
        write_pid_files(var / "run", apps)
        print(banner(settings, ports, credentials, broker), flush=True)
        # Supervise: a child that dies on its own ends the run, loudly, rather than leaving half a platform.
        poll(lambda: any(s.process is not None and s.process.poll() is not None for s in started), float("inf"), 0.5)
        dead = [s for s in started if s.process is not None and s.process.poll() is not None]
        for service in dead:
            print(
                f"stack: {service.name} exited unexpectedly; its log ends with:\n{service.log_tail()}", file=sys.stderr
            )
        return 1
    except Shutdown as exc:
        print(f"stack: {exc}: stopping", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, _already_stopping)
        signal.signal(signal.SIGTERM, _already_stopping)
        stop_all(backends.services + apps)  # reversed inside: API and bridge first
        remove_pid_files(var / "run", started)
        print(f"stack: stopped (logs in {var / 'log'})", file=sys.stderr)
