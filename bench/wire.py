"""The few MQTT 3.1.1 packets a load generator needs, encoded by hand on blocking sockets.

A paho client costs tens of microseconds of Python per publish; the load generator shares two cores
with the broker and the bridge it measures, so every microsecond it spends is taken from them. A
heartbeat here is one bytes concatenation and one `send`: its topic, epoch and the packet header
are fixed per device (a 13-digit millisecond timestamp keeps the length constant).
"""

import socket
import struct

CONNECT, CONNACK, PUBLISH, PUBACK, DISCONNECT = 0x10, 0x20, 0x30, 0x40, 0xE0
KEEPALIVE_S = 120


class WireError(RuntimeError):
    """The broker refused or answered something unexpected."""


def varint(length: int) -> bytes:
    """MQTT's Remaining Length: 7 bits a byte, high bit = more follows."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def field(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, will_topic: str, will_payload: bytes) -> bytes:
    # username, password, will retain, will QoS 1, will flag, clean session
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    header = field(b"MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S)
    payload = (
        field(client_id.encode())
        + field(will_topic.encode())
        + field(will_payload)
        + field(username.encode())
        + field(password.encode())
    )
    return packet(CONNECT, header + payload)


def publish_packet(topic: str, payload: bytes, qos: int = 0, retain: bool = False, packet_id: int = 1) -> bytes:
    body = field(topic.encode()) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(PUBLISH | (qos << 1) | int(retain), body)


def heartbeat_prefix(topic: str, epoch: int) -> bytes:
    """A QoS 0 heartbeat packet up to its timestamp; append 13 ASCII digits and `}` to complete it."""
    payload_len = len(f'{{"epoch":{epoch},"ts":'.encode()) + 13 + 1
    body_len = 2 + len(topic.encode()) + payload_len
    return bytes([PUBLISH]) + varint(body_len) + field(topic.encode()) + f'{{"epoch":{epoch},"ts":'.encode()


DISCONNECT_PACKET = bytes([DISCONNECT, 0])


def read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise WireError("the broker closed the connection")
        data += chunk
    return data


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """(packet type byte, body) of the next packet from the broker."""
    first = read_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = read_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, read_exact(sock, length) if length else b""


def expect_connack(sock: socket.socket) -> None:
    kind, body = read_packet(sock)
    if kind & 0xF0 != CONNACK or len(body) != 2:
        raise WireError(f"expected CONNACK, got packet type {kind:#x}")
    if body[1] != 0:
        raise WireError(f"CONNECT refused with return code {body[1]} (bad credentials or client id?)")


def expect_puback(sock: socket.socket) -> None:
    kind, _body = read_packet(sock)
    if kind & 0xF0 != PUBACK:
        raise WireError(f"expected PUBACK, got packet type {kind:#x}")
