"""Confirmed publishing to one exchange over a bare AMQP 0-9-1 connection: the events' hot path.

Through aio-pika a persistent, confirmed publish cost ~500 µs of CPU on this machine (a `Message`,
aiormq's channel lock, its write queue and writer task, two timeouts, a socket write and futures for
every message; `python -m bench publish`). A birth publishes two events, and in a connection storm
that was about a third of the bridge's CPU. Here a publish marshals its three frames, adds them to a
buffer that is written once per turn of the event loop, and waits for RabbitMQ's confirm.

Only publishing is done here. Topology, dead letters and the consumers stay on aio-pika (core/amqp.py),
whose robust connection also declares the topology again after RabbitMQ comes back empty.

Every failure reaches the caller as a `ConnectionError`, one of `PUBLISH_OUTAGES`: a lost connection
fails each publish still waiting for its confirm, a nack fails its own publish, a closed channel (an
exchange missing) ends the connection. The next publish connects again, at most once per
`retry_after_s`, so an outage costs the callers a quick refusal, not a connect timeout each.
A publish's frames go out in call order on one channel, so RabbitMQ routes them in that order.
There is no flow control beyond the callers': each publish waits for its confirm, and the callers bound
how many are in flight (the bridge: 500 restaurants at once).

A confirm not back within `confirm_timeout_s` fails its publish with a `TimeoutError` (an `OSError`, so
one of `PUBLISH_OUTAGES`). One timer serves every waiting publish, in tag order: the bridge once put an
`asyncio.timeout` around each restaurant's publishes, and those timers were ~10% of its CPU in a storm
of births (py-spy, 2026-11-28).
"""

import asyncio
import itertools
import logging
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import cast
from urllib.parse import unquote, urlsplit

from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.base import Frame
from pamqp.common import FieldTable
from pamqp.exceptions import PAMQPException

logger = logging.getLogger(__name__)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
CHANNEL = 1
FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 2, 3, 8
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type, channel, size, end
FRAME_MAX = 131072  # RabbitMQ's default; the lower of the two is used
HEARTBEAT_S = 60  # asked for; RabbitMQ's own (60) or lower wins
BASIC_CLASS = 60
# Basic properties that an event carries (AMQP 0-9-1, basic content header): one flag bit each, from
# bit 15 down in the order of the properties; their values follow in that order.
FLAG_CONTENT_TYPE, FLAG_DELIVERY_MODE, FLAG_MESSAGE_ID, FLAG_TYPE = 1 << 15, 1 << 12, 1 << 7, 1 << 5
PERSISTENT = 2


