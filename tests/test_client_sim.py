"""The device simulator against real brokers: protocol, failure modes, backoff, ground truth, CLI."""

import asyncio
import itertools
import json
import random
import secrets
import socket
import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from client_sim import RestaurantCredential, SimConfig, Simulator
from client_sim.backoff import Backoff, backoff_ceiling
from client_sim.brokers import parse_broker_url
from client_sim.context import DeviceState
from client_sim.credentials import load_credentials
from client_sim.device import SimDevice
from client_sim.epochs import EPOCH_ORIGIN_MS, EpochCounter, wall_ms
from client_sim.ground_truth import expected_connected, read_events
from core.errors import ConfigError
from core.messages import DeviceState as DeviceState_
from core.mqtt_passwords import hash_password, upsert_password_entries
from core.presence_rule import heartbeat_accepted, supersedes
from core.settings import Settings
from core.shards import broker_for
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]


def broker_urls(stack: Any, name: str) -> tuple[str, str]:
    """(URL the devices use, TCP URL of the same broker for the platform's watcher)."""
    urls = {
        "mosquitto": (stack.mosquitto_url, stack.mosquitto_url),
        "mosquitto-ws": (stack.mosquitto_ws_url, stack.mosquitto_url),
        "amqtt": (stack.amqtt_url, stack.amqtt_url),
        "amqtt-ws": (stack.amqtt_ws_url, stack.amqtt_url),
    }[name]
    if urls[0] is None:
        pytest.skip("amqtt is not part of this stack")
    return urls


async def make_restaurants(stack: Any, count: int) -> list[RestaurantCredential]:
    tag = uuid.uuid4().hex[:8]
    creds = [RestaurantCredential(f"sim-{tag}-{i}", secrets.token_urlsafe(12)) for i in range(count)]
    upsert_password_entries(stack.passwd_file, {c.restaurant_id: hash_password(c.secret) for c in creds})
    await asyncio.to_thread(stack.reload_brokers)
    return creds


class Watcher:
    """The platform's side: a subscriber to everything under the test's restaurants."""

    def __init__(self, url: str, settings: Settings, rids: list[str]) -> None:
        self.address = parse_broker_url(url)
        self.rids = rids
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append((message.topic, json.loads(message.payload)))  # list.append is atomic

    async def __aenter__(self) -> "Watcher":
        self.client.connect(self.address.host, self.address.port)
        self.client.loop_start()
        self.client.subscribe([(f"restaurants/{rid}/devices/#", 1) for rid in self.rids])
        assert await asyncio.to_thread(self._subscribed.wait, 10), "watcher not subscribed"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def of(self, device: SimDevice, kind: str) -> list[dict[str, Any]]:
        topic = f"restaurants/{device.rid}/devices/{device.did}/{kind}"
        return [payload for t, payload in list(self.messages) if t == topic]

    def last_presence(self, device: SimDevice) -> dict[str, Any] | None:
        presence = self.of(device, "presence")
        return presence[-1] if presence else None

    def saw(self, device: SimDevice, state: str, epoch: int) -> bool:
        return any(p["state"] == state and p["epoch"] == epoch for p in self.of(device, "presence"))

    def beating(self, device: SimDevice) -> bool:
        """A heartbeat of the device's current epoch arrived."""
        return any(h["epoch"] == device.epoch for h in self.of(device, "heartbeat"))


def config(url: str, tmp_path: Path, **overrides: Any) -> SimConfig:
    values: dict[str, Any] = {
        "brokers": [url], "heartbeat_interval_s": 0.3, "truth_path": tmp_path / "truth.jsonl", "seed": 7,
        "backoff_base_s": 0.05, "backoff_cap_s": 0.5, "graceful_timeout_s": 3.0,
    }
    values.update(overrides)
    return SimConfig(**values)


