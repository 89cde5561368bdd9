"""Every service of the test stack answers, and the brokers refuse anonymous clients."""

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import aio_pika
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from core.mqtt_passwords import hash_password, upsert_password_entries
from core.settings import Settings
from stack import process
from stack.backends import Backends
from stack.platform import settings_env
from stack.process import group_members
from stack.services import REPO_ROOT, RabbitMQ, free_ports
from tests.helpers import wait_until


async def test_redis_answers_ping(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await redis.ping()
        await redis.set(f"{settings.redis_prefix}probe", "1")
    finally:
        await redis.aclose()


async def test_rabbitmq_accepts_guest_on_loopback(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        await message.ack()
        assert message.body == b"hello"


async def test_ferretdb_answers_mongo_ping(settings: Settings) -> None:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        assert (await client.admin.command("ping"))["ok"] == 1
        await client[settings.mongo_db]["probe"].insert_one({"x": 1})
        assert await client[settings.mongo_db]["probe"].count_documents({}) == 1
    finally:
        await client.close()


def mqtt_connect_code(url: str, username: str | None, password: str | None, client_id: str = "") -> int:
    """Connect with paho (TCP or WebSocket) and return the CONNACK reason code's value."""
    parsed = urlparse(url)
    transport: Literal["tcp", "websockets"] = "websockets" if parsed.scheme == "ws" else "tcp"
    # MQTT 3.1.1: the one version both brokers speak (amqtt 0.12 has no MQTT 5).
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    result: list[int] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason.value)
    assert parsed.hostname and parsed.port
    client.connect(parsed.hostname, parsed.port, keepalive=10)
    try:
        for _ in range(100):
            client.loop(timeout=0.05)
            if result:
                break
    finally:
        client.disconnect()
    assert result, f"no CONNACK from {url}"
    return result[0]


def broker_urls(stack: Backends) -> list[str]:
    urls = [stack.mosquitto_url, stack.mosquitto_ws_url]
    urls += [u for u in (stack.amqtt_url, stack.amqtt_ws_url) if u]
    return urls


def test_brokers_accept_platform_user(stack: Backends) -> None:
    for url in broker_urls(stack):
        assert mqtt_connect_code(url, stack.platform_user, stack.platform_password) == 0, url


def test_brokers_refuse_anonymous_and_wrong_password(stack: Backends) -> None:
    for url in broker_urls(stack):
        assert mqtt_connect_code(url, None, None) != 0, url
        assert mqtt_connect_code(url, stack.platform_user, "wrong-password") != 0, url


async def test_wait_until_accepts_sync_and_async_predicates() -> None:
    calls = 0

    def sync_predicate() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    async def async_predicate() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await wait_until(sync_predicate, timeout=2)
    assert await wait_until(async_predicate) == "done"
    with pytest.raises(AssertionError, match="never"):
        await wait_until(lambda: False, timeout=0.1, message="never")


async def test_reload_brokers_admits_a_new_user(stack: Backends) -> None:
    user, password = f"probe-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    client_id = f"{user}:probe"  # a restaurant's client id, which amqtt checks
    assert mqtt_connect_code(stack.mosquitto_url, user, password, client_id) != 0
    upsert_password_entries(stack.passwd_file, {user: hash_password(password)})
    stack.reload_brokers()
    for url in broker_urls(stack):

        def admitted(url: str = url) -> bool:
            return mqtt_connect_code(url, user, password, client_id) == 0

        # amqtt notices the file's new mtime on its own; Mosquitto has reloaded already.
        await wait_until(admitted, message=url)


class Collector:
    """A paho client on its own network thread that records what it receives."""

    def __init__(
        self, url: str, username: str, password: str, client_id: str, protocol: mqtt.MQTTProtocolVersion
    ) -> None:
        parsed = urlparse(url)
        assert parsed.hostname and parsed.port
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = False
        self.disconnects = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.username_pw_set(username, password)
        # list.append from paho's thread is atomic; the test only reads.
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, bytes(msg.payload)))
        self.client.on_subscribe = lambda *_args: setattr(self, "subscribed", True)
        # Counted, not read from is_connected(): paho's thread reconnects on its own after a second.
        self.client.on_disconnect = lambda *_args: setattr(self, "disconnects", self.disconnects + 1)
        self.client.connect(parsed.hostname, parsed.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_mosquitto_acl_confines_restaurants_and_lets_the_bridge_share(stack: Backends) -> None:
    secret = secrets.token_urlsafe(12)
    rid, other = f"acl-{uuid.uuid4().hex[:8]}", f"acl-{uuid.uuid4().hex[:8]}"
    upsert_password_entries(stack.passwd_file, {rid: hash_password(secret)})
    stack.reload_brokers()
    bridge = Collector(stack.mosquitto_url, stack.platform_user, stack.platform_password, "acl-bridge", mqtt.MQTTv5)
    device = Collector(stack.mosquitto_url, rid, secret, f"{rid}:tablet", mqtt.MQTTv311)
    try:
        # A group of its own: other tests' bridges (persistent sessions) share the broker.
        group = f"acl{uuid.uuid4().hex[:8]}"
        bridge.client.subscribe([(f"$share/{group}/restaurants/+/devices/+/presence", 1), ("restaurants/+/status", 1)])
        device.client.subscribe([(f"restaurants/{rid}/status", 1), (f"restaurants/{other}/status", 1)])
        await wait_until(lambda: bridge.subscribed and device.subscribed)

        # Denied publishes are acknowledged and dropped. Messages of one connection are handled in
        # order, so once "own" arrives the forbidden ones before it would have arrived too.
        device.client.publish(f"restaurants/{other}/devices/tablet/presence", b"forbidden", qos=1).wait_for_publish(5)
        device.client.publish(f"restaurants/{rid}/status", b"forbidden", qos=1).wait_for_publish(5)
        device.client.publish(f"restaurants/{rid}/devices/tablet/presence", b"own", qos=1).wait_for_publish(5)
        bridge.client.publish(f"restaurants/{other}/status", b"not-yours", qos=1).wait_for_publish(5)
        bridge.client.publish(f"restaurants/{rid}/status", b"yours", qos=1).wait_for_publish(5)

        await wait_until(lambda: (f"restaurants/{rid}/status", b"yours") in device.messages)
        await wait_until(lambda: (f"restaurants/{rid}/devices/tablet/presence", b"own") in bridge.messages)
        assert device.messages == [(f"restaurants/{rid}/status", b"yours")]
        assert device.disconnects == 0, "a denied publish cost the connection"
        assert (f"restaurants/{other}/devices/tablet/presence", b"forbidden") not in bridge.messages
        assert (f"restaurants/{rid}/status", b"forbidden") not in bridge.messages
    finally:
        bridge.close()
        device.close()


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """`make run` hands its Settings to the bridge and the API as PRESENCE_* variables."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()


async def test_stack_run_starts_the_platform_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    var_dir, output = tmp_path / "var", tmp_path / "run.out"
    with output.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stack", "run", "--free-ports", "--var-dir", str(var_dir),
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await wait_until(
            lambda: process.returncode is not None or "Press Ctrl-C" in output.read_text(),
            timeout=90,
            message="no banner",
        )
        text = output.read_text()
        assert process.returncode is None, text
        api = re.search(r"Pages and API:\s+(http://\S+)/", text)
        broker = re.search(r"MQTT:\s+(mqtt://\S+)", text)
        assert api and broker, text
        metrics = dict(re.findall(r"(\w+) metrics:\s+(http://\S+)", text))
        assert set(metrics) == {"Bridge", "Feed", "Aggregator", "Scheduler"}, text
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{api.group(1)}/healthz")).status_code == 200
            assert (await http.get(f"{api.group(1)}/ui/dashboard")).status_code == 200
            config = (await http.get(f"{api.group(1)}/ui/config.json")).json()
            ws = re.search(r"  (ws://\S+)", text)
            assert ws and config["mqtt_ws_urls"] == [ws.group(1)], "the browser is told the broker's websocket"
            for url in metrics.values():
                assert (await http.get(url)).status_code == 200, url

        credentials = json.loads((var_dir / "demo-credentials.json").read_text())
        restaurants = credentials["restaurants"]
        assert [r["restaurant_id"] for r in restaurants[:2]] == ["demo-0001", "demo-0002"]
        assert len(restaurants) == 200 and {r["group"] for r in restaurants} == {"A", "B", "C", "D"}
        assert {u["role"] for u in credentials["users"]} == {"sales", "admin"}
        first = restaurants[0]
        code = mqtt_connect_code(broker.group(1), first["restaurant_id"], first["secret"], "demo-0001:tablet")
        assert code == 0

        pids = {p.stem: int(p.read_text()) for p in (var_dir / "run").glob("*.pid")}
        assert set(pids) == {"redis", "rabbitmq", "ferretdb", "mosquitto", "bridge", "feed", "aggregator", "scheduler",
                             "api"}  # fmt: skip
        assert pids["rabbitmq"] == int((var_dir / "rabbitmq" / "rabbitmq.pid").read_text())  # beam itself
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, output.read_text()
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not list((var_dir / "run").glob("*.pid"))
    finally:
        if process.returncode is None:
            # SIGTERM first: the supervisor then stops the servers and processes it started; a SIGKILL
            # alone would leave them running after a failed assertion.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


def test_rabbitmq_stopped_while_booting_leaves_no_process(tmp_path: Path) -> None:
    port, dist_port = free_ports(2)
    rabbit = RabbitMQ(tmp_path, port, dist_port)
    rabbit.start()
    assert rabbit.process is not None
    rabbit.stop()  # still booting: the script, its helpers and beam all go
    assert rabbit.process.returncode is not None
    assert not group_members(rabbit.process.pid)


def test_free_ports_are_not_handed_out_twice_before_their_servers_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    # Six ports that are free now, as the only ones to choose from: two calls of three, with nothing
    # bound in between (as when a supervisor chooses the apps' ports, then the servers'), must not meet.
    six = free_ports(6)
    monkeypatch.delenv("PRESENCE_PORT_SLICE", raising=False)
    monkeypatch.setattr(process, "PRIVATE_PORTS", six)
    monkeypatch.setattr(process, "_HANDED_OUT", {})
    first, second = free_ports(3), free_ports(3)
    assert sorted(first + second) == sorted(six)
    with pytest.raises(OSError, match="no 1 free loopback ports"):
        free_ports(1)  # all six handed out: said so, not looped on for ever


def test_parallel_test_workers_choose_ports_from_parts_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = []
    for k in range(3):
        monkeypatch.setenv("PRESENCE_PORT_SLICE", f"{k}/3")
        parts.append(set(process.private_ports()))
        monkeypatch.setattr(process, "_HANDED_OUT", {})
        assert set(free_ports(5)) <= parts[k]
    assert not parts[0] & parts[1] and not parts[1] & parts[2] and not parts[0] & parts[2]
    assert sum(map(len, parts)) == len(process.PRIVATE_PORTS) - len(process.PRIVATE_PORTS) % 3
    for spec in ("3/3", "two/3", "1"):
        monkeypatch.setenv("PRESENCE_PORT_SLICE", spec)
        with pytest.raises(ValueError, match="PRESENCE_PORT_SLICE"):
            process.private_ports()
