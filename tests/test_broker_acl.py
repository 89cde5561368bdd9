"""Credentials and topic ACL, the same on Mosquitto and on the embedded amqtt broker (DESIGN.md §3)."""

import asyncio
import threading
import uuid
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.topic_rules import TopicAcl, filter_within, mosquitto_acl_lines, topic_matches
from core.ids import heartbeat_topic, presence_topic, status_topic
from core.mqtt_passwords import hash_password, upsert_password_entries
from stack.mosquitto_config import mosquitto_acl
from tests.helpers import BROKERS, wait_until


class Probe:
    """One MQTT 3.1.1 client (TCP or WebSocket) that records what happens to it."""

    def __init__(
        self, url: str, username: str | None, password: str | None, client_id: str, clean_session: bool = True
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        transport: Literal["tcp", "websockets"] = "websockets" if parts.scheme == "ws" else "tcp"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            transport=transport,
            clean_session=clean_session,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.reason: ReasonCode | None = None
        self._connack = threading.Event()
        # Filled by paho's network thread; list.append and dict assignment are atomic under the GIL.
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(mid, list(codes))

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.reason = reason
        self._connack.set()

    def will(self, topic: str, payload: bytes) -> "Probe":
        self.client.will_set(topic, payload, qos=1, retain=True)
        return self

    async def connect(self) -> ReasonCode:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not await asyncio.to_thread(self._connack.wait, 10):
            raise AssertionError("no CONNACK within 10 s")
        assert self.reason is not None
        return self.reason

    async def subscribe(self, topic_filter: str) -> list[ReasonCode]:
        _result, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        return await wait_until(lambda: self.subacks.get(mid), message=f"SUBACK for {topic_filter}")

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """True once the broker has acknowledged (QoS 1); False when it closed the connection instead."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        await wait_until(lambda: info.is_published() or not self.client.is_connected(), 5, message=f"PUBACK {topic}")
        return info.is_published()

    def received(self, topic: str, payload: bytes | None = None) -> bool:
        return any(t == topic and (payload is None or p == payload) for t, p, _r in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def crash(self) -> None:
        """Drop the connection without DISCONNECT, so the broker treats it as lost (will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def restaurants(stack: Any) -> dict[str, str]:
    """Two restaurants with secrets, written to the brokers' password file."""
    tag = uuid.uuid4().hex[:8]
    secrets = {f"acl-a-{tag}": f"secret-a-{tag}", f"acl-b-{tag}": f"secret-b-{tag}"}
    upsert_password_entries(stack.passwd_file, {rid: hash_password(secret) for rid, secret in secrets.items()})
    stack.reload_brokers()
    return secrets


class Clients:
    """Opens probes and closes every one at the end of the test."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.opened: list[Probe] = []

    def probe(
        self, url: str, username: str | None, password: str | None, client_id: str, clean_session: bool = True
    ) -> Probe:
        probe = Probe(url, username, password, client_id, clean_session)
        self.opened.append(probe)
        return probe

    async def platform(self, url: str) -> Probe:
        probe = self.probe(url, self.stack.platform_user, self.stack.platform_password, f"acl-{uuid.uuid4().hex[:8]}")
        assert not (await probe.connect()).is_failure
        return probe

    async def restaurant(self, url: str, rid: str, secret: str, device: str = "tablet") -> Probe:
        probe = self.probe(url, rid, secret, f"{rid}:{device}")
        assert not (await probe.connect()).is_failure
        return probe


@pytest.fixture
def clients(stack: Any) -> Any:
    opened = Clients(stack)
    yield opened
    for probe in opened.opened:
        probe.close()


def ids(restaurants: dict[str, str]) -> tuple[str, str]:
    a, b = restaurants
    return a, b


async def test_anonymous_is_refused(broker_url: str, clients: Clients) -> None:
    reason = await clients.probe(broker_url, None, None, f"anon-{uuid.uuid4().hex[:8]}").connect()
    assert reason.is_failure


async def test_wrong_secret_and_unknown_user_are_refused(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    a, _b = ids(restaurants)
    assert (await clients.probe(broker_url, a, "not-the-secret", f"{a}:tablet").connect()).is_failure
    assert (await clients.probe(broker_url, "nobody-here", "whatever", "nobody-here:x").connect()).is_failure
    assert not (await clients.probe(broker_url, a, restaurants[a], f"{a}:tablet").connect()).is_failure


async def test_restaurant_publishes_only_under_its_own_devices(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    a, b = ids(restaurants)
    platform = await clients.platform(broker_url)
    await platform.subscribe("restaurants/#")
    forbidden = [
        presence_topic(b, "tablet"),
        heartbeat_topic(b, "tablet"),
        status_topic(a),  # only the platform derives a status
        f"restaurants/{a}/devices/tablet/other",
        f"restaurants/{a}/elsewhere",
    ]
    for n, topic in enumerate(forbidden):
        # One connection each: whether a broker keeps a denied client connected is another test.
        forger = await clients.restaurant(broker_url, a, restaurants[a], f"forger{n}")
        await forger.publish(topic, b"forged")
        forger.close()
    device = await clients.restaurant(broker_url, a, restaurants[a])
    assert await device.publish(presence_topic(a, "tablet"), b"own-presence")
    assert await device.publish(heartbeat_topic(a, "tablet"), b"own-heartbeat")
    # The forgeries were routed or dropped before their PUBACK; had any been routed to the platform,
    # it would be queued ahead of these.
    await wait_until(lambda: platform.received(heartbeat_topic(a, "tablet"), b"own-heartbeat"))
    assert platform.received(presence_topic(a, "tablet"), b"own-presence")
    assert [t for t, _p, _r in platform.messages if t in forbidden] == []


async def test_a_denied_publish_does_not_cost_the_connection(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    """A device with a wrong topic keeps its session, as with Mosquitto's default configuration.

    Mosquitto 2.0.11 configured with `max_queued_messages 0` closes the connection of any client
    whose publish the ACL denies (QoS 0 or 1, MQTT 3.1.1 or 5); a large finite limit does not.
    """
    a, b = ids(restaurants)
    platform = await clients.platform(broker_url)
    await platform.subscribe("restaurants/#")
    device = await clients.restaurant(broker_url, a, restaurants[a])
    await device.publish(presence_topic(b, "tablet"), b"forged")
    await device.publish(f"restaurants/{a}/devices/tablet/other", b"forged")
    assert await device.publish(presence_topic(a, "tablet"), b"own"), "the broker dropped a client for a denied publish"
    await wait_until(lambda: platform.received(presence_topic(a, "tablet"), b"own"))


async def test_restaurant_cannot_read_another_restaurants_status(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    a, b = ids(restaurants)
    platform = await clients.platform(broker_url)
    assert await platform.publish(status_topic(b), b"b-retained", retain=True)
    assert await platform.publish(status_topic(a), b"a-retained", retain=True)
    device = await clients.restaurant(broker_url, a, restaurants[a])
    for topic_filter in (status_topic(b), "restaurants/+/status", "restaurants/#", f"restaurants/{b}/#"):
        await device.subscribe(topic_filter)  # Mosquitto grants and filters; amqtt refuses (see broker/)
    assert [code.is_failure for code in await device.subscribe(status_topic(a))] == [False]
    assert await platform.publish(status_topic(b), b"b-live")
    assert await platform.publish(status_topic(a), b"a-live")
    await wait_until(lambda: device.received(status_topic(a), b"a-live"))
    assert device.received(status_topic(a), b"a-retained")
    assert {t for t, _p, _r in device.messages} == {status_topic(a)}
    for topic in (status_topic(a), status_topic(b)):
        await platform.publish(topic, b"", retain=True)  # clear the retained status


async def test_platform_receives_every_restaurant(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    platform = await clients.platform(broker_url)
    assert [code.is_failure for code in await platform.subscribe("restaurants/#")] == [False]
    expected = []
    for rid, secret in restaurants.items():
        device = await clients.restaurant(broker_url, rid, secret)
        assert await device.publish(presence_topic(rid, "tablet"), rid.encode())
        assert await device.publish(heartbeat_topic(rid, "tablet"), rid.encode())
        expected += [presence_topic(rid, "tablet"), heartbeat_topic(rid, "tablet")]
    await wait_until(lambda: all(platform.received(topic) for topic in expected))


async def test_a_will_on_a_forbidden_topic_is_never_delivered(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    a, b = ids(restaurants)
    platform = await clients.platform(broker_url)
    await platform.subscribe("restaurants/#")
    forger = clients.probe(broker_url, a, restaurants[a], f"{a}:forger").will(presence_topic(b, "x"), b"forged-will")
    assert not (await forger.connect()).is_failure  # both brokers accept the login and drop the will
    honest = clients.probe(broker_url, a, restaurants[a], f"{a}:honest").will(presence_topic(a, "honest"), b"will")
    assert not (await honest.connect()).is_failure
    forger.crash()
    honest.crash()
    await wait_until(lambda: platform.received(presence_topic(a, "honest"), b"will"))
    late = await clients.platform(broker_url)
    await late.subscribe(f"restaurants/{b}/#")
    await late.subscribe(presence_topic(a, "honest"))
    await wait_until(lambda: late.received(presence_topic(a, "honest")))  # retained will
    assert not platform.received(presence_topic(b, "x"))
    assert not late.received(presence_topic(b, "x"))
    # Clear the retained will as its restaurant (the platform may not write device topics): a bridge
    # started later in the session would read it and dead-letter it.
    owner = await clients.restaurant(broker_url, a, restaurants[a])
    assert await owner.publish(presence_topic(a, "honest"), b"", retain=True)


async def test_a_new_connection_with_the_same_client_id_replaces_the_old_one(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    """[MQTT-3.1.4-2]: the old connection is closed and, as on a lost connection, its will published."""
    a, _b = ids(restaurants)
    platform = await clients.platform(broker_url)
    await platform.subscribe("restaurants/#")
    old = clients.probe(broker_url, a, restaurants[a], f"{a}:tablet").will(presence_topic(a, "tablet"), b"old-will")
    assert not (await old.connect()).is_failure
    new = await clients.restaurant(broker_url, a, restaurants[a])
    await wait_until(lambda: not old.client.is_connected(), message="the old connection was not closed")
    await wait_until(lambda: platform.received(presence_topic(a, "tablet"), b"old-will"))
    assert await new.publish(heartbeat_topic(a, "tablet"), b"from-new")
    await wait_until(lambda: platform.received(heartbeat_topic(a, "tablet"), b"from-new"))
    assert await new.publish(presence_topic(a, "tablet"), b"", retain=True)  # clear the retained will


async def test_a_persistent_subscriber_that_reconnects_keeps_receiving(
    broker_url: str, clients: Clients, restaurants: dict[str, str], stack: Any
) -> None:
    a, _b = ids(restaurants)
    client_id = f"bridge-{uuid.uuid4().hex[:8]}"
    first = clients.probe(broker_url, stack.platform_user, stack.platform_password, client_id, clean_session=False)
    assert not (await first.connect()).is_failure
    await first.subscribe(f"restaurants/{a}/#")
    second = clients.probe(broker_url, stack.platform_user, stack.platform_password, client_id, clean_session=False)
    assert not (await second.connect()).is_failure
    await wait_until(lambda: not first.client.is_connected(), message="the old connection was not closed")
    device = await clients.restaurant(broker_url, a, restaurants[a])
    assert await device.publish(heartbeat_topic(a, "tablet"), b"after-takeover")
    await wait_until(lambda: second.received(heartbeat_topic(a, "tablet"), b"after-takeover"))
    second.client.unsubscribe(f"restaurants/{a}/#")


@pytest.mark.parametrize("broker", BROKERS)
async def test_websocket_listener_has_the_same_rules(
    broker: str, stack: Any, clients: Clients, restaurants: dict[str, str]
) -> None:
    ws_url = stack.mosquitto_ws_url if broker == "mosquitto" else stack.amqtt_ws_url
    if ws_url is None:
        pytest.skip("the amqtt broker is not part of this stack")
    a, b = ids(restaurants)
    assert (await clients.probe(ws_url, None, None, f"anon-{uuid.uuid4().hex[:8]}").connect()).is_failure
    assert (await clients.probe(ws_url, a, "wrong", f"{a}:browser").connect()).is_failure
    platform = await clients.platform(ws_url)
    await platform.subscribe("restaurants/#")
    forger = await clients.restaurant(ws_url, a, restaurants[a], "forger")
    await forger.publish(presence_topic(b, "browser"), b"forged")
    browser = await clients.restaurant(ws_url, a, restaurants[a], "browser")
    assert await browser.publish(presence_topic(a, "browser"), b"own")
    await wait_until(lambda: platform.received(presence_topic(a, "browser"), b"own"))
    assert not platform.received(presence_topic(b, "browser"))


async def test_amqtt_requires_the_restaurant_client_id(
    stack: Any, clients: Clients, restaurants: dict[str, str]
) -> None:
    """DESIGN.md §3 client ids; Mosquitto 2.0 has no per-user client id rule, so amqtt only."""
    if stack.amqtt_url is None:
        pytest.skip("the amqtt broker is not part of this stack")
    a, b = ids(restaurants)
    secret = restaurants[a]
    for bad in (f"{b}:tablet", "tablet", f"{a}:", f"{a}:bad id", f"{a}tablet"):
        assert (await clients.probe(stack.amqtt_url, a, secret, bad).connect()).is_failure, bad
    assert not (await clients.probe(stack.amqtt_url, a, secret, f"{a}:tablet").connect()).is_failure


def test_amqtt_rules_are_the_mosquitto_acl() -> None:
    """Both brokers enforce one contract: amqtt's rules, written out, are the generated Mosquitto ACL."""
    acl_lines = {
        line.strip() for line in mosquitto_acl("platform").splitlines() if line.strip() and not line.startswith("#")
    }
    assert set(mosquitto_acl_lines("platform")) == acl_lines


def test_topic_acl_with_mosquitto_semantics() -> None:
    acl = TopicAcl("platform")
    assert acl.may_publish("r1", "restaurants/r1/devices/d1/presence")
    assert acl.may_publish("r1", "restaurants/r1/devices/d1/heartbeat")
    assert not acl.may_publish("r1", "restaurants/r2/devices/d1/presence")
    assert not acl.may_publish("r1", "restaurants/r1/status")
    assert not acl.may_publish("r1", "restaurants/r1/devices/d1/presence/x")
    assert acl.may_subscribe("r1", "restaurants/r1/status")
    assert not acl.may_subscribe("r1", "restaurants/+/status")
    assert not acl.may_subscribe("r1", "restaurants/r1/#")
    assert acl.may_receive("r1", "restaurants/r1/status")
    assert not acl.may_receive("r1", "restaurants/r2/status")
    assert acl.may_subscribe("platform", "restaurants/#")
    assert acl.may_subscribe("platform", "$share/bridge/restaurants/+/devices/+/presence")
    assert not acl.may_subscribe("platform", "$share//restaurants/#")
    assert not acl.may_subscribe("platform", "#")
    assert not acl.may_subscribe("platform", "$SYS/#")
    assert acl.may_publish("platform", "restaurants/r9/status")
    assert not acl.may_publish("platform", "restaurants/r9/devices/d/presence")
    # Wildcards in a username never widen a pattern, and no username means no rights.
    assert not acl.may_receive("+", "restaurants/r1/status")
    assert not acl.may_publish(None, "restaurants/r1/devices/d/presence")


LEVELS = st.sampled_from(["restaurants", "r1", "r2", "devices", "d", "status", ""])
TOPICS = st.lists(LEVELS, min_size=1, max_size=5).map("/".join)
FILTERS = st.lists(st.one_of(LEVELS, st.just("+")), min_size=0, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])]).filter(bool)
)