def events_of(sim: Simulator, device: SimDevice | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    sim.truth.flush()
    assert sim.config.truth_path is not None
    return [
        e for e in read_events(sim.config.truth_path)
        if (device is None or (e["rid"], e["did"]) == (device.rid, device.did)) and (kind is None or e["event"] == kind)
    ]


def connected(sim: Simulator, count: int) -> bool:
    return sim.snapshot()["connected"] == count


@pytest.mark.parametrize("broker", ["mosquitto", "mosquitto-ws", "amqtt", "amqtt-ws"])
async def test_birth_heartbeats_and_graceful_offline(stack: Any, settings: Settings, tmp_path: Path,
                                                     broker: str) -> None:
    url, watch_url = broker_urls(stack, broker)
    creds = await make_restaurants(stack, 2)
    rids = [c.restaurant_id for c in creds]
    async with Watcher(watch_url, settings, rids) as watcher:
        sim = Simulator(config(url, tmp_path, devices_per_restaurant=2), creds)
        async with sim:
            sim.start_all()
            assert await sim.wait_connected(timeout=10), "devices did not connect"
            for device in sim.devices:
                await wait_until(partial(watcher.saw, device, "online", device.epoch), message="no birth")
                await wait_until(partial(watcher.beating, device), message="no heartbeat with the connection's epoch")
            epochs = {(d.rid, d.did): d.epoch for d in sim.devices}
        for device in sim.devices:
            epoch = epochs[(device.rid, device.did)]
            await wait_until(partial(watcher.saw, device, "offline", epoch), message="no graceful offline")
            births = [p for p in watcher.of(device, "presence") if p["state"] == "online"]
            offline = [p for p in watcher.of(device, "presence") if p["state"] == "offline"]
            # A will would carry the connect-time ts, before the birth; the graceful one comes after.
            assert [p["epoch"] for p in births] == [epoch] and all(p["ts"] >= births[0]["ts"] for p in offline)
            assert [p.get("cause") for p in offline] == ["graceful"]  # what tells it from the will
            assert {h["epoch"] for h in watcher.of(device, "heartbeat")} == {epoch}
    events = read_events(tmp_path / "truth.jsonl")
    for device in sim.devices:
        kinds = [e["event"] for e in events if (e["rid"], e["did"]) == (device.rid, device.did)]
        for kind in ("connect_attempt", "connack", "birth_sent", "heartbeat", "heartbeat_last", "graceful_offline"):
            assert kind in kinds
    assert all(e["rc"] == 0 for e in events if e["event"] == "connack")
    assert not [e for e in events if e["event"] == "unexpected_message"], "the broker leaked other topics"
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    stopping = min(e["ts"] for e in events if e["event"] == "graceful_offline")
    assert expected_connected(events, stopping - 1, 120) == set(rids)
    assert expected_connected(events, wall_ms() + 1, 120) == set()


@pytest.mark.parametrize("broker", ["mosquitto", "mosquitto-ws", "amqtt"])
async def test_crash_takeover_and_flap(stack: Any, settings: Settings, tmp_path: Path, broker: str) -> None:
    url, watch_url = broker_urls(stack, broker)
    creds = await make_restaurants(stack, 3)
    async with Watcher(watch_url, settings, [c.restaurant_id for c in creds]) as watcher:
        sim = Simulator(config(url, tmp_path), creds)
        async with sim:
            sim.start_all()
            await wait_until(lambda: connected(sim, 3))
            crashed, taken, flapped = sim.devices
            for device in sim.devices:
                await wait_until(partial(watcher.saw, device, "online", device.epoch))

            first = crashed.epoch
            assert crashed.crash() and crashed.state is DeviceState.DOWN
            await wait_until(lambda: watcher.saw(crashed, "offline", first), message="no will after a crash")
            will = watcher.last_presence(crashed)
            assert will is not None and will["ts"] <= watcher.of(crashed, "presence")[0]["ts"]  # set at CONNECT
            assert "cause" not in will
            assert crashed.start("restart")
            await wait_until(lambda: crashed.epoch > first and watcher.saw(crashed, "online", crashed.epoch))

            old = taken.epoch
            assert taken.takeover()
            new = taken.epoch
            assert new > old
            await wait_until(lambda: watcher.saw(taken, "online", new) and connected(sim, 3))
            await wait_until(partial(watcher.beating, taken))
            assert taken.epoch == new, "the taken-over session must not fight back"
            assert not watcher.saw(taken, "offline", new)
            assert len(events_of(sim, taken, "connect_attempt")) == 2

            before = flapped.epoch
            assert flapped.flap()
            await wait_until(lambda: watcher.saw(flapped, "offline", before), message="no will after a flap")
            await wait_until(lambda: flapped.epoch > before and watcher.saw(flapped, "online", flapped.epoch))
            kinds = [e["event"] for e in events_of(sim, flapped)]
            assert kinds.index("flap") < kinds.index("connection_lost") < kinds.index("reconnect_backoff")

            events = events_of(sim)
            now = wall_ms()
            assert expected_connected(events, now, 120) == {c.restaurant_id for c in creds}
            crash_ts = events_of(sim, crashed, "crash")[0]["ts"]
            assert crashed.rid not in expected_connected(events, crash_ts, 120)


async def test_silent_app_keeps_its_session(stack: Any, settings: Settings, tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 1)
    async with Watcher(stack.mosquitto_url, settings, [creds[0].restaurant_id]) as watcher:
        sim = Simulator(config(stack.mosquitto_url, tmp_path, keepalive_s=2, heartbeat_interval_s=0.2), creds)
        async with sim:
            sim.start_all()
            await wait_until(lambda: connected(sim, 1))
            device = sim.devices[0]
            await wait_until(lambda: len(watcher.of(device, "heartbeat")) >= 2)
            assert device.go_silent()
            silent_from = wall_ms()
            # Longer than the broker's 1.5 × keepalive: only PINGREQs keep the session open now.
            await asyncio.sleep(4)
            assert device.state is DeviceState.CONNECTED
            assert watcher.of(device, "presence")[-1]["state"] == "online"
            assert not [h for h in watcher.of(device, "heartbeat") if h["ts"] > silent_from]
            events = events_of(sim)
            assert device.rid in expected_connected(events, wall_ms(), 120)
            assert device.rid not in expected_connected(events, wall_ms(), 2)
            assert device.end_silent()
            await wait_until(lambda: [h for h in watcher.of(device, "heartbeat") if h["ts"] > silent_from])
            assert {h["epoch"] for h in watcher.of(device, "heartbeat")} == {device.epoch}


async def test_epochs_grow_across_reconnects_and_runs(stack: Any, tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 1)
    seen: list[int] = []

    async def flap_twice(sim: Simulator) -> None:
        device = sim.devices[0]
        for _ in range(2):
            await wait_until(lambda: connected(sim, 1))
            seen.append(device.epoch)
            device.flap()
            await wait_until(lambda: device.epoch != seen[-1])
        await wait_until(lambda: connected(sim, 1))

    for run in range(2):  # a second Simulator is what a restarted process would be
        async with Simulator(config(stack.mosquitto_url, tmp_path / str(run)), creds) as sim:
            sim.start_all()
            await flap_twice(sim)
    assert seen == sorted(set(seen)) and len(seen) == 4
    assert abs(seen[-1] - (wall_ms() - EPOCH_ORIGIN_MS)) < 60_000  # milliseconds since 2020


async def test_backoff_grows_with_jitter_and_never_spins(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: every connect is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    creds = [RestaurantCredential(f"nobody-{i}", "x") for i in range(4)]
    sim = Simulator(config(f"mqtt://127.0.0.1:{port}", tmp_path, backoff_base_s=0.02, backoff_cap_s=0.32), creds)
    async with sim:
        sim.start_all()
        await wait_until(lambda: all(len(events_of(sim, d, "reconnect_backoff")) >= 7 for d in sim.devices),
                         timeout=30, interval=0.2)
    delays_by_device = []
    for device in sim.devices:
        backoffs = events_of(sim, device, "reconnect_backoff")
        assert [e["attempt"] for e in backoffs] == list(range(1, len(backoffs) + 1))
        for event in backoffs:
            assert 0 <= event["delay"] <= backoff_ceiling(event["attempt"] - 1, 0.02, 0.32) + 0.001
        attempts = events_of(sim, device, "connect_attempt")
        gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(attempts)]
        assert all(gap >= 1000 * d["delay"] - 5 for gap, d in zip(gaps, backoffs, strict=False))
        delays_by_device.append(tuple(e["delay"] for e in backoffs[:7]))
    assert len(set(delays_by_device)) == len(delays_by_device), "no jitter between devices"


def test_backoff_statistics() -> None:
    draws = {attempt: [] for attempt in range(8)}  # type: dict[int, list[float]]
    for seed in range(400):
        backoff = Backoff(0.5, 30.0, random.Random(seed))
        for attempt in range(8):
            draws[attempt].append(backoff.next_delay())
    means = [sum(values) / len(values) for values in draws.values()]
    ceilings = [backoff_ceiling(attempt, 0.5, 30.0) for attempt in range(8)]
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30]
    for mean, ceiling, values in zip(means, ceilings, draws.values(), strict=True):
        assert max(values) <= ceiling and 0.4 * ceiling < mean < 0.6 * ceiling  # full jitter: uniform
    assert all(a < b for a, b in itertools.pairwise(means[:6]))  # grows until the cap


