"""What a broker acknowledged before a connection ended is delivered, and before the connection's will.

amqtt 0.12.1 sends its PUBACK once a PUBLISH is queued for its delivery loop, and that loop stopped at
the connection's end: what was queued and not yet delivered was dropped, PUBACK or not. A bridge or a
scheduler that stopped right after its last PUBACK left older retained statuses behind for good, and a
device's queued status was stored over its will. Both brokers must keep this (Mosquitto does).

amqtt still stores a retained copy when its loop reaches the message, after the PUBACK (Mosquitto,
before): a subscriber that comes at once may see an earlier one for a moment, so the tests wait for the
last one to stand, and fail if it never does.
"""

import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.wire import CONNECT, field, packet, publish_packet

ROUNDS = 8
TOPICS = 250


def connect_packet(client_id: str, user: str, password: str, will: tuple[str, bytes] | None = None) -> bytes:
    flags = 0xC2  # user name, password, clean session
    payload = field(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retained
        payload += field(will[0].encode()) + field(will[1])
    payload += field(user.encode()) + field(password.encode())
    body = field(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + payload
    return packet(CONNECT, body)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


class RawClient:
    """A 3.1.1 client on a bare socket: it says exactly what the test writes, when the test writes it."""

    def __init__(self, url: str, stack: Any, will: tuple[str, bytes] | None = None) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), timeout=10)
        client_id = f"raw-{uuid.uuid4().hex[:8]}"
        self.sock.sendall(connect_packet(client_id, stack.platform_user, stack.platform_password, will))
        assert read_exactly(self.sock, 4) == bytes([0x20, 0x02, 0x00, 0x00]), "CONNACK refused"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish every message at once, then read one PUBACK per message."""
        packets = (publish_packet(t, p, qos=1, retain=True, packet_id=i + 1) for i, (t, p) in enumerate(messages))
        self.sock.sendall(b"".join(packets))
        acked = {int.from_bytes(read_exactly(self.sock, 4)[2:], "big") for _ in messages}
        assert acked == set(range(1, len(messages) + 1))

    def disconnect(self) -> None:
        self.sock.sendall(bytes([0xE0, 0x00]))
        self.sock.close()

    def vanish(self) -> None:
        self.sock.close()  # no DISCONNECT: the broker publishes the will


def retained_now(url: str, stack: Any, topics: set[str]) -> dict[str, bytes]:
    """The retained message of each of `topics`, as a new subscriber gets them."""
    parts = urlsplit(url)
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic in topics:
            got[msg.topic] = msg.payload
            if len(got) == len(topics):
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"read-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    client.username_pw_set(stack.platform_user, stack.platform_password)
    client.on_message = on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    for topic in sorted(topics):
        client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert done.wait(10), f"{len(got)} retained of {len(topics)}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def retained_settle(url: str, stack: Any, expected: dict[str, bytes], timeout: float = 10.0) -> dict[str, bytes]:
    """What a new subscriber gets, read again until it is `expected` or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while (got := retained_now(url, stack, set(expected))) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def test_statuses_acknowledged_right_before_a_disconnect_are_all_stored(broker_url: str, stack: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = [f"restaurants/dl-{tag}-{k:03d}/status" for k in range(TOPICS)]
    rounds = [(topic, f"round-{r}".encode()) for r in range(ROUNDS) for topic in topics]
    client = RawClient(broker_url, stack)
    client.publish_all(rounds)
    client.disconnect()  # right after the last PUBACK
    stored = retained_settle(broker_url, stack, {topic: f"round-{ROUNDS - 1}".encode() for topic in topics})
    stale = {t: p for t, p in stored.items() if p != f"round-{ROUNDS - 1}".encode()}
    assert not stale, f"{len(stale)} of {TOPICS} topics kept an older status, e.g. {next(iter(stale.items()))}"


def test_a_lost_connections_will_comes_after_what_it_published(broker_url: str, stack: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"restaurants/dl-{tag}/status"
    client = RawClient(broker_url, stack, will=(topic, b"will"))
    client.publish_all([(topic, f"status-{k}".encode()) for k in range(ROUNDS * TOPICS)])
    client.vanish()
    assert retained_settle(broker_url, stack, {topic: b"will"}) == {topic: b"will"}
