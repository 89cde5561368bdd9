"""One class per real server, each run as a subprocess on a loopback port with its files in one directory.

`start()` only launches; `wait_ready()` polls until the server answers, so several servers can boot
at once (RabbitMQ's ~6 s dominates). `stop()` terminates by PID and kills after a timeout.
"""

import base64
import contextlib
import getpass
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import ServiceUnavailable
from stack.mosquitto_config import local_conf, mosquitto_acl

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class ServiceStartError(ServiceUnavailable):
    """A server exited or did not answer in time; the message carries the end of its log."""


def free_port() -> int:
    return free_ports(1)[0]


# Below Linux's ephemeral range (32768–60999): a port the kernel hands out for outgoing connections
# (hundreds a second while tests run) could otherwise be taken between choosing it and the server binding it.
PRIVATE_PORTS = range(20000, 32768)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets stay bound until every port is chosen."""
    sockets: list[socket.socket] = []
    rng = random.SystemRandom()
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((LOOPBACK, rng.choice(PRIVATE_PORTS)))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def websocket_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when an MQTT-over-WebSocket upgrade succeeds (a bare TCP probe logs tracebacks in amqtt)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            return sock.recv(12).startswith(b"HTTP/1.1 101")
    except OSError:
        return False


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Service:
    """A server process: launched by `start()`, answering after `wait_ready()`, ended by `stop()`."""

    name = "service"
    start_timeout = 30.0

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = self.data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.data_dir

    def prepare(self) -> None:
        """Write config files before launch."""

    def ready(self) -> bool:
        return port_accepts(self.port)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.log_file.open("ab") as log:
            # A new session: Ctrl-C in the terminal reaches only our supervisor, which then stops
            # the servers in order instead of every process dying at once.
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s (pid %s) on port %s", self.name, self.process.pid, self.port)

    def wait_ready(self, timeout: float | None = None) -> None:
        limit = self.start_timeout if timeout is None else timeout

        def answered() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise ServiceStartError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            return self.ready()

        if not poll(answered, limit):
            raise ServiceStartError(f"{self.name} did not answer on port {self.port} in {limit}s:\n{self.log_tail()}")
        logger.info("%s is ready on port %s", self.name, self.port)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal_pid(self) -> int | None:
        """The process that must receive SIGTERM (a wrapper script may not forward it)."""
        return self.pid

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        target = self.signal_pid() or process.pid
        try:
            os.kill(target, signal.SIGTERM)
            process.wait(timeout)
        except ProcessLookupError:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %ss; killing pid %s", self.name, timeout, target)
            for pid in {target, process.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(5)
        logger.info("stopped %s (pid %s)", self.name, process.pid)


class Redis(Service):
    name = "redis"
    start_timeout = 15.0

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", str(self.data_dir), "--daemonize", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"


class RabbitMQ(Service):
    """Debian's rabbitmq-server run standalone (no systemd), its whole state under `data_dir`."""

    name = "rabbitmq"
    start_timeout = 90.0
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self, data_dir: Path, port: int, dist_port: int) -> None:
        super().__init__(data_dir, port)
        self.dist_port = dist_port
        self.node_name = f"presence-{port}@localhost"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "rabbitmq.pid"

    def prepare(self) -> None:
        # An empty plugin list: no management plugin, a faster boot, no extra ports.
        (self.data_dir / "enabled_plugins").write_text("[].\n")

    def command(self) -> list[str]:
        return [self.script]

    def env(self) -> dict[str, str]:
        d = self.data_dir
        env = dict(os.environ)
        env.update(
            HOME=str(d),  # the Erlang cookie is created and read here
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            # Files that do not exist: ignore whatever /etc/rabbitmq holds.
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            # Keep Erlang distribution on loopback; epmd (started once per machine by Erlang) too.
            ERL_EPMD_ADDRESS=LOOPBACK,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def ready(self) -> bool:
        """The AMQP listener opens last in RabbitMQ's boot: a Connection.Start frame means ready."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                frame = sock.recv(7)
                return len(frame) == 7 and frame[0] == 1  # frame type 1 = method (Connection.Start)
        except OSError:
            return False

    def signal_pid(self) -> int | None:
        # The Debian script runs beam as its child and does not forward signals; beam writes its
        # PID here and shuts down cleanly on SIGTERM, after which the script exits too.
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return self.pid

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/"


def default_ferretdb_bin() -> Path:
    return Path(os.environ.get("PRESENCE_FERRETDB_BIN") or REPO_ROOT / ".tools" / "ferretdb")


class FerretDB(Service):
    """FerretDB 1.24 with its SQLite backend: the MongoDB wire protocol without a MongoDB server."""

    name = "ferretdb"
    start_timeout = 20.0

    def __init__(self, data_dir: Path, port: int, binary: Path | None = None) -> None:
        super().__init__(data_dir, port)
        self.binary = Path(binary) if binary else default_ferretdb_bin()

    def command(self) -> list[str]:
        if not self.binary.exists():
            raise ServiceStartError(f"no FerretDB binary at {self.binary}; run scripts/install.sh")
        return [
            str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
            f"--state-dir={self.data_dir}", f"--listen-addr={LOOPBACK}:{self.port}",
            "--telemetry=disable", "--debug-addr=-",  # no debug HTTP port to collide on 8088
        ]  # fmt: skip

    def ready(self) -> bool:
        if not port_accepts(self.port):
            return False
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient = MongoClient(self.url, serverSelectionTimeoutMS=1000)
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}"


class Mosquitto(Service):
    """Mosquitto with password file, ACL and the no-drop queue settings, TCP and WebSocket listeners."""

    name = "mosquitto"
    start_timeout = 15.0

    def __init__(
        self,
        data_dir: Path,
        port: int,
        ws_port: int,
        password_file: Path,
        platform_user: str = "platform",
        pid_file: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.ws_port = ws_port
        self.password_file = Path(password_file).resolve()
        self.platform_user = platform_user
        # core.provisioning sends SIGHUP to the PID in `<var_dir>/run/mosquitto.pid` after a change.
        self.pid_file = Path(pid_file).resolve() if pid_file else self.data_dir / "mosquitto.pid"

    @property
    def conf_file(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def acl_file(self) -> Path:
        return self.data_dir / "acl"

    def prepare(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            self.password_file.touch(mode=0o600)
        self.acl_file.write_text(mosquitto_acl(self.platform_user))
        self.conf_file.write_text(
            local_conf(
                port=self.port,
                ws_port=self.ws_port,
                password_file=self.password_file,
                acl_file=self.acl_file,
                pid_file=self.pid_file,
                run_as=getpass.getuser() if os.geteuid() == 0 else None,
            )
        )

    def command(self) -> list[str]:
        return ["mosquitto", "-c", str(self.conf_file)]

    def ready(self) -> bool:
        return port_accepts(self.port) and websocket_accepts(self.ws_port)

    def reload(self, timeout: float = 5.0) -> None:
        """Re-read the password file and ACL (SIGHUP), and wait until Mosquitto has done it."""
        pid = self.pid
        if pid is None:  # one started by another process (`make run`): its pid_file says which
            try:
                pid = int(self.pid_file.read_text().strip())
            except (OSError, ValueError) as exc:
                raise ServiceUnavailable("mosquitto is not running") from exc
        before = self._reload_count()
        os.kill(pid, signal.SIGHUP)
        # Mosquitto reloads in its main loop; once it has logged it, later CONNECTs see the new file.
        if not poll(lambda: self._reload_count() > before, timeout, 0.02):
            raise ServiceUnavailable(f"mosquitto did not reload in {timeout}s")

    def _reload_count(self) -> int:
        try:
            return self.log_file.read_text(errors="replace").count("Reloading config")
        except OSError:
            return 0

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.ws_port}"


class Amqtt(Service):
    """The embedded amqtt broker of this repository (`python -m broker`)."""

    name = "amqtt"
    start_timeout = 20.0

    def __init__(
        self, data_dir: Path, port: int, ws_port: int, password_file: Path, platform_user: str = "platform"
    ) -> None:
        super().__init__(data_dir, port)
        self.ws_port = ws_port
        self.password_file = Path(password_file).resolve()
        self.platform_user = platform_user

    @staticmethod
    def available() -> bool:
        return (REPO_ROOT / "broker" / "__main__.py").exists()

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "broker", "--host", LOOPBACK, "--port", str(self.port),
            "--ws-port", str(self.ws_port), "--passwd-file", str(self.password_file),
            "--platform-user", self.platform_user,
        ]  # fmt: skip

    def cwd(self) -> Path:
        return REPO_ROOT

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def ready(self) -> bool:
        return port_accepts(self.port) and websocket_accepts(self.ws_port)

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.ws_port}"


def start_all(services: list[Service], timeout: float | None = None) -> None:
    """Launch every service, then wait for each; on any failure stop those already launched."""
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_ready(timeout)
    except BaseException:
        stop_all(services)
        raise


def stop_all(services: list[Service]) -> None:
    """Stop in reverse order of start; one that fails to stop does not keep the others running."""
    for service in reversed(services):
        try:
            service.stop()
        except Exception:
            logger.exception("could not stop %s (pid %s)", service.name, service.pid)
