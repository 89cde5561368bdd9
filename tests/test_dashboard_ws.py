"""`WS /ws/dashboard` end to end: the feed worker and the API on real servers, a real websocket client."""

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.dashboard_hub import RESET, DashboardHub
from api.security import Principal, create_access_token
from core.amqp import EventPublisher
from core.documents import Restaurant, Role
from core.messages import utc_now
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status import DerivedStatus
from feed.consumer import FeedConsumer
from feed.documents import DashboardStatus
from feed.stream import FeedStream
from tests.devices import ALWAYS_OPEN
from tests.helpers import wait_until
from tests.test_feed import put_groups, running_feed, status_event

GROUPS = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dashboard_heartbeat_s": 0.2, "dashboard_socket_queue": 50})


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[str]:
    """The app (its lifespan already running) served by uvicorn on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started or task.done(), message="uvicorn never started")
    try:
        yield f"ws://127.0.0.1:{port}/ws/dashboard"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


@pytest.fixture
async def env(settings: Settings, server: str) -> AsyncIterator[dict[str, Any]]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    await put_groups(redis, settings, GROUPS)
    publisher = EventPublisher(settings)
    await publisher.open()
    try:
        async with running_feed(settings) as feed:
            yield {"url": server, "publisher": publisher, "feed": feed, "redis": redis,
                   "stream": FeedStream(redis, settings.redis_prefix)}  # fmt: skip
    finally:
        await publisher.close()
        await redis.aclose()


def token(settings: Settings, role: Role = Role.SALES) -> str:
    rid = "a1" if role is Role.RESTAURANT else None
    return create_access_token(settings, Principal(subject=rid or "someone", role=role, restaurant_id=rid))


class Feeder:
    """Publishes STATUS_CHANGED events with increasing ts and remembers the truth the feed must show."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.publisher: EventPublisher = env["publisher"]
        self.feed: FeedConsumer = env["feed"]
        self.at = utc_now()
        self.sent = 0

    async def send(self, rid: str, online: bool) -> None:
        self.at += timedelta(milliseconds=10)
        await self.publisher.publish(status_event(rid, online, self.at))
        self.sent += 1

    async def fed(self) -> None:
        """Wait until the feed has sequenced everything sent."""
        await wait_until(lambda: self.feed.metrics.value("sequenced") == self.sent, message=f"{self.sent} fed")


async def receive(ws: ClientConnection, skip_heartbeats: bool = True) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if not (skip_heartbeats and frame["type"] == "heartbeat"):
            return frame


async def test_snapshot_then_live_updates_with_increasing_seq(settings: Settings, env: dict[str, Any]) -> None:
    feeder = Feeder(env)
    await feeder.send("a1", True)
    await feeder.send("b1", False)
    await feeder.fed()
    async with connect(f"{env['url']}?token={token(settings)}") as ws:
        snapshot = await receive(ws)
        assert (snapshot["type"], snapshot["seq"], snapshot["group"]) == ("snapshot", 2, None)
        by_id = {s["restaurant_id"]: s for s in snapshot["statuses"]}
        assert (by_id["a1"]["online"], by_id["a1"]["group"]) == (True, "A")
        assert (by_id["b1"]["online"], by_id["b1"]["reason"], by_id["b1"]["group"]) == (False, "DISCONNECTED", "B")
        await feeder.send("a1", False)
        await feeder.send("a2", True)
        first, second = await receive(ws), await receive(ws)
        assert (first["type"], first["seq"], first["status"]["restaurant_id"], first["status"]["online"]) == (
            "status", 3, "a1", False
        )  # fmt: skip
        assert (second["seq"], second["status"]["restaurant_id"], second["status"]["group"]) == (4, "a2", "A")
        beat = await receive(ws, skip_heartbeats=False)
        assert beat == {"type": "heartbeat", "seq": 4}


async def test_reconnect_with_since_gets_exactly_the_missed_ones(settings: Settings, env: dict[str, Any]) -> None:
    feeder = Feeder(env)
    await feeder.send("a1", True)
    await feeder.fed()
    url = f"{env['url']}?token={token(settings)}"
    async with connect(url) as ws:
        last = (await receive(ws))["seq"]
    for i in range(7):  # while no dashboard is connected
        await feeder.send(random.choice(list(GROUPS)), i % 2 == 0)
    await feeder.fed()
    async with connect(f"{url}&since={last}") as ws:
        missed = [await receive(ws) for _ in range(7)]
        assert [f["type"] for f in missed] == ["status"] * 7
        assert [f["seq"] for f in missed] == list(range(last + 1, last + 8))
        await feeder.send("b2", True)
        live = await receive(ws)
        assert (live["type"], live["seq"], live["status"]["restaurant_id"]) == ("status", last + 8, "b2")
    async with connect(f"{url}&since={last + 8}") as ws:  # up to date: nothing but heartbeats
        assert await receive(ws, skip_heartbeats=False) == {"type": "heartbeat", "seq": last + 8}


