"""A bridge link that stops reading because the inbox is full keeps its MQTT session, and says how far
it has read (its ticks), so that silence is not judged past what still waits in the broker.

In the 100,000-session storm (2026-11-27) the inbox stayed full for minutes; the paused links read
nothing, the PINGRESP included, paho's keepalive took every broker for gone at once, and each
reconnect read its shard's retained presence again: the backlog grew with every round. paho also told
each of those losses twice, so each link connected twice, the second taking the first's session over.
With that mended, the devices whose heartbeats waited unread in the brokers were swept as stale.
"""

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import bridge.mqtt_link
from bridge.inbox import Inbox
from bridge.mqtt_link import BrokerLink, Inbound
from core.settings import Settings
from stack.backends import Backends
from stack.services import Mosquitto, free_port
from tests.helpers import wait_until

KEEPALIVE_S = 2
FLOOD = 3000


@pytest.fixture
def broker(stack: Backends, tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own: the flood reaches no other test's bridge."""
    mosquitto = Mosquitto(tmp_path / "mosquitto", free_port(), free_port(), stack.passwd_file, stack.platform_user)
    mosquitto.start()
    try:
        mosquitto.wait_ready()
        yield mosquitto
    finally:
        mosquitto.stop()


def flood(settings: Settings, port: int) -> None:
    """FLOOD live (not retained) statuses of 2 kB, as the platform's user: the link subscribes to them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish("restaurants/flood/status", b"x" * 2048, qos=1) for _ in range(FLOOD)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_link_paused_longer_than_its_keepalive_keeps_its_session_and_loses_nothing(
    settings: Settings, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bridge.mqtt_link, "KEEPALIVE_S", KEEPALIVE_S)
    caplog.set_level(logging.WARNING, logger="bridge.mqtt_link")
    inbox: Inbox[Inbound] = Inbox(high=5, low=2)
    link = BrokerLink(f"mqtt://127.0.0.1:{broker.port}", 0, settings, "backpressure", inbox)
    await link.start()
    try:
        await wait_until(lambda: link.reconcile_subscribed_at is not None, 20, message="the link subscribed")
        await asyncio.to_thread(flood, settings, broker.port)
        assert link._paused  # the inbox is full: the link reads no more
        await asyncio.sleep(4 * KEEPALIVE_S)  # long enough for paho to have dropped it twice over
        assert link.connected and not [r for r in caplog.records if "connection lost" in r.message]
        taken = 0
        while taken < FLOOD:
            batch = await asyncio.wait_for(inbox.take(500, wait_s=5), 10)
            taken += sum(1 for m in batch if m.topic == "restaurants/flood/status")
        assert taken == FLOOD
    finally:
        await link.stop()


async def test_ticks_wait_behind_what_the_broker_holds_then_come_back_past_it(
    settings: Settings, broker: Mosquitto
) -> None:
    inbox: Inbox[Inbound] = Inbox(high=5, low=2)
    link = BrokerLink(f"mqtt://127.0.0.1:{broker.port}", 0, settings, "ticks", inbox)
    await link.start()
    try:
        await wait_until(lambda: link._ticks_back, 20, message="a first tick back")
        await asyncio.to_thread(flood, settings, broker.port)
        flooded_ms = int(time.time() * 1000)
        await asyncio.sleep(1.0)  # four ticks sent meanwhile, all behind the flood
        assert link._paused and link.heard_up_to(flooded_ms + 5000) < flooded_ms
        while link.heard_up_to(int(time.time() * 1000)) < flooded_ms:
            await asyncio.wait_for(inbox.take(500, wait_s=0.5), 10)  # the bridge works through the backlog
        assert not [m for m in await inbox.take(10_000, wait_s=0) if m.topic == link.tick_topic]  # never queued
    finally:
        await link.stop()


async def test_a_link_whose_ticks_never_come_back_holds_nothing_back(
    settings: Settings, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker whose ACL lets the platform read the tick's topic but not write it (an older deployment).
    monkeypatch.setattr(bridge.mqtt_link, "TICK_FIRST_S", 1.0)
    caplog.set_level(logging.WARNING, logger="bridge.mqtt_link")
    made_ms = int(time.time() * 1000)
    link = BrokerLink(f"mqtt://127.0.0.1:{broker.port}", 0, settings, "noticks", Inbox())
    link.tick_topic = "restaurants/~tick/devices/nowhere/heartbeat"
    await link.start()
    try:
        await wait_until(lambda: link.connected, 20, message="connected")
        # Waited for, at first, from when the link was made: never from 1970 (see `heard_up_to`).
        assert made_ms <= link.heard_up_to(made_ms + 60_000) <= int(time.time() * 1000)
        await asyncio.sleep(1.5)
        assert link.heard_up_to(123) == 123 and "no tick came back" in caplog.text
    finally:
        await link.stop()


async def test_a_loss_told_twice_is_one_reconnect(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.mqtt_link")
    link = BrokerLink(f"mqtt://127.0.0.1:{free_port()}", 0, settings, "twice", Inbox())
    link._loop = asyncio.get_running_loop()
    try:
        for _ in range(2):  # as paho 2.2's loop_misc does after a keepalive timeout
            link._on_disconnect(link._client, None, None, "Keep alive timeout", None)
        assert len([r for r in caplog.records if "connection lost" in r.message]) == 1
    finally:
        await link.stop()
