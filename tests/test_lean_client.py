"""bridge.lean_client decodes what paho decodes, however the bytes arrive.

Each test feeds the same PUBLISH packets through a socket pair to a LeanClient and to a plain paho
Client and compares what their on_message saw. No broker: this is paho's receive path alone.
"""

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.lean_client import READ_CHUNK, LeanClient

Seen = tuple[bytes, bytes, int, bool, bool, int, Any]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(
    topic: bytes, payload: bytes, qos: int, retain: bool, mid: int, expiry: int | None, mqtt5: bool = True
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if mqtt5:
        props = Properties(PacketTypes.PUBLISH)
        if expiry is not None:
            props.MessageExpiryInterval = expiry
            props.UserProperty = ("k", "v")
        body += props.pack()
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


@contextmanager
def receiving(cls: type[mqtt.Client], mqtt5: bool = True) -> Iterator[tuple[mqtt.Client, socket.socket, list[Seen]]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = cls(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311, manual_ack=True)
    seen: list[Seen] = []

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        props = getattr(m.properties, "MessageExpiryInterval", None if m.properties is None else "empty")
        seen.append((m._topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup), m.mid, props))

    client.on_message = on_message
    client._sock = ours
    try:
        yield client, theirs, seen
    finally:
        client._sock = None
        ours.close()
        theirs.close()


def read_all(client: mqtt.Client) -> list[MQTTErrorCode]:
    """_packet_read until the socket is empty (and, for LeanClient, its chunk too)."""
    codes = []
    for _ in range(100_000):
        rc = client._packet_read()
        codes.append(rc)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return codes
    raise AssertionError("never ran dry")


def feed(cls: type[mqtt.Client], pieces: list[bytes], mqtt5: bool = True) -> tuple[list[Seen], list[MQTTErrorCode]]:
    with receiving(cls, mqtt5) as (client, sender, seen):
        codes: list[MQTTErrorCode] = []
        for piece in pieces:
            sender.sendall(piece)
            codes += read_all(client)
        return seen, codes


messages = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=80).filter(lambda t: b"\x00" not in t),
        st.binary(max_size=300),
        st.integers(0, 1),
        st.booleans(),
        st.integers(1, 65_535),
        st.none() | st.integers(0, 2**32 - 1),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_publish_packets_reach_on_message_as_paho_gives_them(batch: list[Any], data: st.DataObject) -> None:
    stream = b"".join(publish_packet(*m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    lean, _ = feed(LeanClient, pieces)
    plain, _ = feed(mqtt.Client, pieces)
    assert [m[:6] for m in lean] == [m[:6] for m in plain]
    assert len(lean) == len(batch)
    for got, (_, _, _, _, _, expiry) in zip(lean, batch, strict=True):
        # Without properties LeanClient leaves them None; with them paho decodes them as always.
        assert got[6] == (None if expiry is None else expiry)


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_on_lean_message_gets_what_paho_gives_on_message_and_the_rest_still_goes_there(
    batch: list[Any], data: st.DataObject
) -> None:
    stream = b"".join(publish_packet(*m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    plain, _ = feed(mqtt.Client, pieces)
    with receiving(LeanClient) as (client, sender, seen):
        lean: list[tuple[str, int]] = []  # (route, index in `seen`)

        def on_lean(topic: str, payload: bytes, qos: int, retain: bool, mid: int, received: float) -> None:
            assert received > 0
            lean.append(("lean", len(seen)))
            seen.append((topic.encode(), payload, qos, retain, False, mid, None))

        client.on_lean_message = on_lean  # type: ignore[attr-defined]
        limit = data.draw(st.integers(1, 50))  # packets per readable event, as the link asks for them
        for piece in pieces:
            sender.sendall(piece)
            for _ in range(100_000):  # as the link reads: read_packets until the socket is empty
                rc = client.read_packets(limit)  # type: ignore[attr-defined]
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    assert rc == MQTTErrorCode.MQTT_ERR_AGAIN
                    break
    assert [m[:4] + m[5:6] for m in seen] == [m[:4] + m[5:6] for m in plain]
    for i, (topic, *_rest) in enumerate(batch):
        plain_way = batch[i][5] is not None or not _utf8(topic)  # properties, or a topic that is not UTF-8
        assert (("lean", i) in lean) is not plain_way


def test_read_packets_takes_whole_packets_from_the_chunk_and_leaves_the_rest_to_paho() -> None:
    # A chunk holding plain heartbeats, one with properties, a PINGRESP and a packet cut by the chunk's end.
    beat = publish_packet(b"restaurants/r/devices/d/heartbeat", b'{"epoch":1}', 0, False, 1, None)
    with_props = publish_packet(b"restaurants/r/devices/d/presence", b"p", 1, True, 9, 60)
    stream = beat * 3 + with_props + bytes([0xD0, 0]) + beat * 2
    with receiving(LeanClient) as (client, sender, seen):
        taken: list[bytes] = []
        client.on_lean_message = lambda topic, payload, *_: taken.append(payload)  # type: ignore[attr-defined]
        sender.sendall(stream[:-4])
        assert client.read_packets(100) == MQTTErrorCode.MQTT_ERR_AGAIN  # type: ignore[attr-defined]
        assert len(taken) == 4 and [m[1] for m in seen] == [b"p"]  # the cut one waits for its bytes
        sender.sendall(stream[-4:])
        assert client.read_packets(100) == MQTTErrorCode.MQTT_ERR_AGAIN  # type: ignore[attr-defined]
        assert len(taken) == 5 and taken[-1] == b'{"epoch":1}'
        sender.sendall(beat * 10)
        assert client.read_packets(4) == MQTTErrorCode.MQTT_ERR_SUCCESS  # type: ignore[attr-defined]
        assert len(taken) == 9 and client.buffered()  # type: ignore[attr-defined]


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_mqtt_311_packets_go_through_paho_unchanged() -> None:
    stream = b"".join(publish_packet(b"a/b", b"x" * n, n % 2, bool(n % 3), n + 1, None, mqtt5=False) for n in range(50))
    lean, _ = feed(LeanClient, [stream], mqtt5=False)
    plain, _ = feed(mqtt.Client, [stream], mqtt5=False)
    assert lean == plain and len(lean) == 50


def test_a_stream_longer_than_one_chunk_arrives_whole_and_in_order() -> None:
    topic = b"restaurants/r/devices/t/heartbeat"
    stream = b"".join(publish_packet(topic, b"%d" % n + b"." * 200, 0, False, 1, None) for n in range(1_000))
    assert len(stream) > 3 * READ_CHUNK
    piece = 3 * READ_CHUNK // 2  # more than a chunk, less than the socket pair holds
    lean, codes = feed(LeanClient, [stream[at : at + piece] for at in range(0, len(stream), piece)])
    assert [int(m[1].rstrip(b".")) for m in lean] == list(range(1_000))
    assert codes[-1] == MQTTErrorCode.MQTT_ERR_AGAIN


def test_a_truncated_packet_is_refused_as_paho_refuses_it() -> None:
    # Remaining length 5, but the topic length says 300: paho calls it a protocol error.
    bad = bytes([0x30, 5]) + (300).to_bytes(2, "big") + b"abc"
    lean_seen, lean_codes = feed(LeanClient, [bad])
    plain_seen, plain_codes = feed(mqtt.Client, [bad])
    assert lean_seen == plain_seen == []
    assert lean_codes[-1] == plain_codes[-1] != MQTTErrorCode.MQTT_ERR_SUCCESS


def test_the_closed_connection_is_seen_once_the_chunk_is_used_up() -> None:
    with receiving(LeanClient) as (client, sender, seen):
        sender.sendall(publish_packet(b"t", b"last", 1, False, 7, None))
        sender.close()
        codes = read_all(client)
        assert [m[1] for m in seen] == [b"last"]
        assert codes[-1] == MQTTErrorCode.MQTT_ERR_CONN_LOST
