"""Private servers for one benchmark, the platform's processes under test, and what is read from them.

Every benchmark starts its own Redis, RabbitMQ, FerretDB and Mosquitto on free loopback ports in a
temporary directory (`stack.backends.Backends`) and stops them, by PID, when it ends however it ends.
"""

import asyncio
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.db import open_mongo
from core.documents import Role, User
from core.hours import DayHours, OpeningHours
from core.provisioning import RestaurantSpec, provision_restaurants
from core.secrets import hash_secret
from core.settings import Settings
from stack.backends import BackendPorts, Backends
from stack.platform import ApiService, PythonService
from stack.process import LOOPBACK, child_processes, free_port, free_ports
from stack.services import Mosquitto, default_ferretdb_bin

logger = logging.getLogger(__name__)

PLATFORM_USER = "platform"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Open around the clock, so that a connected device makes its restaurant online at any hour of the run.
ALWAYS_OPEN = OpeningHours(
    **{day: DayHours(open="00:00", close="00:00") for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
)


class BenchError(RuntimeError):
    """A benchmark could not run as set up (a server did not answer, a phase timed out)."""


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class PrivateServers:
    """Redis, RabbitMQ, FerretDB and Mosquitto (and amqtt if asked) of one benchmark; `settings()` points a
    process at them."""

    def __init__(self, name: str, keep: bool = False, with_amqtt: bool = False) -> None:
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.backends = Backends(
            self.root,
            BackendPorts.free(),
            platform_user=PLATFORM_USER,
            platform_password=secrets.token_urlsafe(16),
            ferretdb_bin=default_ferretdb_bin(),
            with_amqtt=with_amqtt,
        )
        self.extra: list[Mosquitto] = []
        self._runs = 0

    def start(self) -> None:
        started = time.monotonic()
        self.backends.start()
        logger.info("servers ready in %.1f s under %s", time.monotonic() - started, self.root)

    def stop(self) -> None:
        for broker in reversed(self.extra):
            broker.stop()
        self.backends.stop()
        if self.keep:
            logger.warning("logs and data kept in %s", self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def settings(self, tag: str, broker_url: str | None = None, **overrides: object) -> Settings:
        """Settings for one run: its own Redis prefix, RabbitMQ names and metrics port, one shared database."""
        b = self.backends
        self._runs += 1
        tag = f"{tag}{self._runs}"
        return Settings(
            var_dir=self.root,
            redis_url=b.redis_url,
            redis_prefix=f"{tag}:",
            amqp_url=b.amqp_url,
            amqp_prefix=f"{tag}.",
            mongo_url=b.mongo_url,
            mongo_db="bench",
            mqtt_brokers=[broker_url or b.mosquitto_url],
            mqtt_username=b.platform_user,
            mqtt_password=b.platform_password,
            mosquitto_passwd_file=b.passwd_file,
            bridge_metrics_port=free_port(),
            api_port=free_port(),
            **overrides,  # type: ignore[arg-type]
        )

    def fresh_mosquitto(self) -> Mosquitto:
        """A second Mosquitto with the same users: no retained message of an earlier run in it."""
        port, ws_port = free_ports(2)
        n = len(self.extra) + 1
        broker = Mosquitto(self.root / f"mosquitto-{n}", port, ws_port, self.backends.passwd_file, PLATFORM_USER)
        broker.name = f"mosquitto-{n}"
        self.extra.append(broker)
        broker.start()
        broker.wait_ready()
        return broker


@contextmanager
def private_servers(name: str, keep: bool = False, with_amqtt: bool = False) -> Iterator[PrivateServers]:
    servers = PrivateServers(name, keep, with_amqtt)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def restaurant_ids(count: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(1, count + 1)]


async def _provision(settings: Settings, ids: Sequence[str], sales: tuple[str, str] | None) -> dict[str, str]:
    client = await open_mongo(settings)
    try:
        specs = [RestaurantSpec(restaurant_id=rid, hours=ALWAYS_OPEN) for rid in ids]
        made = await provision_restaurants(settings, specs)
        if sales is not None:
            username, password = sales
            password_hash = await asyncio.to_thread(hash_secret, password)
            await User(username=username, password_hash=password_hash, role=Role.SALES).insert()
    finally:
        await client.close()
    return {item["restaurant_id"]: item["secret"] for item in made}


def provision(
    servers: PrivateServers, ids: Sequence[str], sales: tuple[str, str] | None = None, settings: Settings | None = None
) -> dict[str, str]:
    """Restaurants (always open) in MongoDB and the password file, optionally a sales login; id → secret.

    Their profiles go to the Redis prefix of `settings` (default: one of their own, so the platform
    under test loads them from MongoDB on first use, as after a Redis loss).
    """
    started = time.monotonic()
    secrets_by_id = asyncio.run(_provision(settings or servers.settings("provision"), ids, sales))
    servers.backends.reload_brokers()
    for broker in servers.extra:
        broker.reload()
    logger.info("provisioned %d restaurants in %.1f s", len(ids), time.monotonic() - started)
    return secrets_by_id


def bridge_process(settings: Settings, root: Path, name: str, module: str, args: Sequence[str]) -> PythonService:
    """`python -m bridge` (or the baseline) with `settings` as PRESENCE_* variables; ready = metrics answer."""
    args = ["-m", module, *args]
    return PythonService(name, root, settings.bridge_metrics_port, args, settings)


def api_process(settings: Settings, root: Path, workers: int = 1) -> ApiService:
    args = ["-m", "uvicorn", "--factory", "api.main:create_app", "--host", LOOPBACK, "--port", str(settings.api_port),
            "--log-level", "warning", "--no-access-log"]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]  # uvicorn's supervisor forks them; they share the port
    return ApiService("api", root, settings.api_port, args, settings)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([-+0-9.eEnaInf]+)$")


def scrape(port: int) -> dict[str, float]:
    """Every sample of a Prometheus text page, keyed `name{labels}` exactly as printed."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def cpu_seconds(pid: int, task: int | None = None) -> float:
    """user + system CPU time of a process (all its threads), or of one thread with `task`."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (uvicorn's workers, say)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child.pid) for child in child_processes(pid))


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid`, by thread id (the main thread's id is the pid)."""
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {task: cpu_seconds(pid, task) for task in tasks}


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu_model: str
    memory_gib: float

    @classmethod
    def read(cls) -> "Machine":
        model = "unknown"
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
        return cls(len(os.sched_getaffinity(0)), model, kib / 2**20)

    def describe(self) -> str:
        return f"{self.cores} cores ({self.cpu_model}), {self.memory_gib:.0f} GiB"
