"""Publisher processes: each holds many restaurant devices on raw MQTT connections (see `bench.wire`).

The parent drives them in phases through a pipe: connect → births (QoS 1, retained, PUBACK awaited)
→ heartbeats (QoS 0) at an offered rate or as fast as they can for a fixed time → disconnect.
"""

import contextlib
import json
import multiprocessing
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench import wire
from bench.harness import BenchError, cpu_seconds
from core.ids import client_id, heartbeat_topic, presence_topic

DEVICE = "tablet"
CONNECT_WAVE = 50  # Mosquitto's listen backlog drops SYNs beyond ~100 pending connects: 1 s retransmits
PACE_EVERY = 64  # sends between two looks at the clock
REPLY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PublisherSpec:
    host: str
    port: int
    devices: list[tuple[str, str]]  # (restaurant id, secret), one device each
    epoch: int


def _ms() -> int:
    return time.time_ns() // 1_000_000


class Devices:
    """The sockets of one publisher process, one per device."""

    def __init__(self, spec: PublisherSpec) -> None:
        self.spec = spec
        self.socks: list[socket.socket] = []

    def connect(self) -> None:
        for start in range(0, len(self.spec.devices), CONNECT_WAVE):
            wave = []
            for rid, secret in self.spec.devices[start : start + CONNECT_WAVE]:
                sock = socket.create_connection((self.spec.host, self.spec.port), timeout=30)
                will = json.dumps({"state": "offline", "epoch": self.spec.epoch, "ts": _ms()}).encode()
                sock.sendall(
                    wire.connect_packet(client_id(rid, DEVICE), rid, secret, presence_topic(rid, DEVICE), will)
                )
                wave.append(sock)
            for sock in wave:
                wire.expect_connack(sock)
            self.socks.extend(wave)

    def births(self, rate: float) -> int:
        """One retained birth per device at `rate` per second (0 = at once), then every PUBACK."""
        t0 = time.monotonic()
        for n, ((rid, _), sock) in enumerate(zip(self.spec.devices, self.socks, strict=True)):
            if rate:
                time.sleep(max(0.0, n / rate - (time.monotonic() - t0)))
            body = json.dumps({"state": "online", "epoch": self.spec.epoch, "ts": _ms()}).encode()
            sock.sendall(wire.publish_packet(presence_topic(rid, DEVICE), body, qos=1, retain=True))
        for sock in self.socks:
            wire.expect_puback(sock)
        return len(self.socks)

    def heartbeats(self, start_at: float, duration: float, rate: float) -> tuple[int, float]:
        """Send until `duration` has passed since the wall-clock `start_at`; `rate` 0 = unpaced.

        Returns (heartbeats sent, seconds actually spent sending).
        """
        prefixes = [
            wire.heartbeat_prefix(heartbeat_topic(rid, DEVICE), self.spec.epoch) for rid, _ in self.spec.devices
        ]
        pairs = list(zip(self.socks, prefixes, strict=True))
        for sock in self.socks:
            # Blocking without a timeout: with one, CPython polls the socket before every send.
            sock.settimeout(None)
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        end = t0 + duration
        sent = 0
        while True:
            for i in range(0, len(pairs), PACE_EVERY):
                now = time.monotonic()
                if now >= end:
                    return sent, now - t0
                if rate:
                    ahead = sent / rate - (now - t0)
                    if ahead > 0.001:
                        time.sleep(ahead)
                tail = b"%d}" % _ms()
                for sock, prefix in pairs[i : i + PACE_EVERY]:
                    sock.sendall(prefix + tail)
                sent += len(pairs[i : i + PACE_EVERY])

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.sendall(wire.DISCONNECT_PACKET)
            sock.close()
        self.socks.clear()


def publisher_main(spec: PublisherSpec, control: Connection) -> None:
    """Entry point of one publisher process: obey commands from the parent until `close`."""
    devices = Devices(spec)
    try:
        devices.connect()
        control.send(("connected", len(devices.socks)))
        while True:
            command, *args = control.recv()
            if command == "births":
                control.send(("births", devices.births(*args)))
            elif command == "heartbeats":
                sent, spent = devices.heartbeats(*args)
                control.send(("heartbeats", sent, spent))
            else:
                break
    except Exception as exc:
        control.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        devices.close()


class Publishers:
    """The parent's handle on the publisher processes (spawned, so no state of the parent leaks in)."""

    def __init__(self, host: str, port: int, devices: Sequence[tuple[str, str]], processes: int, epoch: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.controls: list[Connection] = []
        self.processes: list[Any] = []
        self._heartbeats_end = 0.0
        count = max(1, min(processes, len(devices)))
        for n in range(count):
            parent_end, child_end = ctx.Pipe()
            spec = PublisherSpec(host, port, list(devices[n::count]), epoch)
            process = ctx.Process(target=publisher_main, args=(spec, child_end), name=f"publisher-{n}", daemon=True)
            self.controls.append(parent_end)
            self.processes.append(process)

    def __enter__(self) -> "Publishers":
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for control in self.controls:
            with contextlib.suppress(OSError):
                control.send(("close",))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()  # by PID: only the processes this object started
                process.join(5)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _replies(self, expected: str, timeout: float = REPLY_TIMEOUT_S) -> list[tuple[Any, ...]]:
        replies = []
        deadline = time.monotonic() + timeout
        for control in self.controls:
            if not control.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"a publisher did not answer ({expected}) in {timeout:.0f} s")
            try:
                reply = control.recv()
            except EOFError as exc:
                raise BenchError(f"a publisher process died during {expected}") from exc
            if reply[0] != expected:
                raise BenchError(f"publisher failed during {expected}: {reply[-1]}")
            replies.append(reply)
        return replies

    def connected(self) -> int:
        return sum(r[1] for r in self._replies("connected"))

    def births(self, total_rate: float) -> int:
        for control in self.controls:
            control.send(("births", total_rate / len(self.controls)))
        return sum(r[1] for r in self._replies("births"))

    def start_heartbeats(self, start_at: float, duration: float, total_rate: float) -> None:
        per_process = total_rate / len(self.controls) if total_rate else 0.0
        self._heartbeats_end = start_at + duration
        for control in self.controls:
            control.send(("heartbeats", start_at, duration, per_process))

    def heartbeats_sent(self) -> tuple[int, float]:
        """(heartbeats sent by all, longest time one spent sending) once every publisher is done."""
        replies = self._replies("heartbeats", max(0.0, self._heartbeats_end - time.time()) + REPLY_TIMEOUT_S)
        return sum(r[1] for r in replies), max(r[2] for r in replies)


def publisher_count() -> int:
    return max(2, min(4, len(os.sched_getaffinity(0)) + 1))