async def test_refused_credentials_back_off(stack: Any, tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 1)
    wrong = [RestaurantCredential(creds[0].restaurant_id, "not-the-secret")]
    sim = Simulator(config(stack.mosquitto_url, tmp_path), wrong)
    async with sim:
        sim.start_all()
        await wait_until(lambda: len(events_of(sim, kind="reconnect_backoff")) >= 3, timeout=20)
    connacks = events_of(sim, kind="connack")
    assert connacks and all(e["rc"] != 0 for e in connacks)
    assert not events_of(sim, kind="birth_sent")


async def test_devices_receive_their_retained_status(stack: Any, settings: Settings, tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 1)
    rid = creds[0].restaurant_id
    status = {"restaurant_id": rid, "online": False, "reason": "CLOSED", "devices_connected": 0}
    async with Watcher(stack.mosquitto_url, settings, [rid]) as watcher:
        watcher.client.publish(f"restaurants/{rid}/status", json.dumps(status), qos=1, retain=True).wait_for_publish(5)
        sim = Simulator(config(stack.mosquitto_url, tmp_path, devices_per_restaurant=2), creds)
        async with sim:
            sim.start_all()
            await wait_until(lambda: all(d.last_status == status for d in sim.devices))
            update = {**status, "online": True, "reason": None, "devices_connected": 2}
            watcher.client.publish(f"restaurants/{rid}/status", json.dumps(update), qos=1, retain=True)
            await wait_until(lambda: all(d.last_status == update for d in sim.devices))
        watcher.client.publish(f"restaurants/{rid}/status", b"", qos=1, retain=True).wait_for_publish(5)
    received = [e for e in read_events(tmp_path / "truth.jsonl") if e["event"] == "status_received"]
    assert [e["payload"] for e in received if e["did"] == "dev-1"] == [status, update]


