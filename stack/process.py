"""Running one server as a subprocess: launch, poll until it answers, stop by PID; ports and probes.

`start()` only launches; `wait_ready()` polls until the server answers, so several servers can boot
at once (RabbitMQ's ~6 s dominates). `stop()` sends SIGTERM by PID and kills after a timeout; a
server stopped before it ever answered is killed at once. Each server runs in a process group of
its own, so that nothing a wrapper script started can outlive it.
"""

import base64
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class ServiceStartError(ServiceUnavailable):
    """A server exited or did not answer in time; the message carries the end of its log."""


def free_port() -> int:
    return free_ports(1)[0]


# Below Linux's ephemeral range (32768–60999): a port the kernel hands out for outgoing connections
# (hundreds a second while tests run) could otherwise be taken between choosing it and the server binding it.
PRIVATE_PORTS: Sequence[int] = range(20000, 32768)
# The fixed ports of `make run` (docs/architecture.md), left alone so that tests never hold one of them.
RESERVED_PORTS = frozenset({1883, 1884, 5672, 6379, 8000, 9001, 9002, 9102, 25672, 27017})


def private_ports() -> Sequence[int]:
    """PRIVATE_PORTS, or with PRESENCE_PORT_SLICE="k/n" the k-th (from 0) of n equal parts of it.

    `make test` runs two pytest processes at once (pytest-xdist), each with its own servers: each
    chooses from its own part, so that one never hands out a port the other chose and has not bound yet.
    """
    spec = os.environ.get("PRESENCE_PORT_SLICE")
    if not spec:
        return PRIVATE_PORTS
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"PRESENCE_PORT_SLICE={spec!r}: expected k/n, as 1/2") from None
    if not 0 <= k < n:
        raise ValueError(f"PRESENCE_PORT_SLICE={spec!r}: k must be 0 to n - 1")
    size = len(PRIVATE_PORTS) // n
    return PRIVATE_PORTS[k * size : (k + 1) * size]


# Ports this process has handed out lately. A port is free when chosen and stays so only until its
# server binds it, seconds later (RabbitMQ takes ~6 s): a second call meanwhile could hand it out again.
# `make test` once failed so: `stack run --free-ports` chose the API's port, then the backends' ports in
# a second call, one of them the same; RabbitMQ bound it first and the API could not.
_HANDED_OUT: dict[int, float] = {}
HANDED_OUT_FOR_S = 600.0
_handed_out_lock = threading.Lock()


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, none handed out by this process in the last ten minutes."""
    sockets: list[socket.socket] = []
    rng = random.SystemRandom()
    ports = private_ports()
    with _handed_out_lock:
        now = time.monotonic()
        for port, at in list(_HANDED_OUT.items()):
            if now - at > HANDED_OUT_FOR_S:
                del _HANDED_OUT[port]
        try:
            attempts = 0
            while len(sockets) < count:
                attempts += 1
                if attempts > 10 * len(ports):
                    raise OSError(f"no {count} free loopback ports left in {ports}")
                port = rng.choice(ports)
                if port in RESERVED_PORTS or port in _HANDED_OUT:
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((LOOPBACK, port))  # all stay bound until every port is chosen: distinct
                except OSError:
                    sock.close()
                    continue
                sockets.append(sock)
            chosen = [sock.getsockname()[1] for sock in sockets]
            _HANDED_OUT.update(dict.fromkeys(chosen, now))
            return chosen
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


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    name: str
    state: str
    ppid: int
    pgrp: int


def processes() -> list[ProcInfo]:
    """Every process of the machine, from /proc/PID/stat ("pid (comm) state ppid pgrp …")."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        found.append(ProcInfo(int(entry.name), name, state, int(ppid), int(pgrp)))
    return found


def child_processes(parent: int) -> list[ProcInfo]:
    return [p for p in processes() if p.ppid == parent]


def group_members(pgid: int) -> list[ProcInfo]:
    """Live (non-zombie) processes of a process group."""
    return [p for p in processes() if p.pgrp == pgid and p.state != "Z"]


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
        self.answered = False  # wait_ready() saw it answer

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
        self.answered = True
        logger.info("%s is ready on port %s", self.name, self.port)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal_pid(self) -> int | None:
        """The process that must receive SIGTERM (a wrapper script may not forward it)."""
        return self.pid

    def terminate(self) -> None:
        target = self.signal_pid()
        if target is not None:
            os.kill(target, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            if not self.answered:
                # Still booting: nothing to save, and a VM may ignore SIGTERM this early.
                self._kill_group(process.pid)
            else:
                try:
                    self.terminate()
                    process.wait(timeout)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in %ss; killing it", self.name, timeout)
                    self._kill_group(process.pid)
            process.wait(5)
        # A wrapper script's other children share its process group and may outlive it.
        if not poll(lambda: not group_members(process.pid), 5.0):
            self._kill_group(process.pid)
        logger.info("stopped %s (pid %s)", self.name, process.pid)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # The group was created for this server alone (start_new_session), so this reaches
        # exactly its processes, a wrapper script's children included.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


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