async def test_since_too_old_or_ahead_gets_reset_then_snapshot(settings: Settings, env: dict[str, Any]) -> None:
    feeder = Feeder(env)
    for rid in ("a1", "a2", "b1", "a1", "b2"):
        await feeder.send(rid, True)
    await feeder.fed()
    # The stream keeps a bounded history; trim it as MAXLEN would have after many more changes.
    await env["redis"].xtrim(env["stream"].keys.stream, minid="4-0", approximate=False)
    url = f"{env['url']}?token={token(settings)}"
    for since in (2, 99):
        async with connect(f"{url}&since={since}&group=A") as ws:
            reset = await receive(ws)
            assert reset["type"] == "reset" and reset["reason"]
            snapshot = await receive(ws)
            assert (snapshot["type"], snapshot["seq"], snapshot["group"]) == ("snapshot", 5, "A")
            assert sorted(s["restaurant_id"] for s in snapshot["statuses"]) == ["a1", "a2"]
    async with connect(f"{url}&since=3") as ws:  # 4 and 5 are still kept
        assert [(await receive(ws))["seq"] for _ in range(2)] == [4, 5]


async def test_group_filter_and_heartbeats_advance_past_other_groups(settings: Settings, env: dict[str, Any]) -> None:
    feeder = Feeder(env)
    await feeder.send("a1", True)
    await feeder.send("b1", True)
    await feeder.fed()
    async with connect(f"{env['url']}?token={token(settings, Role.ADMIN)}&group=B") as ws:
        snapshot = await receive(ws)
        assert (snapshot["seq"], snapshot["group"]) == (2, "B")
        assert [s["restaurant_id"] for s in snapshot["statuses"]] == ["b1"]
        await feeder.send("a2", False)
        await feeder.send("b2", False)
        await feeder.send("a1", False)
        live = await receive(ws)
        assert (live["seq"], live["status"]["restaurant_id"]) == (4, "b2")
        await feeder.fed()
        beat = await wait_until(lambda: _heartbeat_at(ws, 5), message="a heartbeat at seq 5")
        assert beat == {"type": "heartbeat", "seq": 5}