async def test_storm_over_two_shards(stack: Any, tmp_path: Path) -> None:
    second = stack.amqtt_url or stack.mosquitto_ws_url
    brokers = [stack.mosquitto_url, second]
    creds = await make_restaurants(stack, 40)
    sim = Simulator(config(stack.mosquitto_url, tmp_path, brokers=brokers, scenario="storm", ramp_s=0.5,
                           duration_s=3.0), creds)
    for device in sim.devices:
        assert device.broker.url == broker_for(device.rid, brokers)
    assert {d.broker.url for d in sim.devices} == set(brokers)
    stats = await sim.run()
    assert stats.births == 40 and stats.connect_failures == 0
    assert all(d.state is DeviceState.STOPPED for d in sim.devices)
    events = read_events(tmp_path / "truth.jsonl")
    births = [e["ts"] for e in events if e["event"] == "birth_sent"]
    assert max(births) - min(births) < 3000
    assert expected_connected(events, wall_ms(), 120) == set()


async def test_cli_churn_run_stops_by_itself(stack: Any, settings: Settings, tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 6)
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"restaurants": [
        {"restaurant_id": c.restaurant_id, "secret": c.secret, "group": "A"} for c in creds], "users": []}))
    truth = tmp_path / "truth.jsonl"
    args = ["--credentials", str(credentials), "--restaurants", "5", "--devices", "2",
            "--broker", stack.mosquitto_url, "--scenario", "churn", "--churn-rate", "10", "--duration", "4",
            "--ramp", "0.5", "--heartbeat-interval", "0.3", "--downtime", "0.2:0.6", "--silent", "0.3:1",
            "--backoff-base", "0.05", "--backoff-cap", "0.5", "--seed", "3", "--truth", str(truth), "--quiet"]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client_sim", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - started < 30
    summary = json.loads(stdout)
    assert summary["devices"] == 10 and sum(summary["actions"].values()) > 10
    events = read_events(truth)
    assert {e["rid"] for e in events if e["rid"]} == {c.restaurant_id for c in creds[:5]}
    kinds = {e["event"] for e in events}
    assert {"crash", "takeover", "silent_start", "flap", "graceful_offline", "reconnect_backoff"} <= kinds
    assert expected_connected(events, events[-1]["ts"] + 1, 120) == set()


def wire_connected(messages: list[tuple[float, str, dict[str, Any]]], at_ms: float, window_ms: float
                   ) -> tuple[set[str], list[float]]:
    """What a correct platform derives from the broker's messages: (connected rids, last_seen of each)."""
    devices: dict[tuple[str, str], tuple[tuple[int, DeviceState_], float]] = {}
    for arrived, topic, payload in messages:
        if arrived > at_ms:
            break
        _, rid, _, did, kind = topic.split("/")
        current = devices.get((rid, did))
        if kind == "presence":
            new = (payload["epoch"], DeviceState_(payload["state"]))
            if supersedes(new, current[0] if current else None):
                devices[(rid, did)] = (new, arrived if new[1] is DeviceState_.ONLINE else 0.0)
        elif current and heartbeat_accepted(payload["epoch"], current[0]) and payload["epoch"] == current[0][0]:
            devices[(rid, did)] = (current[0], arrived)
    live = {key: seen for key, ((_, state), seen) in devices.items() if state is DeviceState_.ONLINE}
    return {rid for (rid, _), seen in live.items() if at_ms - seen <= window_ms}, list(live.values())


