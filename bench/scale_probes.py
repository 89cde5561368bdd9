"""Probe devices of the scale benchmark: a few raw MQTT sessions whose every packet is timed.

They run beside the simulated fleet, on the same shards, as restaurants of their own (group `P`):

heartbeat  a heartbeat is sent, then Redis is polled (2 ms) until the device's `l:` field moves
crash      the socket is closed without DISCONNECT; the API is polled until DISCONNECTED, and the
           dashboard websocket (group P) is watched for the status frame
drop       the device stops sending anything, PINGREQ included; the broker's keepalive ends it
app        PINGREQs go on, heartbeats stop; the presence window ends it
"""

import asyncio
import contextlib
import http.client
import itertools
import json
import logging
import socket
import struct
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis import Redis
from websockets.asyncio.client import connect as ws_connect

from bench import wire
from bench.birth_latency import percentile
from bench.report import Row, dist_ms, dist_s, verdict
from core.ids import client_id, heartbeat_topic, presence_topic
from core.settings import Settings
from stack.process import LOOPBACK

logger = logging.getLogger(__name__)

DEVICE = "tablet"
PINGREQ = bytes([0xC0, 0])
PINGRESP = 0xD0
# Silent probes go quiet one after another over this span: Mosquitto 2.0 checks keep-alives every 6 s.
SILENCE_SPREAD_S = 6.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Probe:
    """One device on one blocking socket; packets encoded by `bench.wire`."""

    def __init__(self, broker_url: str, rid: str, secret: str) -> None:
        parts = urlsplit(broker_url)
        self.host, self.port = parts.hostname or LOOPBACK, parts.port or 1883
        self.rid, self.secret = rid, secret
        self.epoch = 0
        self.sock: socket.socket | None = None
        self.last_sent = 0.0  # time.time() of the last packet written

    def connect(self, keepalive: int) -> None:
        self.epoch += 1
        will = json.dumps({"state": "offline", "epoch": self.epoch, "ts": wall_ms()}).encode()
        topic = presence_topic(self.rid, DEVICE)
        packet = wire.connect_packet(client_id(self.rid, DEVICE), self.rid, self.secret, topic, will)
        # wire.connect_packet fixes the keepalive: patch its two bytes (after "MQTT", level and flags).
        at = packet.index(b"\x00\x04MQTT") + 8
        packet = packet[:at] + struct.pack("!H", keepalive) + packet[at + 2 :]
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(packet)
        wire.expect_connack(sock)
        self.sock = sock
        body = json.dumps({"state": "online", "epoch": self.epoch, "ts": wall_ms()}).encode()
        self._send(wire.publish_packet(presence_topic(self.rid, DEVICE), body, qos=1, retain=True))
        self._expect(wire.PUBACK)

    def heartbeat(self) -> int:
        sent = wall_ms()
        self._send(wire.publish_packet(heartbeat_topic(self.rid, DEVICE), b'{"epoch":%d,"ts":%d}' % (self.epoch, sent)))
        return sent

    def forget(self) -> None:
        """Connect again and clear the retained presence that the birth (or the will) left."""
        self.connect(keepalive=60)
        self._send(wire.publish_packet(presence_topic(self.rid, DEVICE), b"", qos=1, retain=True))
        self._expect(wire.PUBACK)
        self.close()

    def ping(self) -> int:
        """Send a PINGREQ and drain; the bytes read (on loopback the PINGRESP may already be among them)."""
        self._send(PINGREQ)
        return self.drain()

    def drain(self) -> int:
        """Read whatever the broker sent (PINGRESPs) without blocking; the number of bytes read."""
        assert self.sock is not None
        got = 0
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)  # with a timeout, recv() would wait for data first
        try:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while chunk := self.sock.recv(4096):
                    got += len(chunk)
        finally:
            self.sock.settimeout(timeout)
        return got

    def closed_by_broker(self) -> bool:
        """End of file from the broker? Reads nothing the broker would notice (no packet is sent)."""
        assert self.sock is not None
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while True:  # whatever arrived earlier (PINGRESPs) first, then end of file or nothing yet
                if self.sock.recv(4096) == b"":
                    return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(timeout)

    def crash(self) -> float:
        """Close the socket without DISCONNECT (the broker publishes the will); the time it was closed."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        return time.time()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(wire.DISCONNECT_PACKET)
            self.sock.close()
            self.sock = None

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)
        self.last_sent = time.time()

    def _expect(self, kind: int) -> None:
        assert self.sock is not None
        while True:
            got, _ = wire.read_packet(self.sock)
            if got & 0xF0 == kind:
                return
            if got & 0xF0 != PINGRESP:
                raise wire.WireError(f"expected packet {kind:#x}, got {got:#x}")


class Api:
    """One keep-alive HTTP connection to the API with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body, self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # uvicorn closed an idle keep-alive connection: one new one
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def statuses(self, ids: list[str]) -> list[dict[str, Any]]:
        code, body = self.request("POST", "/restaurants/status/query", json.dumps({"ids": ids}).encode())
        if code != 200:
            raise RuntimeError(f"POST /restaurants/status/query answered {code}: {body[:200]!r}")
        result: list[dict[str, Any]] = json.loads(body)["statuses"]
        return result

    def status(self, rid: str) -> dict[str, Any]:
        code, body = self.request("GET", f"/restaurants/{rid}/status")
        if code != 200:
            raise RuntimeError(f"GET status of {rid} answered {code}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def close(self) -> None:
        self.conn.close()


def disconnected(status: dict[str, Any]) -> bool:
    return not status["online"] and status["reason"] == "DISCONNECTED"


def wait_status(api: Api, rid: str, done: Any, timeout: float, every: float) -> float | None:
    """Poll one restaurant until `done(status)`; the time.time() of the answer that said so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(api.status(rid)):
            return time.time()
        time.sleep(every)
    return None


class DashboardWatch(threading.Thread):
    """A websocket on `/ws/dashboard?group=P`: the arrival time of every status frame, per restaurant."""

    def __init__(self, url: str) -> None:
        super().__init__(name="bench-dashboard-ws", daemon=True)
        self.url = url
        self.frames: dict[str, list[tuple[float, bool, str | None]]] = defaultdict(list)
        self.ready = threading.Event()
        self.error: str | None = None
        self._cond = threading.Condition()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._watch())
        except Exception as exc:  # reported by the benchmark, never raised in this thread
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    async def _watch(self) -> None:
        async with ws_connect(self.url, max_size=None) as ws:
            while not self._halt.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                at = time.time()
                frame = json.loads(text)
                if frame.get("type") == "snapshot":
                    self.ready.set()
                elif frame.get("type") == "status":
                    s = frame["status"]
                    with self._cond:
                        self.frames[s["restaurant_id"]].append((at, bool(s["online"]), s.get("reason")))
                        self._cond.notify_all()

    def wait_frame(self, rid: str, after: float, online: bool, timeout: float) -> float | None:
        """The arrival time of the first frame for `rid` after `after` with that `online` value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, is_online, _reason in self.frames.get(rid, []):
                    if at >= after and is_online == online:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class ProbeFigures:
    heartbeat_ms: list[float] = field(default_factory=list)  # heartbeat sent → `l:` moved in Redis
    heartbeat_bridge_ms: list[float] = field(default_factory=list)  # heartbeat sent → the bridge's write time
    heartbeat_missed: int = 0
    crash_ms: list[float] = field(default_factory=list)  # close → API says DISCONNECTED
    crash_ws_ms: list[float] = field(default_factory=list)  # close → status frame on the websocket
    crash_missed: int = 0
    ws_missed: int = 0
    drop_s: list[float] = field(default_factory=list)  # last packet → API says DISCONNECTED
    drop_missed: int = 0
    drop_broker_s: list[float] = field(default_factory=list)  # last packet → the broker closed the connection
    app_s: list[float] = field(default_factory=list)  # last heartbeat → API says DISCONNECTED
    app_missed: int = 0
    app_pings_answered: bool = True  # the silent apps' sessions stayed open (PINGRESPs kept coming)
    errors: list[str] = field(default_factory=list)


class ProbeRunner:
    """The probe threads of the steady phase; each bounded in samples and time."""

    def __init__(self, settings: Settings, redis: Redis, api_port: int, token: str,
                 secrets: dict[str, str], figures: ProbeFigures) -> None:  # fmt: skip
        self.settings = settings
        self.redis = redis
        self.api_port = api_port
        self.token = token
        self.secrets = secrets
        self.figures = figures
        self.halt = threading.Event()

    def probe(self, rid: str) -> Probe:
        from core.shards import broker_for

        return Probe(broker_for(rid, self.settings.mqtt_brokers), rid, self.secrets[rid])

    def heartbeats(self, rids: list[str], every_s: float, until: float) -> None:
        """Heartbeat → Redis, one probe at a time, a sample every `every_s` until `until` (monotonic)."""
        f = self.figures
        probes = [self.probe(rid) for rid in rids]
        try:
            for p in probes:
                p.connect(keepalive=60)
            n = 0
            while time.monotonic() < until and not self.halt.is_set():
                slot = time.monotonic() + every_s
                p = probes[n % len(probes)]
                n += 1
                key = f"{self.settings.redis_prefix}r:{p.rid}"
                before = self.redis.hget(key, f"l:{DEVICE}")
                started = time.perf_counter()
                sent = p.heartbeat()
                seen = None
                while time.perf_counter() - started < 5.0:
                    value = self.redis.hget(key, f"l:{DEVICE}")
                    if value is not None and value != before and int(value) >= sent:
                        seen = (time.perf_counter() - started) * 1000, int(value) - sent
                        break
                    time.sleep(0.002)
                if seen is None:
                    f.heartbeat_missed += 1
                else:
                    f.heartbeat_ms.append(seen[0])
                    f.heartbeat_bridge_ms.append(float(seen[1]))
                p.drain()
                time.sleep(max(0.0, slot - time.monotonic()))
        except Exception as exc:
            f.errors.append(f"heartbeat probes: {type(exc).__name__}: {exc}")
        finally:
            for p in probes:
                p.close()

    def crashes(self, rids: list[str], samples: int, watch: DashboardWatch | None, until: float) -> None:
        """TCP close → DISCONNECTED in the API and on the dashboard websocket, one sample at a time."""
        f = self.figures
        api = Api(self.api_port, self.token)
        probes = [self.probe(rid) for rid in rids]
        try:
            for n in range(samples):
                if time.monotonic() > until or self.halt.is_set():
                    break
                p = probes[n % len(probes)]
                p.connect(keepalive=60)
                if wait_status(api, p.rid, lambda s: s["online"], 15.0, 0.02) is None:
                    f.crash_missed += 1
                    p.close()
                    continue
                time.sleep(0.3)  # the online frame and events settle; the next change is the crash alone
                closed = p.crash()
                seen = wait_status(api, p.rid, disconnected, 10.0, 0.01)
                if seen is None:
                    f.crash_missed += 1
                else:
                    f.crash_ms.append((seen - closed) * 1000)
                if watch is not None:
                    frame = watch.wait_frame(p.rid, closed, online=False, timeout=10.0)
                    if frame is None:
                        f.ws_missed += 1
                    else:
                        f.crash_ws_ms.append((frame - closed) * 1000)
        except Exception as exc:
            f.errors.append(f"crash probes: {type(exc).__name__}: {exc}")
        finally:
            for p in probes:
                p.close()
            api.close()

    def silences(self, drop: list[str], app: list[str], keepalive: int, timeout: float,
                 spread_s: float = SILENCE_SPREAD_S) -> None:
        """Silent drops and silent apps; each detected when the API says DISCONNECTED.

        The probes go quiet one after another over `spread_s` (drops and apps alternately), so that a
        broker checking keep-alives on a cadence of its own (Mosquitto 2.0: every 6 s) is sampled
        across that cadence rather than at one instant of it. Until its turn a probe heartbeats as usual.
        """
        f = self.figures
        api = Api(self.api_port, self.token)
        drops, apps = [self.probe(rid) for rid in drop], [self.probe(rid) for rid in app]
        every = drops + apps
        try:
            for p in every:
                p.connect(keepalive=keepalive)
            ids = [p.rid for p in drops + apps]
            online_by = time.monotonic() + 30
            while not all(s["online"] for s in api.statuses(ids)) and time.monotonic() < online_by:
                for p in drops + apps:
                    if time.time() - p.last_sent >= keepalive / 2:
                        p.ping()
                time.sleep(0.1)
            # One never seen online is not measured (and counts as missed): read at once, its DISCONNECTED
            # was the one from before its birth, and the 100,000 run of 2026-11-27 23:16 said "goal met" on
            # 0.00 s so, with a bridge minutes behind.
            online = {s["restaurant_id"] for s in api.statuses(ids) if s["online"]}
            if len(online) < len(ids):
                f.drop_missed += sum(p.rid not in online for p in drops)
                f.app_missed += sum(p.rid not in online for p in apps)
                f.errors.append(f"silence probes: {len(ids) - len(online)} of {len(ids)} never online in 30 s; "
                                "not measured")  # fmt: skip
                drops = [p for p in drops if p.rid in online]
                apps = [p for p in apps if p.rid in online]
                ids = [p.rid for p in drops + apps]
            order = [p for pair in itertools.zip_longest(drops, apps) for p in pair if p is not None]
            start = time.monotonic()
            quiet_at = {p.rid: start + spread_s * n / max(1, len(order) - 1) for n, p in enumerate(order)}
            last: dict[str, float] = {}  # the last packet of a drop, the last heartbeat of an app
            found: dict[str, float] = {}
            closed: dict[str, float] = {}
            answered = {p.rid: 0 for p in apps}
            deadline = start + spread_s + timeout
            while len(found) < len(ids) and time.monotonic() < deadline and not self.halt.is_set():
                now = time.monotonic()
                for p in order:
                    if p.rid not in last and now >= quiet_at[p.rid]:
                        p.heartbeat()
                        last[p.rid] = p.last_sent
                    elif p.rid not in last and time.time() - p.last_sent >= keepalive / 2:
                        p.heartbeat()  # before its turn a probe is a live device
                        p.drain()
                    elif p in apps and p.rid not in found and time.time() - p.last_sent >= keepalive / 2:
                        answered[p.rid] += p.ping()  # a silent app's session stays open; ping() drains
                for p in drops:
                    if p.rid in last and p.rid not in closed and p.closed_by_broker():
                        closed[p.rid] = time.time()
                quiet = [rid for rid in ids if rid in last and rid not in found]
                for s in api.statuses(quiet) if quiet else []:
                    if disconnected(s):
                        found[s["restaurant_id"]] = time.time()
                time.sleep(0.1)
            for p in drops:
                if p.rid in closed:
                    f.drop_broker_s.append(closed[p.rid] - last[p.rid])
                if p.rid in found:
                    f.drop_s.append(found[p.rid] - last[p.rid])
                else:
                    f.drop_missed += 1
            for p in apps:
                if p.rid in found:
                    f.app_s.append(found[p.rid] - last[p.rid])
                else:
                    f.app_missed += 1
            # A PINGRESP is 2 bytes: a silent app whose session had ended would have read none lately.
            # `ping()` drains right after its PINGREQ, and on loopback the answer is often there already
            # (uncounted, that read "session kept: False" twice on 2026-11-27); the answer to the last ping
            # is read here.
            for p in apps:
                answered[p.rid] += p.drain()
            f.app_pings_answered = all(answered[p.rid] > 0 for p in apps)
        except Exception as exc:
            f.errors.append(f"silence probes: {type(exc).__name__}: {exc}")
        finally:
            for p in every:
                p.close()
            api.close()


def detection_rows(bench: str, p: ProbeFigures, keepalive_s: int, window_s: float, will_grace_s: float,
                   load: str) -> list[Row]:  # fmt: skip
    """Crash detection against its goals (issue 5): TCP close, silent drop, silent app, will → dashboard."""
    drop_goal = 1.5 * keepalive_s + 1
    # The goal counts from the will: the bridge's hold (a takeover's birth may follow its will) is in it.
    net = [v - 1000 * will_grace_s for v in p.crash_ws_ms]
    return [
        Row(bench, f"crash: TCP close → DISCONNECTED in the API ({len(p.crash_ms)} probes, polled 10 ms)",
            dist_ms(p.crash_ms), f"goal ≤ 1 s; includes the bridge's will grace {will_grace_s:.1f} s",
            verdict(bool(p.crash_ms) and max(p.crash_ms) <= 1000, f"{p.crash_missed} missed")),
        Row(bench, f"crash: silent drop (no packet; keepalive {keepalive_s} s) → DISCONNECTED",
            dist_s(p.drop_s), f"goal ≤ 1.5 × {keepalive_s} + 1 = {drop_goal:.1f} s",
            verdict(bool(p.drop_s) and max(p.drop_s) <= drop_goal, f"{p.drop_missed} missed")),
        Row(bench, "  of which: last packet → the broker closed the connection", dist_s(p.drop_broker_s),
            f"1.5 × keepalive = {1.5 * keepalive_s:.1f} s; then the will, held {will_grace_s:.1f} s", ""),
        Row(bench, "crash: silent app (pings go on, heartbeats stop) → DISCONNECTED",
            dist_s(p.app_s), f"goal ≤ window {window_s:.0f} + 2 s; session kept: {p.app_pings_answered}",
            verdict(bool(p.app_s) and max(p.app_s) <= window_s + 2, f"{p.app_missed} missed")),
        Row(bench, f"will → dashboard websocket, {load} (close → frame)", dist_ms(p.crash_ws_ms),
            f"goal p99 ≤ 300 ms; of which {1000 * will_grace_s:.0f} ms is the bridge holding every will "
            "(will_grace_s)", verdict(bool(p.crash_ws_ms) and percentile(p.crash_ws_ms, 99) <= 300,
                                      f"{p.ws_missed} frames missed")),
        Row(bench, "  the same, less the will hold", dist_ms(net), "the platform's own pipeline", ""),
    ]  # fmt: skip
