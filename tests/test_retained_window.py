"""A link's retained statuses go out a window at a time, in order, each acknowledged once (real Mosquitto)."""

import asyncio
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import bridge.mqtt_link
import scheduler.retained_link
from bridge.inbox import Inbox
from bridge.mqtt_link import BrokerLink
from core.retained_window import RetainedWindow
from core.settings import Settings
from scheduler.retained_link import RetainedLink
from stack.backends import Backends
from tests.helpers import wait_until

TOPICS = 30
STATUSES = 300


def platform_client(settings: Settings, protocol: int = mqtt.MQTTv5) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"win-{uuid.uuid4().hex[:8]}", protocol=protocol)
    client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    return client


def retained_now(
    settings: Settings, port: int, prefix: str, expected: int, protocol: int = mqtt.MQTTv5
) -> dict[str, bytes]:
    """The retained status of each restaurant whose topic starts with `prefix`, as a new subscriber gets them."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(prefix):
            got[msg.topic] = msg.payload
        if len(got) >= expected:
            done.set()

    client = platform_client(settings, protocol)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("restaurants/+/status", qos=1)
    client.loop_start()
    try:
        assert done.wait(10), f"{len(got)} retained of {expected}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


async def test_a_link_sends_its_retained_statuses_a_window_at_a_time_in_order(
    settings: Settings, stack: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.mqtt_link, "RETAINED_WINDOW", 25)
    tag = uuid.uuid4().hex[:8]
    acked: list[int] = []
    in_flight: list[int] = []
    link: BrokerLink | None = None

    def on_acked(token: int) -> None:
        assert link is not None
        in_flight.append(len(link.retained._sent) + 1)  # this one was still unacknowledged a moment ago
        acked.append(token)

    link = BrokerLink(stack.mosquitto_url, 0, settings, f"win-{tag}", Inbox(), on_acked)
    # Published before the link is up (the bridge's start does this with the statuses left to publish).
    for n in range(STATUSES):
        link.publish_retained(f"restaurants/win-{tag}-{n % TOPICS:02d}/status", str(n).encode(), n)
    assert len(link.retained) == STATUSES and not link.retained._sent  # they wait for the connection
    await link.start()
    try:
        await wait_until(lambda: len(acked) == STATUSES, 20, message=f"{len(acked)} acknowledged")
        assert acked == list(range(STATUSES))  # each once, in the order published
        assert max(in_flight) == 25  # the window was used, and never exceeded
        assert len(link.retained) == 0
    finally:
        await link.stop()
    port = int(stack.mosquitto_url.rsplit(":", 1)[1])
    last = retained_now(settings, port, f"restaurants/win-{tag}-", TOPICS)
    # Each topic holds its newest status: nothing older landed after it.
    assert last == {f"restaurants/win-{tag}-{k:02d}/status": str(STATUSES - TOPICS + k).encode() for k in range(TOPICS)}


def test_what_a_replaced_client_held_goes_first_and_the_brokers_receive_maximum_is_kept(
    settings: Settings, stack: Backends
) -> None:
    # The MQTT 3.1.1 fallback drops the client that held the sent statuses: they must go out again,
    # before those that waited, through the new one; and no more at once than the broker allows.
    acked: list[int] = []
    window = RetainedWindow(10, acked.append)
    never_connected = platform_client(settings)
    topic = f"restaurants/win-{uuid.uuid4().hex[:8]}/status"
    for n in range(15):
        window.put(never_connected, True, (topic, str(n).encode(), n))  # paho keeps them: not connected
    assert (len(window._sent), len(window)) == (10, 15)
    window.client_replaced()
    assert (len(window._sent), len(window)) == (0, 15)

    live = platform_client(settings)
    most: list[int] = []

    def on_publish(client: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        most.append(len(window._sent))
        window.acked(client, mid)

    live.on_publish = on_publish
    port = int(stack.mosquitto_url.rsplit(":", 1)[1])
    live.connect("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 10
        while not live.is_connected() and time.monotonic() < deadline:
            live.loop(0.05)  # driven from this thread alone, as the bridge drives paho from its loop
        window.connected(live, 4)  # the broker's Receive Maximum, smaller than the window
        while len(acked) < 15 and time.monotonic() < deadline:
            live.loop(0.05)
    finally:
        live.disconnect()
    assert acked == list(range(15))
    assert max(most) <= 4


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
async def test_the_schedulers_link_sends_a_window_at_a_time_in_order_on_either_broker(
    settings: Settings, stack: Backends, monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    # The scheduler's link runs paho on a thread of its own (scheduler/retained_link.py); the window stays
    # on the loop. On amqtt (MQTT 3.1.1 only) the link first tries MQTT 5 and falls back on a new client.
    monkeypatch.setattr(scheduler.retained_link, "RETAINED_WINDOW", 25)
    tag = uuid.uuid4().hex[:8]
    url = stack.mosquitto_url if broker == "mosquitto" else stack.amqtt_url
    acked: list[int] = []
    in_flight: list[int] = []
    link: RetainedLink | None = None

    def on_acked(tokens: list[int]) -> None:
        assert link is not None
        in_flight.append(len(link.retained._sent))  # with paho once the acknowledged ones' places were filled
        acked.extend(tokens)

    link = RetainedLink(url, 0, settings, f"win-{tag}", on_acked)
    for n in range(STATUSES):  # queued before the link connects, as a leader's first burst may be
        link.publish(f"restaurants/win-{tag}-{n % TOPICS:02d}/status", str(n).encode(), n)
    link.start()
    try:
        await wait_until(lambda: len(acked) == STATUSES, 30, message=f"{len(acked)} acknowledged")
        assert acked == list(range(STATUSES))  # each once, in the order published
        assert max(in_flight) == 25  # the window was used, and never exceeded
        assert len(link.retained) == 0
        assert link.mqtt5 == (broker == "mosquitto")
        port = int(url.rsplit(":", 1)[1])
        protocol = mqtt.MQTTv5 if broker == "mosquitto" else mqtt.MQTTv311
        newest = {f"restaurants/win-{tag}-{k:02d}/status": str(STATUSES - TOPICS + k).encode() for k in range(TOPICS)}
        # amqtt sends its PUBACK once a message is queued and stores the retained copy when its delivery
        # loop reaches it, a moment later on a busy machine. (What it had queued when a connection ended
        # used to be dropped: tests/test_broker_delivery.py.)
        deadline = time.monotonic() + 10
        while (last := retained_now(settings, port, f"restaurants/win-{tag}-", TOPICS, protocol)) != newest:
            stale = {t: (v, newest.get(t)) for t, v in last.items() if newest.get(t) != v}
            assert broker == "amqtt" and time.monotonic() < deadline, stale
            await asyncio.sleep(0.2)
    finally:
        await link.stop()