async def test_ground_truth_matches_what_the_broker_carried(stack: Any, settings: Settings,
                                                            tmp_path: Path) -> None:
    creds = await make_restaurants(stack, 10)
    window_ms = 1000
    async with Watcher(stack.mosquitto_url, settings, [c.restaurant_id for c in creds]) as watcher:
        arrivals: list[tuple[float, str, dict[str, Any]]] = []
        watcher.client.on_message = lambda _c, _u, m: arrivals.append(
            (time.time() * 1000, m.topic, json.loads(m.payload)))
        sim = Simulator(config(stack.mosquitto_url, tmp_path, scenario="churn", churn_rate=4, duration_s=8,
                               ramp_s=0.5, heartbeat_interval_s=0.2, silent_s=(1.2, 2.0),
                               downtime_s=(0.3, 1.0)), creds)
        await sim.run()
        await wait_until(lambda: arrivals and time.time() * 1000 - arrivals[-1][0] > 300)
    events = read_events(tmp_path / "truth.jsonl")
    quiet_kinds = {"heartbeat", "status_received", "reconnect_backoff", "connect_attempt", "run_start"}
    changes = [e["ts"] for e in events if e["event"] not in quiet_kinds]
    compared = 0
    start, end = events[0]["ts"] + 1000, events[-1]["ts"]
    for at_ms in range(start, end, 50):
        if any(abs(ts - at_ms) < 80 for ts in changes):
            continue  # the broker's copy of a change arrives a few ms after the device logged it
        on_wire, last_seen = wire_connected(arrivals, at_ms, window_ms)
        if any(abs(at_ms - seen - window_ms) < 80 for seen in last_seen):
            continue  # a heartbeat deadline: the same few ms either way
        assert expected_connected(events, at_ms, window_ms / 1000) == on_wire, f"at {at_ms}"
        compared += 1
    assert compared > 20
    assert sum(sim.scenario.actions.values()) > 10


def test_expected_connected_replays_the_log() -> None:
    def ev(ts: int, event: str, epoch: int, did: str = "d", **fields: Any) -> dict[str, Any]:
        return {"ts": ts, "event": event, "rid": "r", "did": did, "epoch": epoch, **fields}

    events = [
        ev(0, "connect_attempt", 1), ev(10, "birth_sent", 1), ev(20, "heartbeat", 1, run="start"),
        ev(200_000, "heartbeat_last", 1, count=7), ev(200_001, "silent_start", 1),
        ev(400_000, "takeover", 2, old_epoch=1), ev(400_010, "birth_sent", 2),
        ev(500_000, "crash", 2), ev(500_000, "birth_sent", 5, did="e"), ev(501_000, "graceful_offline", 5, did="e"),
    ]
    assert expected_connected(events, 5, 120) == set()
    assert expected_connected(events, 150_000, 120) == {"r"}  # heartbeats running between the edges
    assert expected_connected(events, 320_000, 120) == {"r"}  # silent, still inside the window
    assert expected_connected(events, 320_002, 120) == set()  # silent for more than 120 s
    assert expected_connected(events, 400_005, 120) == set()  # taken over, new birth not yet sent
    assert expected_connected(events, 400_020, 120) == {"r"}
    assert expected_connected(events, 500_500, 120) == {"r"}  # device d crashed, device e is up
    assert expected_connected(events, 501_001, 120) == set()


def test_epochs_strictly_increase() -> None:
    counter = EpochCounter()
    epochs = [counter.next() for _ in range(1000)]
    assert all(b > a for a, b in itertools.pairwise(epochs))
    assert EpochCounter(last=epochs[-1] + 10**6).next() == epochs[-1] + 10**6 + 1  # clock stepped back


def test_credentials_and_broker_urls(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"restaurants": [{"restaurant_id": f"r{i}", "secret": "s"} for i in range(5)]}))
    assert [c.restaurant_id for c in load_credentials(path, 2, skip=1)] == ["r1", "r2"]
    with pytest.raises(ConfigError):
        load_credentials(path, 9)
    path.write_text(json.dumps({"restaurants": [{"restaurant_id": "bad id", "secret": "s"}]}))
    with pytest.raises(ConfigError):
        load_credentials(path)
    with pytest.raises(ConfigError):
        load_credentials(tmp_path / "missing.json")
    ws = parse_broker_url("ws://127.0.0.1:9001")
    assert (ws.transport, ws.port, ws.path) == ("websockets", 9001, "/mqtt")
    with pytest.raises(ConfigError):
        parse_broker_url("http://127.0.0.1:1")
