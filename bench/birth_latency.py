"""From a device's birth to its restaurant being online in the API, with the bridge and the API as processes.

Restaurants take turns: connect → birth (QoS 1, retained) → poll `GET /restaurants/{rid}/status` with a
sales token every ~5 ms until `online` → graceful offline → poll until `DISCONNECTED` → disconnect. The
first round (one birth per restaurant, which also loads its profile from MongoDB) is not counted.
"""

import http.client
import json
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from bench import wire
from bench.harness import (
    BenchError,
    api_process,
    bridge_process,
    private_servers,
    provision,
    restaurant_ids,
    scrape,
    wait_for,
)
from core.ids import client_id, presence_topic
from stack.process import LOOPBACK

logger = logging.getLogger(__name__)

POLL_EVERY_S = 0.005
GIVE_UP_S = 10.0
RESTAURANTS = 10
SALES = ("bench-sales", "bench-sales-password-not-secret")
BATCH_SUM = 'bridge_batch_seconds_sum{kind="presence"}'
BATCH_COUNT = 'bridge_batch_seconds_count{kind="presence"}'


@dataclass
class BirthResult:
    births: int
    online_ms: list[float] = field(default_factory=list)  # birth publish → API says online
    offline_ms: list[float] = field(default_factory=list)  # graceful offline publish → API says DISCONNECTED
    polls: int = 0
    get_ms: list[float] = field(default_factory=list)  # round trip of one status GET
    bridge_batch_ms: float = 0.0  # mean time the bridge spent on one presence batch, from its histogram


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


class StatusPoller:
    """One keep-alive HTTP connection to the API, reading one restaurant's status."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        self.polls = 0
        self.round_trips_ms: list[float] = []

    def status(self, rid: str) -> dict[str, Any]:
        self.polls += 1
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                self.conn.request("GET", f"/restaurants/{rid}/status", headers=self.headers)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # uvicorn closes an idle keep-alive connection after 5 s: open a new one once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
                if attempt == 2:
                    raise
        self.round_trips_ms.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise BenchError(f"GET status of {rid} answered {response.status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def until(self, rid: str, done: Any, since: float) -> float:
        """Poll until `done(status)`; milliseconds from `since` to the answer that said so."""
        while True:
            asked = time.perf_counter()
            if done(self.status(rid)):
                return (time.perf_counter() - since) * 1000
            if asked - since > GIVE_UP_S:
                raise BenchError(f"{rid} did not reach the expected status within {GIVE_UP_S:.0f} s")
            time.sleep(max(0.0, asked + POLL_EVERY_S - time.perf_counter()))

    def close(self) -> None:
        self.conn.close()


def get_token(port: int, username: str, password: str) -> str:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        form = urllib.parse.urlencode({"username": username, "password": password})
        conn.request("POST", "/auth/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"POST /auth/token answered {response.status}: {body[:200]!r}")
    return str(json.loads(body)["access_token"])


def presence(rid: str, state: str, epoch: int, packet_id: int, **extra: str) -> bytes:
    body = json.dumps({"state": state, "epoch": epoch, "ts": time.time_ns() // 1_000_000, **extra}).encode()
    return wire.publish_packet(presence_topic(rid, "tablet"), body, qos=1, retain=True, packet_id=packet_id)


def one_cycle(port: int, rid: str, secret: str, epoch: int, poller: StatusPoller) -> tuple[float, float]:
    """(ms to online, ms to DISCONNECTED) for one session of one device."""
    will = json.dumps({"state": "offline", "epoch": epoch, "ts": time.time_ns() // 1_000_000}).encode()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(wire.connect_packet(client_id(rid, "tablet"), rid, secret, presence_topic(rid, "tablet"), will))
        wire.expect_connack(sock)
        born = time.perf_counter()
        sock.sendall(presence(rid, "online", epoch, 1))
        online = poller.until(rid, lambda s: s["online"], born)
        wire.expect_puback(sock)
        leaving = time.perf_counter()
        sock.sendall(presence(rid, "offline", epoch, 2, cause="graceful"))
        offline = poller.until(rid, lambda s: not s["online"] and s["reason"] == "DISCONNECTED", leaving)
        wire.expect_puback(sock)
        sock.sendall(wire.DISCONNECT_PACKET)
    return online, offline


def birth_benchmark(births: int, keep: bool = False) -> BirthResult:
    result = BirthResult(births)
    with private_servers("birth", keep) as servers:
        ids = restaurant_ids(RESTAURANTS)
        secrets = provision(servers, ids, sales=SALES)
        settings = servers.settings("birth")
        bridge = bridge_process(settings, servers.root, "bench-bridge", "bridge", ["--instance", "bench"])
        api = api_process(settings, servers.root)
        bridge.start()
        api.start()
        try:
            bridge.wait_ready(60)
            api.wait_ready(60)
            metrics = settings.bridge_metrics_port
            wait_for(lambda: scrape(metrics).get("bridge_converged", 0) == 1, 60, "the bridge to converge")
            poller = StatusPoller(settings.api_port, get_token(settings.api_port, *SALES))
            port = servers.backends.mosquitto.port
            try:
                for rid in ids:  # warm-up: profiles loaded, connections opened
                    one_cycle(port, rid, secrets[rid], 1, poller)
                before = scrape(metrics)
                polls_before = poller.polls
                for n in range(births):
                    rid = ids[n % len(ids)]
                    online, offline = one_cycle(port, rid, secrets[rid], 2 + n // len(ids), poller)
                    result.online_ms.append(online)
                    result.offline_ms.append(offline)
                after = scrape(metrics)
                result.polls = poller.polls - polls_before
                result.get_ms = poller.round_trips_ms[polls_before:]
            finally:
                poller.close()
            count = after.get(BATCH_COUNT, 0) - before.get(BATCH_COUNT, 0)
            if count:
                result.bridge_batch_ms = 1000 * (after.get(BATCH_SUM, 0) - before.get(BATCH_SUM, 0)) / count
        finally:
            api.stop()
            bridge.stop(timeout=30)
    return result
