"""amqtt's `Broker` with its CONNECT handling fixed where it breaks the device protocol.

amqtt 0.12.1, when a CONNECT arrives:
- drops (clean session) or takes over (persistent session) any existing session with the incoming
  client id *before* asking the auth plugins: a wrong password could cut a device off;
- with a clean session, leaves the old connection open next to the new one [MQTT-3.1.4-2];
- with a persistent session, lets the old connection's clean-up mark the shared session
  disconnected after the new one attached, so the new connection never receives anything.

and, once connected, replays to the new client the retained messages matching *every* filter any
client on the broker holds, with no permission check: one restaurant's device received another
restaurant's retained presence (and the loop over the broker's subscriptions can fail with
"dictionary changed size during iteration" when several clients connect at once).

and it never answers a CONNECT of MQTT 5: it reads the properties as 3.1.1 fields and waits for bytes
that never come, so a client that tries MQTT 5 first (the bridge does) waited out its own CONNACK
timeout (3 s) before it fell back to 3.1.1.

and it never ends a silent connection: its reader waits `keep_alive` seconds for a packet, logs the
timeout and waits again, so a device whose network vanished held its session, and its will, until the
operating system gave the socket up (never, for a peer that sends nothing).

and it sends a PUBACK once a PUBLISH is queued for the connection's delivery loop, and that loop stops
when the connection ends: what was queued and not yet delivered was dropped, acknowledged or not, and
the will went out before it (a bridge that stopped right after its last PUBACK left older retained
statuses behind; a device's queued status could be stored over its will).

`GuardedBroker` replays retained messages only for filters the session itself holds, and
authenticates first, then ends the old connection the way a lost connection ends
(its will is published, as Mosquitto does on a takeover) and waits for that before it continues.
A CONNECT of another protocol level gets CONNACK 0x01 and the connection is closed [MQTT-3.1.2-2].
`GuardedHandler` ends a connection silent for one and a half keep-alives [MQTT-3.1.2-24] the same way,
and reports a connection's end to the broker's loop only once that loop has delivered everything the
connection published (bounded by `DRAIN_TIMEOUT_S`), so the will comes last, as with Mosquitto.
The amqtt version is pinned (pyproject.toml) because this overrides private methods.
"""

import asyncio
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, Session
from amqtt.utils import gen_client_id

logger = logging.getLogger(__name__)

TAKEOVER_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 3.0  # < TAKEOVER_TIMEOUT_S: a takeover waits for the old connection's drain
MQTT_311_LEVEL = 4
UNACCEPTABLE_PROTOCOL_LEVEL = bytes([0x20, 0x02, 0x00, 0x01])  # CONNACK, no session, return code 0x01


async def read_exactly(reader: ReaderAdapter, n: int) -> bytes:
    try:
        data = await reader.read(n)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise NoDataError(f"connection ended in its CONNECT: {exc}") from exc
    if len(data) < n:
        raise NoDataError("connection ended in its CONNECT")
    return data


async def read_protocol_level(reader: ReaderAdapter) -> tuple[int | None, bytes]:
    """The protocol level of the CONNECT that opens a connection (None if it is not an MQTT CONNECT),
    and the bytes read to learn it: the fixed header, the protocol name and the level byte."""
    head = bytearray(await read_exactly(reader, 1))
    for _ in range(4):  # the remaining length: 1 to 4 bytes, the high bit set on all but the last
        head += await read_exactly(reader, 1)
        if not head[-1] & 0x80:
            break
    if head[0] & 0xF0 != 0x10:
        return None, bytes(head)
    head += await read_exactly(reader, 7)  # name length (2), "MQTT" (4), level (1)
    return (head[-1] if head[-7:-1] == b"\x00\x04MQTT" else None), bytes(head)


class PrefixedReader(ReaderAdapter):
    """Hands out `head` (bytes already read from `reader`) first, then reads on from `reader`."""

    def __init__(self, head: bytes, reader: ReaderAdapter) -> None:
        self._head = head
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self._head:
            return await self._reader.read(n)
        if n == -1:
            data, self._head = self._head + await self._reader.read(-1), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        return data + await self._reader.read(n - len(data)) if len(data) < n else data

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def silence_allowed_s(keep_alive: int) -> int:
    """One and a half keep-alives, rounded up to amqtt's whole seconds; 0: no keep-alive."""
    return (keep_alive * 3 + 1) // 2


