"""One class per real server (Redis, RabbitMQ, FerretDB, Mosquitto, amqtt) on a loopback port.

Each keeps its files in one directory; see `stack.process.Service` for the start/stop contract.
"""

import getpass
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from core.errors import ServiceUnavailable
from stack.mosquitto_config import local_conf, mosquitto_acl
from stack.process import (
    LOOPBACK,
    REPO_ROOT,
    Service,
    ServiceStartError,
    child_processes,
    free_port,
    free_ports,
    poll,
    port_accepts,
    start_all,
    stop_all,
    websocket_accepts,
)

logger = logging.getLogger(__name__)

RESEND_HUP_S = 1.0  # Mosquitto.reload: SIGHUP again when no reload is logged this long after one

__all__ = [
    "LOOPBACK",
    "REPO_ROOT",
    "Amqtt",
    "FerretDB",
    "Mosquitto",
    "RabbitMQ",
    "Redis",
    "Service",
    "ServiceStartError",
    "free_port",
    "free_ports",
    "port_accepts",
    "start_all",
    "stop_all",
]


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

    def beam_pid(self) -> int | None:
        """The Erlang VM: the script's `beam.smp` child, once the script has started it."""
        if self.pid is None:
            return None
        for child in child_processes(self.pid):
            if child.name == "beam.smp":
                return child.pid
        return None

    def signal_pid(self) -> int | None:
        # The Debian script runs beam as its child and does not forward signals; beam shuts down
        # cleanly on SIGTERM, after which the script exits too. Before beam exists, the script
        # itself is the one to stop.
        return self.beam_pid() or self.pid

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
        deadline = time.monotonic() + timeout
        # Mosquitto reloads in its main loop (within ~0.1 s here, ~0.5 s with 100,000 users). Its
        # "Reloading config" line marks that, but 2.0.11 does not always write it: with a 20,000-line
        # password file, a user added before a SIGHUP was admitted 73 ms later and no line came in 4 s
        # (the benchmark's provisioning failed so, 2 runs in 4). So the signal is sent again each
        # second until a line comes; a failure shows the end of the log.
        while True:
            os.kill(pid, signal.SIGHUP)
            if poll(lambda: self._reload_count() > before, min(RESEND_HUP_S, deadline - time.monotonic()), 0.02):
                return
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"mosquitto (pid {pid}) did not reload in {timeout}s:\n{self.log_tail()}")
            logger.warning("mosquitto (pid %d) logged no reload %.0f s after SIGHUP; again", pid, RESEND_HUP_S)

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
