"""The project's amqtt broker and the MQTT protocol level: MQTT 3.1.1 only, and it says so.

amqtt as released read an MQTT 5 CONNECT's properties as 3.1.1 fields and waited for bytes that never
came; the bridge, which tries MQTT 5 first, sat out its CONNACK timeout at every start on amqtt. The
broker now answers CONNACK 0x01 and closes [MQTT-3.1.2-2], and the bridge and the scheduler fall back
on that answer.
"""

import asyncio
import logging
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.lean_client import LeanClient
from bridge.worker import Bridge
from core.settings import Settings
from scheduler.retained_link import RetainedLink
from tests.helpers import bridge_converged, wait_until


def amqtt_address(stack: Any) -> tuple[str, int]:
    if stack.amqtt_url is None:
        pytest.skip("the amqtt broker is not part of this stack")
    parts = urlsplit(stack.amqtt_url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def mqtt5_connect(client_id: bytes) -> bytes:
    variable = b"\x00\x04MQTT" + bytes([5, 0x02, 0, 60])  # level 5, clean start, keep-alive 60 s
    properties = bytes([0x11, 0, 0, 0, 60])  # session expiry 60 s: what a 3.1.1 parser cannot skip
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + bytes([len(properties)]) + properties + payload
    return bytes([0x10, len(body)]) + body


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(64):
        received += chunk
    return received


def test_an_mqtt5_connect_is_refused_with_connack_0x01_and_closed(stack: Any) -> None:
    with socket.create_connection(amqtt_address(stack), timeout=5) as sock:
        sock.sendall(mqtt5_connect(b"v5-" + uuid.uuid4().hex[:8].encode()))
        assert read_until_closed(sock) == bytes([0x20, 0x02, 0x00, 0x01])


def test_a_311_connect_with_a_long_remaining_length_is_still_read_whole(stack: Any) -> None:
    # The level is read ahead of amqtt, past a remaining length of two bytes (a will of 300 bytes).
    host, port = amqtt_address(stack)
    results: list[Any] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"long-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    client.username_pw_set(stack.platform_user, stack.platform_password)
    client.will_set("platform/long-will", b"x" * 300, qos=0)
    client.on_connect = lambda _c, _u, _f, reason, _p: results.append(reason)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        asyncio.run(wait_until(lambda: bool(results), 10, message="no CONNACK"))
        assert not results[0].is_failure, results[0]
    finally:
        client.disconnect()
        client.loop_stop()


async def test_the_bridge_on_auto_falls_back_when_the_broker_refuses_mqtt5(
    settings: Settings, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = amqtt_address(stack)
    bridge = Bridge(
        settings.model_copy(update={"mqtt_brokers": [f"mqtt://{host}:{port}"], "mqtt_protocol": "auto",
                                    "bridge_metrics_port": -1}),
        uuid.uuid4().hex[:8],
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="bridge.mqtt_link")
    task = asyncio.create_task(bridge.run())
    try:
        await bridge_converged(bridge, task)
        messages = [r.getMessage() for r in caplog.records if r.name == "bridge.mqtt_link"]
        assert any("refused MQTT 5; using MQTT 3.1.1" in m for m in messages), messages
        assert not any("did not answer" in m for m in messages), messages
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 30)


async def test_the_schedulers_link_on_auto_falls_back_when_the_broker_refuses_mqtt5(
    settings: Settings, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to log each refusal as a lost connection and wait out its 3 s CONNACK timeout, so its
    # first retained statuses were acknowledged seconds late on amqtt.
    host, port = amqtt_address(stack)
    acked: list[int] = []
    link = RetainedLink(f"mqtt://{host}:{port}", 0, settings.model_copy(update={"mqtt_protocol": "auto"}),
                        uuid.uuid4().hex[:8], acked.extend)  # fmt: skip
    caplog.set_level(logging.INFO, logger="scheduler.retained_link")
    link.start()
    try:
        await wait_until(lambda: link.connected, 10, message="the scheduler's link never connected")
        link.publish(f"restaurants/proto-{uuid.uuid4().hex[:8]}/status", b'{"online":true}', 7)
        await wait_until(lambda: acked == [7], 10, message="no PUBACK")
        records = [r for r in caplog.records if r.name == "scheduler.retained_link"]
        messages = [r.getMessage() for r in records]
        assert any("refused MQTT 5; using MQTT 3.1.1" in m for m in messages), messages
        assert not any("did not answer" in m for m in messages), messages
        assert not [r for r in records if r.levelno >= logging.WARNING], messages
    finally:
        await link.stop()


async def test_a_refusal_read_before_the_connect_call_returned_still_leads_to_a_311_connect(
    settings: Settings, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI, 2026-11-27: on a busy machine the worker thread that ran paho's `connect` lost its core just
    # after the CONNECT went out. The loop read amqtt's CONNACK 0x01 before that attempt was done, and
    # its fall-back asked for a 3.1.1 connect while an attempt still ran, which used to be dropped: the
    # bridge never connected again ("first bridge never converged").
    host, port = amqtt_address(stack)
    connect = LeanClient.connect

    def connect_then_lose_the_core(self: LeanClient, *args: Any, **kwargs: Any) -> Any:
        result = connect(self, *args, **kwargs)
        time.sleep(0.5)  # the loop meanwhile writes the CONNECT and reads the refusal
        return result

    monkeypatch.setattr(LeanClient, "connect", connect_then_lose_the_core)
    bridge = Bridge(
        settings.model_copy(update={"mqtt_brokers": [f"mqtt://{host}:{port}"], "mqtt_protocol": "auto",
                                    "bridge_metrics_port": -1}),
        uuid.uuid4().hex[:8],
    )  # fmt: skip
    task = asyncio.create_task(bridge.run())
    try:
        await bridge_converged(bridge, task)
        assert [link.mqtt5 for link in bridge.links] == [False]
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 30)