class GuardedHandler(BrokerProtocolHandler):
    """Ends a connection that sent nothing for its allowed silence as a lost one (its will is published),
    and ends any connection only after what it published has been delivered."""

    _closing: asyncio.Task[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set while the broker's loop waits for the next message: it has delivered every one it took.
        self._loop_waits = asyncio.Event()

    def handle_read_timeout(self) -> None:
        # Called from the reader loop (which then waits again); the broker's clean-up cancels that loop.
        if self._closing is None:
            client = self.session.client_id if self.session else None
            logger.info("client %r sent nothing for 1.5 keep-alives: closing its connection", client)
            self._closing = asyncio.ensure_future(self.handle_connection_closed())

    async def mqtt_deliver_next_message(self) -> ApplicationMessage | None:
        # The broker's loop asks for a message once it has delivered (broadcast, retained) the one before.
        self._loop_waits.set()
        try:
            return await super().mqtt_deliver_next_message()
        finally:
            self._loop_waits.clear()

    async def wait_disconnect(self) -> DisconnectPacket | None:
        # The broker's loop handles the end of the connection (the will, then the clean-up) as soon as this
        # returns, and drops what is still queued: return once the queue is delivered.
        ended = await super().wait_disconnect()
        try:
            await asyncio.wait_for(self._delivered(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            client = self.session.client_id if self.session else None
            left = self.session.delivered_message_queue.qsize() if self.session else 0
            logger.warning("client %r ended with %d messages undelivered after %.0f s", client, left, DRAIN_TIMEOUT_S)
        return ended

    async def _delivered(self) -> None:
        if self.session is None:
            return
        queue = self.session.delivered_message_queue
        while not (self._loop_waits.is_set() and queue.empty()):
            if self._loop_waits.is_set():
                await asyncio.sleep(0)  # a message was just queued: the loop's `get` takes it on its next step
            else:
                await self._loop_waits.wait()


class GuardedBroker(Broker):
    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        level, head = await read_protocol_level(reader)
        if level is not None and level != MQTT_311_LEVEL:
            writer.write(UNACCEPTABLE_PROTOCOL_LEVEL)
            await writer.drain()
            await writer.close()
            raise AMQTTError(f"CONNECT of protocol level {level} from {remote_address}:{remote_port}: 3.1.1 only")
        try:
            # amqtt's caller goes on with `reader` itself: the CONNECT is read whole from this one.
            connect_reader = PrefixedReader(head, reader)
            handler, incoming = await GuardedHandler.init_from_connect(connect_reader, writer, self.plugins_manager)
        except (AMQTTError, MQTTError, NoDataError) as exc:
            # amqtt has already answered a malformed CONNECT where it could; the caller logs and closes.
            raise AMQTTError(f"bad CONNECT from {remote_address}:{remote_port}: {exc}") from exc

        if not await self._authenticate(incoming, self.listeners_config["default"]):
            handler.attach(incoming, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise AMQTTError(f"refused client {incoming.client_id!r} from {remote_address}:{remote_port}")

        client_id = incoming.client_id
        existing = self._sessions[client_id][0] if client_id in self._sessions else None
        if existing is not None and existing.transitions.is_connected():
            await self._end_old_connection(client_id, existing)

        session = incoming
        if incoming.clean_session and not client_id:
            incoming.client_id = gen_client_id()
        elif existing is not None and not incoming.clean_session and not existing.clean_session:
            session = existing  # resume its subscriptions and queued messages
            # The new CONNECT brings its own will, keep-alive and credentials.
            session.will_flag = incoming.will_flag
            session.will_message = incoming.will_message
            session.will_topic = incoming.will_topic
            session.will_qos = incoming.will_qos
            session.will_retain = incoming.will_retain
            session.keep_alive = incoming.keep_alive
            session.username = incoming.username
            session.password = incoming.password
        elif existing is not None:
            await self._delete_session(client_id)  # nothing to resume
        session.parent = 1 if session is existing else 0

        # amqtt's reader waits `keep_alive` seconds for each packet: make that the allowed silence (plus
        # its broker-wide `timeout-disconnect-delay`, 0 unless configured).
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0:
            session.keep_alive = silence_allowed_s(session.keep_alive) + (delay if isinstance(delay, int) else 0)
        return handler, session

    async def _end_old_connection(self, client_id: str, session: Session) -> None:
        """Close the connection that holds `client_id` as if it were lost, and wait until it is."""
        _session, old_handler = self._sessions[client_id]
        logger.info("client %r connected again: closing its previous connection", client_id)
        # Its message loop sees a lost connection: publishes the will, stops, marks it disconnected.
        await old_handler.handle_connection_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_TIMEOUT_S
        while session.transitions.is_connected():
            if loop.time() > deadline:
                raise AMQTTError(f"the previous connection of {client_id!r} did not close in time")
            await asyncio.sleep(0.01)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this after a SUBSCRIBE (the session holds the filter by then) and, on every
        # CONNECT, for every filter of every client. Returning without awaiting anything for filters
        # that are not the session's also keeps amqtt's loop over its subscriptions from being
        # interleaved with other connections' subscribes.
        holders = self._subscriptions.get(subscription[0], ())
        if not any(holder.client_id == session.client_id for holder, _ in holders):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)