class PublishRefused(ConnectionError):
    """RabbitMQ nacked a message (an internal error of its own): not kept, publish it again."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str
    password: str
    vhost: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> "Endpoint":
        """`amqp://user:password@host:port/vhost` (or `amqps://`), as aio-pika reads it."""
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"not an AMQP URL: {url!r}")
        tls = parts.scheme == "amqps"
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (5671 if tls else 5672),
            username=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(path) or "/",
            tls=tls,
        )


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds 255 bytes at most, not {len(raw)}")
    return bytes((len(raw),)) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def content_frames(body: bytes, content_type: str, message_id: str, message_type: str, frame_max: int) -> bytes:
    """The content header (persistent, with the message's id and type) and the body, split to `frame_max`."""
    properties = (
        struct.pack(">H", FLAG_CONTENT_TYPE | FLAG_DELIVERY_MODE | FLAG_MESSAGE_ID | FLAG_TYPE)
        + _shortstr(content_type)
        + bytes((PERSISTENT,))
        + _shortstr(message_id)
        + _shortstr(message_type)
    )
    header = _frame(FRAME_HEADER, CHANNEL, struct.pack(">HHQ", BASIC_CLASS, 0, len(body)) + properties)
    step = frame_max - FRAME_OVERHEAD
    return header + b"".join(_frame(FRAME_BODY, CHANNEL, body[i : i + step]) for i in range(0, len(body), step))


class _Connection(asyncio.Protocol):
    """One connection with one channel in confirm mode."""

    def __init__(self, confirm_timeout_s: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.confirm_timeout_s = confirm_timeout_s
        self.deadlines: deque[tuple[float, int]] = deque()  # (loop time, tag) of each publish, in tag order
        self._expiry: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.replies: asyncio.Queue[Frame | ConnectionError] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[None]] = {}  # delivery tag → its publish, in tag order
        self.tag = 0
        self.out: list[bytes] = []
        self.failure: ConnectionError | None = None
        self.frame_max = FRAME_MAX
        self.heartbeat_s = 0
        self.heard_at = time.monotonic()
        self._beat: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's (under uvicorn) does not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(PROTOCOL_HEADER)

    def data_received(self, data: bytes) -> None:
        self.heard_at = time.monotonic()
        self.received += data
        while len(self.received) >= FRAME_OVERHEAD and self.failure is None:
            if self.received.startswith(b"AMQP"):
                self._abort(ConnectionError("RabbitMQ does not speak AMQP 0-9-1 on this port"))
                return
            end = 7 + int.from_bytes(self.received[3:7], "big") + 1
            if len(self.received) < end:
                return
            try:
                _used, _channel, value = amqp_frame.unmarshal(bytes(self.received[:end]))
            except PAMQPException as exc:
                self._abort(ConnectionError(f"unreadable frame from RabbitMQ: {exc}"))
                return
            del self.received[:end]
            self._on_frame(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to RabbitMQ lost ({exc or 'closed by RabbitMQ'})"))

    # frames in

    def _on_frame(self, value: object) -> None:
        if isinstance(value, spec.Basic.Ack):
            self._settle(value.delivery_tag, value.multiple, None)
        elif isinstance(value, spec.Basic.Nack):
            self._settle(value.delivery_tag, value.multiple, PublishRefused("RabbitMQ refused the message (nack)"))
        elif isinstance(value, spec.Connection.Close | spec.Channel.Close):
            closing = "connection" if isinstance(value, spec.Connection.Close) else "channel"
            reply = spec.Connection.CloseOk() if closing == "connection" else spec.Channel.CloseOk()
            self._send_method(0 if closing == "connection" else CHANNEL, reply)
            self._abort(ConnectionError(f"RabbitMQ closed the {closing}: {value.reply_code} {value.reply_text}"))
        elif isinstance(value, Frame) and not isinstance(value, spec.Basic.Return):
            self.replies.put_nowait(value)  # the handshake's answers

    def _settle(self, tag: int, multiple: bool, error: ConnectionError | None) -> None:
        tags = list(itertools.takewhile(lambda t: t <= tag, self.pending)) if multiple else [tag]
        for t in tags:
            waiter = self.pending.pop(t, None)
            if waiter is None or waiter.done():  # its publish was cancelled (timed out)
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    # frames out

    def _send_method(self, channel: int, method: Frame) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(amqp_frame.marshal(method, channel))

    def send(self, frames: bytes) -> asyncio.Future[None]:
        """Queue one message's frames; the future is its confirm."""
        if self.failure is not None:
            raise self.failure
        self.tag += 1
        waiter = self.loop.create_future()
        self.pending[self.tag] = waiter
        self.out.append(frames)
        if len(self.out) == 1:
            self.loop.call_soon(self._write)
        if self.confirm_timeout_s is not None:
            self.deadlines.append((self.loop.time() + self.confirm_timeout_s, self.tag))
            if self._expiry is None:
                self._expiry = self.loop.call_at(self.deadlines[0][0], self._expire)
        return waiter

    def _expire(self) -> None:
        """Fail the publishes whose confirm is overdue; then wait for the oldest still waiting."""
        self._expiry = None
        now, deadlines = self.loop.time(), self.deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self.pending):
            _at, tag = deadlines.popleft()
            waiter = self.pending.pop(tag, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(TimeoutError(f"RabbitMQ did not confirm within {self.confirm_timeout_s} s"))
        if deadlines and self.failure is None:
            self._expiry = self.loop.call_at(deadlines[0][0], self._expire)

    def _write(self) -> None:
        if self.out and self.failure is None and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # handshake

    async def _expect(self, kind: type[Frame]) -> Frame:
        reply = await self.replies.get()
        if isinstance(reply, ConnectionError):
            raise reply
        if not isinstance(reply, kind):
            raise ConnectionError(f"RabbitMQ answered {reply.name}, expected {kind.name}")
        return reply

    async def open(self, endpoint: Endpoint) -> None:
        start = await self._expect(spec.Connection.Start)
        assert isinstance(start, spec.Connection.Start)
        if "PLAIN" not in str(start.mechanisms).split():
            raise ConnectionError(f"RabbitMQ offers no PLAIN login (only {start.mechanisms})")
        # authentication_failure_close: a wrong password is told as such, not by a dropped connection.
        capabilities: FieldTable = {
            "publisher_confirms": True,
            "basic.nack": True,
            "authentication_failure_close": True,
        }
        self._send_method(0, spec.Connection.StartOk(
            client_properties={"product": "restaurant presence bridge", "capabilities": capabilities},
            mechanism="PLAIN", response=f"\0{endpoint.username}\0{endpoint.password}", locale="en_US",
        ))  # fmt: skip
        tune = await self._expect(spec.Connection.Tune)
        assert isinstance(tune, spec.Connection.Tune)
        self.frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self.heartbeat_s = min(tune.heartbeat, HEARTBEAT_S) if tune.heartbeat else HEARTBEAT_S
        self._send_method(0, spec.Connection.TuneOk(channel_max=tune.channel_max or 1, frame_max=self.frame_max,
                                                    heartbeat=self.heartbeat_s))  # fmt: skip
        self._send_method(0, spec.Connection.Open(virtual_host=endpoint.vhost))
        await self._expect(spec.Connection.OpenOk)
        self._send_method(CHANNEL, spec.Channel.Open())
        await self._expect(spec.Channel.OpenOk)
        self._send_method(CHANNEL, spec.Confirm.Select())
        await self._expect(spec.Confirm.SelectOk)
        self._beat = self.loop.call_later(self.heartbeat_s / 2, self._heartbeat)

    def _heartbeat(self) -> None:
        """Both sides send one every half period; a RabbitMQ silent for two periods is taken for gone."""
        if time.monotonic() - self.heard_at > 2 * self.heartbeat_s:
            self._abort(ConnectionError(f"RabbitMQ silent for over {2 * self.heartbeat_s} s"))
            return
        if self.transport is not None:
            self.transport.write(_frame(FRAME_HEARTBEAT, 0, b""))
        self._beat = self.loop.call_later(self.heartbeat_s / 2, self._heartbeat)

    async def close(self) -> None:
        if self.failure is None:
            self._write()
            self._send_method(
                0, spec.Connection.Close(reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0)
            )
            try:
                async with asyncio.timeout(1.0):
                    await self._expect(spec.Connection.CloseOk)
            except (ConnectionError, TimeoutError):
                pass
        self._abort(ConnectionError("publisher closed"))

    # ending

    def _abort(self, failure: ConnectionError) -> None:
        self._fail(failure)
        if self.transport is not None:
            self.transport.close()

    def _fail(self, failure: ConnectionError) -> None:
        if self.failure is not None:
            return
        self.failure = failure
        if self._beat is not None:
            self._beat.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        self.deadlines.clear()
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(failure)
        self.pending.clear()
        self.out.clear()
        self.replies.put_nowait(failure)


class LeanPublisher:
    """Persistent messages with confirms to one exchange; `publish` returns once RabbitMQ has the message."""

    def __init__(
        self,
        url: str,
        exchange: str,
        content_type: str = "application/json",
        connect_timeout_s: float = 5.0,
        retry_after_s: float = 1.0,
        confirm_timeout_s: float | None = None,
    ) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.confirm_timeout_s = confirm_timeout_s
        self.exchange = exchange
        self.content_type = content_type
        self.connect_timeout_s = connect_timeout_s
        self.retry_after_s = retry_after_s
        self._connection: _Connection | None = None
        self._publish_frame = b""
        self._connecting = asyncio.Lock()
        self._refused: tuple[float, ConnectionError] | None = None  # the last failed connect, and when
        self._closed = False

    async def publish(self, body: bytes, message_id: str, message_type: str) -> None:
        connection = self._connection
        if connection is None or connection.failure is not None:
            connection = await self._connect()
        frames = self._publish_frame + content_frames(
            body, self.content_type, message_id, message_type, connection.frame_max
        )
        await connection.send(frames)

    async def connect(self) -> None:
        """Connect now rather than at the first publish (a start fails early on a wrong URL or password)."""
        await self._connect()

    async def _connect(self) -> _Connection:
        async with self._connecting:
            if self._closed:
                raise ConnectionError("publisher closed")
            if self._connection is not None and self._connection.failure is None:
                return self._connection
            if self._refused is not None and time.monotonic() - self._refused[0] < self.retry_after_s:
                raise self._refused[1]
            e = self.endpoint
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    context = ssl.create_default_context() if e.tls else None
                    _transport, connection = await asyncio.get_running_loop().create_connection(
                        partial(_Connection, self.confirm_timeout_s), e.host, e.port, ssl=context
                    )
                    await connection.open(e)
            except (OSError, ConnectionError) as exc:  # TimeoutError is an OSError
                if connection is not None:
                    connection._abort(ConnectionError("connect failed"))
                why = str(exc) or type(exc).__name__
                refused = ConnectionError(f"cannot publish to RabbitMQ at {e.host}:{e.port}: {why}")
                self._refused = (time.monotonic(), refused)
                raise refused from exc
            self._refused = None
            self._publish_frame = amqp_frame.marshal(spec.Basic.Publish(exchange=self.exchange), CHANNEL)
            if self._connection is not None:
                logger.info("publishing to RabbitMQ at %s:%d again", e.host, e.port)
            self._connection = connection
            return connection

    async def close(self) -> None:
        async with self._connecting:
            self._closed = True
            if self._connection is not None:
                await self._connection.close()
