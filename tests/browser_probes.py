"""Probes for the browser tests: what the brokers, Redis and the feed hold, to compare with what a page shows."""

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from playwright.async_api import Page
from redis.asyncio import Redis

from core.presence_store import PresenceStore
from core.settings import Settings
from core.shards import shard_of
from core.status import DerivedStatus
from core.status_service import StatusService
from feed.stream import FeedStream

# A snapshot of 100,000 statuses handed to the dashboard page as the feed would send it, then a burst
# of 20,000 changes (every fifth id goes online); returns how long each took to reach the screen.
SYNTHETIC_FEED_JS = """async () => {
    const kinds = [[true, null, null], [false, "CLOSED", null], [false, "UNAVAILABLE", "HOLIDAY"],
                   [false, "DISCONNECTED", null]];
    const status = (i, k) => ({restaurant_id: `r-${String(i).padStart(6, "0")}`, online: kinds[k][0],
        reason: kinds[k][1], detail: kinds[k][2], since: new Date().toISOString(), until: null,
        last_seen: null, devices_connected: k === 0 ? 1 : 0, group: "ABCD"[Math.floor(i / 4) % 4]});
    const frame = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const feed = window.presenceDashboard.feed;
    const snapshot = Array.from({length: 100000}, (_, i) => status(i, i % 4));
    let t0 = performance.now();
    feed._onFrame(JSON.stringify({type: "snapshot", seq: 1000000, group: null, statuses: snapshot}));
    await frame();
    const snapshotMs = performance.now() - t0;
    t0 = performance.now();
    for (let n = 0; n < 20000; n++) {
        feed._onFrame(JSON.stringify({type: "status", seq: 1000001 + n, status: status(n * 5 % 100000, 0)}));
    }
    await frame();
    return {snapshotMs, burstMs: performance.now() - t0};
}"""


def rid_on_shard(shard: int, shards: int = 2) -> str:
    """A fresh restaurant id (Mosquitto keeps retained messages across tests) on the given broker shard."""
    while True:
        rid = f"web-{uuid.uuid4().hex[:8]}"
        if shard_of(rid, shards) == shard:
            return rid


class RetainedPresence:
    """The platform's view of a device's retained presence, read from the broker as the bridge reads it."""

    def __init__(self, url: str, settings: Settings, rid: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"restaurants/{rid}/devices/+/presence", qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.append(json.loads(msg.payload))
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("probe could not subscribe")

    def last(self) -> dict[str, Any] | None:
        return self.messages[-1] if self.messages else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def kind_of(status: DerivedStatus) -> str:
    if status.online:
        return "online"
    return {"CLOSED": "closed", "UNAVAILABLE": "unavailable"}.get(status.reason or "", "disconnected")


class Truth:
    """What the platform holds (Redis statuses, the feed's last seq) against what a dashboard page shows."""

    def __init__(self, settings: Settings) -> None:
        self.redis = Redis.from_url(settings.redis_url, decode_responses=True)
        store = PresenceStore(self.redis, settings.redis_prefix)
        self.service = StatusService(store, timedelta(seconds=settings.stale_after_s))
        self.stream = FeedStream(self.redis, settings.redis_prefix)

    async def kinds(self, rids: list[str]) -> dict[str, str]:
        statuses, _ = await self.service.current(rids)
        return {status.restaurant_id: kind_of(status) for status in statuses}

    async def sequenced(self, after: int, rid: str, online: bool) -> bool:
        """The feed gave `rid`'s change to `online` a seq greater than `after`."""
        entries = await self.stream.read_range(after + 1)
        return any(e.restaurant_id == rid and json.loads(e.status_json)["online"] is online for e in entries)

    async def shown_everything(self, page: Page, rids: list[str]) -> bool:
        """Every tile of `rids` shows the platform's status, and the page has the feed's last seq."""
        shown = await page.evaluate(
            "rids => rids.map(r => document.querySelector(`.tile[data-rid=\"${r}\"]`)?.dataset.kind ?? null)", rids
        )
        last_seq = await page.evaluate("window.presenceDashboard.feed.lastSeq")
        truth = await self.kinds(rids)
        return shown == [truth[rid] for rid in rids] and last_seq == await self.stream.current_seq()

    async def close(self) -> None:
        await self.redis.aclose()


def stack_name(shard: int) -> str:
    return ("mosquitto", "amqtt")[shard]


async def is_now(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def newer_online(probe: RetainedPresence, epoch: int) -> bool:
    last = probe.last()
    return last is not None and last["state"] == "online" and last["epoch"] > epoch


async def text_of(page: Page, selector: str) -> str:
    return (await page.text_content(selector)) or ""