@given(topic=TOPICS, narrow=FILTERS, wide=FILTERS)
def test_a_filter_within_another_matches_no_more_topics(topic: str, narrow: str, wide: str) -> None:
    if filter_within(narrow, wide) and topic_matches(topic, narrow):
        assert topic_matches(topic, wide)


@given(topic=TOPICS)
def test_a_topic_as_filter_matches_itself(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert filter_within(topic, topic)


async def test_a_new_connection_gets_no_retained_message_it_did_not_subscribe_to(
    broker_url: str, clients: Clients, restaurants: dict[str, str]
) -> None:
    # amqtt 0.12.1 replays, on every CONNECT, the retained messages of every filter any client holds.
    a, b = ids(restaurants)
    platform = await clients.platform(broker_url)
    assert [code.is_failure for code in await platform.subscribe("restaurants/#")] == [False]
    writer = await clients.restaurant(broker_url, b, restaurants[b])
    assert await writer.publish(presence_topic(b, "tablet"), b"b-presence", retain=True)
    await wait_until(lambda: platform.received(presence_topic(b, "tablet")))
    device = await clients.restaurant(broker_url, a, restaurants[a], "pos")
    assert [code.is_failure for code in await device.subscribe(status_topic(a))] == [False]
    assert await platform.publish(status_topic(a), b"a-live")
    await wait_until(lambda: device.received(status_topic(a), b"a-live"))
    assert {t for t, _p, _r in device.messages} == {status_topic(a)}
    await writer.publish(presence_topic(b, "tablet"), b"", retain=True)
