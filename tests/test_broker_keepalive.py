"""Keep-alive on both brokers [MQTT-3.1.2-24]: a device may stay quiet for up to one and a half
keep-alives (a PINGREQ late by a round trip costs it nothing); one that sends nothing for longer is cut
and its will published, as for a lost connection. The platform's silent-drop detection rests on this.
"""

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.scale_probes import DEVICE, Probe
from core.ids import presence_topic
from core.mqtt_passwords import hash_password, upsert_password_entries
from tests.helpers import wait_until

KEEPALIVE_S = 2
ALLOWED_SILENCE_S = 1.5 * KEEPALIVE_S
# Mosquitto 2.0 checks keep-alives once every 6 s, on whole seconds: a silent connection is cut up to
# ~7 s after its allowed silence (docs/benchmarks.md, silent drop).
CUT_WITHIN_S = ALLOWED_SILENCE_S + 8.0


@pytest.fixture
def device(stack: Any, broker_url: str) -> Iterator[Probe]:
    """A raw MQTT 3.1.1 device of a restaurant of its own; its retained presence cleared afterwards."""
    rid, secret = f"ka-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    upsert_password_entries(stack.passwd_file, {rid: hash_password(secret)})
    stack.reload_brokers()
    probe = Probe(broker_url, rid, secret)
    yield probe
    probe.close()
    probe.forget()


class Watcher:
    """The platform's view of one presence topic: every message with the instant it arrived."""

    def __init__(self, stack: Any, broker_url: str, topic: str) -> None:
        parts = urlsplit(broker_url)
        self.messages: list[tuple[float, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ka-watch-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)  # fmt: skip
        self.client.username_pw_set(stack.platform_user, stack.platform_password)
        self.client.on_message = lambda _c, _u, m: self.messages.append((time.time(), bytes(m.payload)))
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topic, qos=1)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        self.client.loop_start()

    def wills(self) -> list[float]:
        return [at for at, payload in self.messages if b'"offline"' in payload]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(stack: Any, broker_url: str, device: Probe) -> Iterator[Watcher]:
    watch = Watcher(stack, broker_url, presence_topic(device.rid, DEVICE))
    yield watch
    watch.close()


async def test_a_pingreq_late_by_a_quarter_keepalive_keeps_the_session(device: Probe, watcher: Watcher) -> None:
    device.connect(keepalive=KEEPALIVE_S)
    for _ in range(2):
        await asyncio.sleep(device.last_sent + KEEPALIVE_S * 1.25 - time.time())  # the silence is the test
        assert not device.closed_by_broker(), f"cut after {time.time() - device.last_sent:.2f} s of silence"
        device.ping()
    assert watcher.wills() == []


async def test_a_device_that_sends_nothing_is_cut_and_its_will_published(device: Probe, watcher: Watcher) -> None:
    device.connect(keepalive=KEEPALIVE_S)
    last = device.last_sent
    await wait_until(watcher.wills, CUT_WITHIN_S, message="the will of a device silent past its keep-alive")
    silence = watcher.wills()[0] - last
    assert silence >= ALLOWED_SILENCE_S - 0.25, f"cut after {silence:.2f} s, before 1.5 keep-alives"
    assert device.closed_by_broker()
