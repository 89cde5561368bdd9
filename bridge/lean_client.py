"""paho's Client with a cheaper receive path for the bridge's stream of small PUBLISH packets.

Two costs of paho 2.2 dominated the bridge's main thread at 25,000 heartbeats/s
(docs/benchmarks.md §1):

- it reads each packet with three `recv` calls (the command byte, the length, the rest) and a fourth
  that finds the socket empty. `LeanClient` reads the socket in chunks and serves paho's small reads
  from the chunk;
- for MQTT 5 it builds a `Properties` object per PUBLISH (13 µs, against 1.8 µs for the rest of the
  decoding), even when the packet has no properties, which a heartbeat never has. `LeanClient`
  decodes such a packet itself and leaves `properties` None. Anything else (properties present, QoS 2,
  an empty topic, a short packet) goes through paho's own decoding and its errors.

A third one showed on this machine's slower cores (2026-11-27: 13.5 µs a message of ~55 µs in all):
handing the packet to `on_message` as an `MQTTMessage`, whose construction builds a `threading.Condition`
for its `MQTTMessageInfo`, then matching the topic against the filtered callbacks. With `on_lean_message`
set, such a packet (whose topic is valid UTF-8) goes to it as plain values instead: ~1 µs.

Then half of what was left was paho's reading machinery per packet (`_packet_read`: three small reads,
its state dict, `_packet_handle`). `read_packets` takes such PUBLISH packets that are already whole in
the chunk straight from it (`_take_whole`), and leaves everything else, a packet cut by the chunk's end
included, to `_packet_read`.

All ride on private methods (`_sock_recv`, `_handle_publish`, `_in_packet`), which is why paho is
pinned below 2.3 in pyproject.toml. tests/test_lean_client.py checks the decoding against paho's.
"""

from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

READ_CHUNK = 65_536

# topic, payload, qos, retain, mid, time_func() at receipt
LeanMessage = Callable[[str, bytes, int, bool, int, float], None]


class LeanClient(mqtt.Client):
    _rbuf = b""
    _rpos = 0
    _rsock: object = None
    on_lean_message: LeanMessage | None = None  # only for a client without filtered callbacks

    def buffered(self) -> bool:
        """Bytes already read from the socket and not yet handed to paho: the socket will not say so."""
        return self._rpos < len(self._rbuf) and self._rsock is self._sock

    def heard_from_broker(self) -> None:
        """Count the broker as heard from now, and no PINGREQ as waiting for its answer.

        For a reader that holds back on purpose while the broker's bytes wait unread (`BrokerLink`): the
        PINGRESP is somewhere behind them. paho's keepalive reads `_last_bytes_received` and `_ping_t`.
        """
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        self._ping_t = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: what was left belongs to the old one
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return data  # also the empty read of a closed connection
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = end = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:end]

    def read_packets(self, limit: int) -> MQTTErrorCode:
        """Read up to `limit` packets: `loop_read`'s work for one readable socket, without its count of one.

        Returns MQTT_ERR_AGAIN once the socket is empty, MQTT_ERR_SUCCESS with `limit` read (more may
        wait in the chunk: `buffered()`), or the error `_packet_read` met.
        """
        left = limit
        while left > 0:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_AGAIN  # closed by a callback: nothing more to read
            left -= self._take_whole(left)
            if left <= 0:
                break
            rc = self._packet_read()
            left -= 1
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _take_whole(self, limit: int) -> int:
        """Hand the PUBLISH packets already whole in the chunk to `on_lean_message`; how many it took.

        Only between two packets (paho has none half-read), and only what `_handle_publish` would hand
        over itself: MQTT 5, QoS 0 or 1, a non-empty UTF-8 topic, no properties. It stops at anything
        else, which `_packet_read` then reads from the same place.
        """
        lean = self.on_lean_message
        if lean is None or self._protocol != mqtt.MQTTv5 or self._in_packet["command"] or self._rsock is not self._sock:
            return 0
        buf, pos = self._rbuf, self._rpos
        end = len(buf)
        taken = 0
        while taken < limit and pos < end:
            header = buf[pos]
            if header & 0xF0 != 0x30:
                break  # not a PUBLISH: paho's
            length, shift, i = 0, 0, pos + 1
            while i < end and i <= pos + 4:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break  # the length runs past the chunk, or past 4 bytes: paho's
            body_end = i + length
            fields = publish_fields(header, buf, i, body_end) if body_end <= end else None
            if fields is None:
                break  # cut by the chunk's end, or not one `_handle_publish` would hand over: paho's
            raw_topic, payload, qos, retain, mid = fields
            try:
                topic = raw_topic.decode()
            except UnicodeDecodeError:
                break  # `_handle_publish` hands it to on_message, with the topic as bytes, as paho does
            self._rpos = pos = body_end
            taken += 1
            self._deliver(lean, topic, payload, qos, retain, mid)
        if taken:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        return taken

    def _deliver(
        self, lean: LeanMessage, topic: str, payload: bytes, qos: int, retain: bool, mid: int
    ) -> MQTTErrorCode:
        """Hand a PUBLISH to `on_lean_message` as `_handle_on_message` hands one to `on_message`."""
        with self._in_callback_mutex:
            lean(topic, payload, qos, retain, mid, mqtt.time_func())
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        if self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        fields = publish_fields(header, packet, 0, len(packet))
        if fields is None:
            return super()._handle_publish()
        raw_topic, payload, qos, retain, mid = fields
        lean = self.on_lean_message
        if lean is not None:
            try:
                topic = raw_topic.decode()
            except UnicodeDecodeError:
                pass  # on_message, with the topic as bytes
            else:
                return self._deliver(lean, topic, payload, qos, retain, mid)
        message = mqtt.MQTTMessage(mid=mid, topic=raw_topic)
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = retain
        message.payload = payload
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def publish_fields(
    header: int, buf: bytes | bytearray, start: int, end: int
) -> tuple[bytes, bytes, int, bool, int] | None:
    """(topic, payload, qos, retain, mid) of the PUBLISH whose body is buf[start:end], or None unless it is
    one `LeanClient` decodes itself: QoS 0 or 1, a non-empty topic, no properties (MQTT 5)."""
    qos = (header & 0x06) >> 1
    topic_end = start + 2 + int.from_bytes(buf[start : start + 2], "big")
    at = topic_end + (2 if qos else 0)
    if qos > 1 or topic_end == start + 2 or at >= end or buf[at] != 0:
        return None
    mid = int.from_bytes(buf[topic_end:at], "big") if qos else 0
    return bytes(buf[start + 2 : topic_end]), bytes(buf[at + 1 : end]), qos, bool(header & 0x01), mid