async def _heartbeat_at(ws: ClientConnection, seq: int) -> dict[str, Any] | None:
    frame = await receive(ws, skip_heartbeats=False)
    assert frame["type"] == "heartbeat", f"nothing but heartbeats expected, got {frame}"
    return frame if frame["seq"] == seq else None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", 4401),
        ("token=not-a-jwt", 4401),
        ("token={restaurant}", 4403),
        ("token={sales}&since=-1", 4400),
        ("token={sales}&since=abc", 4400),
        ("token={sales}&group=" + "x" * 65, 4400),
    ],
)
async def test_refusals_have_close_codes(settings: Settings, env: dict[str, Any], query: str, code: int) -> None:
    query = query.format(restaurant=token(settings, Role.RESTAURANT), sales=token(settings))
    async with connect(f"{env['url']}?{query}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    assert closed.value.rcvd.reason


async def test_the_socket_closes_when_its_token_expires(settings: Settings, env: dict[str, Any]) -> None:
    short = create_access_token(settings.model_copy(update={"token_ttl_s": 2}), Principal("someone", Role.SALES))
    async with connect(f"{env['url']}?token={short}", max_size=None) as ws:
        assert (await receive(ws))["type"] == "snapshot"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert "expired" in closed.value.rcvd.reason


async def test_clients_connecting_during_a_burst_miss_nothing_and_get_nothing_twice(
    settings: Settings, env: dict[str, Any]
) -> None:
    feeder = Feeder(env)
    total = 120
    url = f"{env['url']}?token={token(settings)}"
    truth: dict[int, tuple[str, bool]] = {}

    async def burst() -> None:
        for i in range(total):
            rid, online = random.choice(list(GROUPS)), random.random() < 0.5
            await feeder.send(rid, online)
            truth[i + 1] = (rid, online)
            if i % 15 == 0:
                await asyncio.sleep(0.02)  # let clients connect in the middle of it

    async def client(delay: float) -> tuple[int, dict[str, bool], dict[str, bool], list[int]]:
        await asyncio.sleep(delay)
        async with connect(url, max_size=None) as ws:
            snapshot = await receive(ws)
            at_snapshot = {s["restaurant_id"]: s["online"] for s in snapshot["statuses"]}
            state, seqs, last = dict(at_snapshot), [], snapshot["seq"]
            while last < total:
                frame = await receive(ws)
                assert frame["type"] == "status", frame
                seqs.append(last := frame["seq"])
                state[frame["status"]["restaurant_id"]] = frame["status"]["online"]
            return snapshot["seq"], at_snapshot, state, seqs

    feeding = asyncio.create_task(burst())
    results = await asyncio.gather(*(client(i * 0.05) for i in range(8)))
    await feeding

    def truth_at(seq: int) -> dict[str, bool]:
        return {rid: online for n, (rid, online) in sorted(truth.items()) if n <= seq}

    for start, at_snapshot, state, seqs in results:
        assert at_snapshot == truth_at(start), f"snapshot at {start} is not the state at {start}"
        assert seqs == list(range(start + 1, total + 1)), f"gap or duplicate after the snapshot at {start}"
        assert state == truth_at(total)


async def test_a_socket_that_falls_behind_is_reset(settings: Settings, env: dict[str, Any], app: FastAPI) -> None:
    hub: DashboardHub = app.state.dashboard_hub
    await hub.ensure_started()
    sub, _ = hub.snapshot(None)  # subscribed, never read: a client that stopped reading
    feeder = Feeder(env)
    for i in range(settings.dashboard_socket_queue + 5):
        await feeder.send("a1", i % 2 == 0)
    await feeder.fed()
    await wait_until(lambda: sub not in hub.subscribers, message="the slow socket dropped")
    assert sub.queue.qsize() == 1 and sub.queue.get_nowait() is RESET
    assert "slow" in sub.reset_reason


async def test_a_group_change_moves_the_tile_on_every_dashboard(
    settings: Settings, env: dict[str, Any], app: FastAPI
) -> None:
    # A group change is not a status change, so the feed said nothing of it: a dashboard filtered by
    # group kept the tile in the old group until the restaurant's next transition.
    rid = "moving"
    await Restaurant(restaurant_id=rid, secret_hash="-", mqtt_hash="-", group="A", hours=ALWAYS_OPEN).insert()
    await put_groups(env["redis"], settings, {rid: "A"})
    online = status_event(rid, True)
    await PresenceStore(env["redis"], settings.redis_prefix).restore_statuses(
        {rid: DerivedStatus.model_validate(online.data)}
    )  # what the bridge committed before it published the event
    await env["publisher"].publish(online)
    await wait_until(lambda: env["feed"].metrics.value("sequenced") == 1, message="the status was not fed")
    await wait_until(lambda: _cached_group(rid), message="the cold cache never got the status")
    url = f"{env['url']}?token={token(settings, Role.ADMIN)}"
    async with connect(f"{url}&group=A") as in_a, connect(f"{url}&group=B") as in_b, connect(url) as everyone:
        assert [s["restaurant_id"] for s in (await receive(in_a))["statuses"]] == [rid]
        assert (await receive(in_b))["statuses"] == []
        await receive(everyone)
        await _change_profile(settings, env, rid, {"group": "B"})
        for ws in (in_a, in_b, everyone):  # group A's dashboard too: it sees the tile leave
            frame = await receive(ws)
            assert (frame["seq"], frame["status"]["restaurant_id"], frame["status"]["group"]) == (2, rid, "B")
            assert frame["status"]["online"] is True  # the status itself did not change
    async with connect(f"{url}&group=A") as in_a, connect(f"{url}&group=B") as in_b:
        assert (await receive(in_a))["statuses"] == []
        assert [(s["restaurant_id"], s["group"]) for s in (await receive(in_b))["statuses"]] == [(rid, "B")]
    assert await _cached_group(rid) == "B"  # what an API process that starts later loads
    reloaded = DashboardHub(env["redis"], settings)
    await reloaded._load()
    assert reloaded.statuses[rid].group == "B"
    await _change_profile(settings, env, rid, {"timezone": "UTC"})  # the group left alone moves nothing
    assert await env["stream"].current_seq() == 2


async def _change_profile(settings: Settings, env: dict[str, Any], rid: str, body: dict[str, str]) -> None:
    """`PATCH /restaurants/{rid}` as an admin, through the served app."""
    base = env["url"].replace("ws://", "http://").removesuffix("/ws/dashboard")
    async with httpx.AsyncClient(base_url=base) as http:
        headers = {"Authorization": f"Bearer {token(settings, Role.ADMIN)}"}
        response = await http.patch(f"/restaurants/{rid}", json=body, headers=headers)
    assert response.status_code == 200, response.text


async def _cached_group(rid: str) -> str | None:
    doc = await DashboardStatus.get(rid)
    return None if doc is None else doc.group
