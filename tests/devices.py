"""Hand-driven restaurant devices and event collectors for tests (real brokers, real RabbitMQ)."""

import asyncio
import json
import threading
import time
import uuid
from typing import Any, cast
from urllib.parse import urlsplit

import aio_pika
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.documents import Restaurant
from core.hours import DayHours, OpeningHours
from core.ids import client_id, heartbeat_topic, presence_topic, status_topic
from core.mqtt_passwords import hash_password, upsert_password_entries
from core.presence_store import STATUS_OUTBOX, PresenceStore
from core.secrets import hash_secret, new_secret
from core.settings import Settings
from tests.helpers import wait_until

ALWAYS_OPEN = OpeningHours(**{day: DayHours(open="00:00", close="00:00") for day in OpeningHours.model_fields})
ALWAYS_CLOSED = OpeningHours(**dict.fromkeys(OpeningHours.model_fields))


async def make_restaurant(
    settings: Settings, stack: Any, rid: str, hours: OpeningHours = ALWAYS_OPEN, group: str = "A"
) -> str:
    """Provision a restaurant straight into MongoDB and the brokers' password file; returns its secret."""
    secret = new_secret()
    await Restaurant(
        restaurant_id=rid, secret_hash=hash_secret(secret), mqtt_hash=hash_password(secret), group=group, hours=hours
    ).insert()
    upsert_password_entries(stack.passwd_file, {rid: hash_password(secret)})
    stack.reload_brokers()
    return secret


class Device:
    """One device session; `crash()` closes the socket without DISCONNECT so the broker sends the will."""

    def __init__(self, url: str, rid: str, secret: str, did: str = "tablet") -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.rid, self.did, self.secret = rid, did, secret
        self.client: mqtt.Client | None = None
        self.epoch = 0
        self.statuses: list[dict[str, Any]] = []

    def connect(self, epoch: int, birth: bool = True) -> None:
        self.epoch = epoch
        # No automatic reconnect: a real device reconnects with a new epoch, never with an old will.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id(self.rid, self.did), reconnect_on_failure=False
        )
        client.username_pw_set(self.rid, self.secret)
        offline = json.dumps({"state": "offline", "epoch": epoch, "ts": int(time.time() * 1000)})
        client.will_set(presence_topic(self.rid, self.did), offline, qos=1, retain=True)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        client.on_message = lambda c, u, msg: self.statuses.append(json.loads(msg.payload))
        client.connect(self.host, self.port, keepalive=5)
        client.loop_start()
        if not connected.wait(10):
            client.loop_stop()
            raise AssertionError(f"{self.rid}:{self.did} could not connect")
        self.client = client
        client.subscribe(status_topic(self.rid), qos=1)
        if birth:
            self.presence("online")

    def presence(self, state: str, **extra: Any) -> None:
        assert self.client is not None
        body = json.dumps({"state": state, "epoch": self.epoch, "ts": int(time.time() * 1000), **extra})
        self.client.publish(presence_topic(self.rid, self.did), body, qos=1, retain=True).wait_for_publish(5)

    def heartbeat(self, epoch: int | None = None) -> None:
        assert self.client is not None
        body = json.dumps({"epoch": self.epoch if epoch is None else epoch, "ts": int(time.time() * 1000)})
        self.client.publish(heartbeat_topic(self.rid, self.did), body, qos=0).wait_for_publish(5)

    def publish_raw(self, topic: str, payload: bytes, qos: int = 1) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def graceful(self) -> None:
        self.presence("offline", cause="graceful")
        self.stop()

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def abandon(self) -> None:
        """Forget a session the broker already ended (taken over): stop paho and free its sockets."""
        if self.client is not None:
            self.client.loop_stop()
            self.client._reset_sockets()
            self.client = None

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        assert self.client is not None
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        # paho's wake-up socket pair would otherwise be left to the garbage collector (ResourceWarning).
        self.client._reset_sockets()
        self.client = None


class EventTap:
    """Reads the two stream queues, as the dashboard feed and the aggregator will."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> "EventTap":
        from core.amqp import declare_topology

        self._connection = await aio_pika.connect_robust(self.settings.amqp_url)
        channel = await self._connection.channel()
        await declare_topology(channel, self.settings)
        for base in (self.settings.dashboard_queue, self.settings.aggregator_queue):
            name = self.settings.amqp_name(base)
            self.events[base] = []
            queue = await channel.get_queue(name)
            await queue.consume(self._collector(base))
        return self

    def _collector(self, base: str) -> Any:
        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                self.events[base].append(json.loads(message.body))

        return on_message

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close()

    def of(self, rid: str, kind: str | None = None, queue: str | None = None) -> list[dict[str, Any]]:
        name = queue or self.settings.dashboard_queue
        return [e for e in self.events[name] if e["restaurant_id"] == rid and (kind is None or e["type"] == kind)]

    async def wait_for(self, rid: str, kind: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.of(rid, kind)) >= count, timeout, message=f"{count} {kind} for {rid}")
        return self.of(rid, kind)


async def outbox_empty(store: PresenceStore, rid: str) -> bool:
    """Every event of the restaurant confirmed by RabbitMQ and its retained status acknowledged by the broker."""
    fields = cast(list[str], await store.redis.hkeys(store.key(rid)))
    return not any(f == STATUS_OUTBOX or f.startswith("o:") for f in fields)


async def settle_time(seconds: float = 0.3) -> None:
    """Give a pipeline the chance to do something it must not do (used only to assert absence)."""
    await asyncio.sleep(seconds)


class StatusWatcher:
    """Subscribes as the platform user to `restaurants/<rid>/status` and keeps every payload it gets."""

    def __init__(self, url: str, settings: Settings, restaurant_id: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.settings = settings
        self.topic = status_topic(restaurant_id)
        # Appended from paho's thread, read by the test: list.append is atomic, nothing else is shared.
        self.received: list[tuple[bool, dict[str, Any]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:12]}")

    def __enter__(self) -> "StatusWatcher":
        subscribed = threading.Event()
        self.client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.client.on_message = lambda c, u, msg: self.received.append((bool(msg.retain), json.loads(msg.payload)))
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "status watcher could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def last(self) -> dict[str, Any] | None:
        return self.received[-1][1] if self.received else None
