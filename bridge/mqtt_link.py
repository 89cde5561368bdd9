"""One MQTT connection of the bridge to one broker shard, driven by the asyncio loop.

paho runs without a network thread: its socket sits in the loop's selector and the loop calls
`loop_read` / `loop_write` / `loop_misc` (paho's external-loop API). A paho thread would share the
GIL with the loop and hand it back and forth on every message, which capped one bridge near 17k
heartbeats/s (docs/benchmarks.md); on the loop the callbacks run where the batches are made.
Only the blocking TCP connect runs in a worker thread, so the socket callbacks it triggers hop back
to the loop through `call_soon_threadsafe`.
"""

import array
import asyncio
import contextlib
import fcntl
import logging
import random
import socket
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.inbox import Inbox
from bridge.lean_client import LeanClient
from core.ids import HEARTBEAT_FILTER, PRESENCE_FILTER, STATUS_FILTER
from core.retained_window import RetainedWindow
from core.settings import Settings
from core.task_stop import cancel_and_wait

logger = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 3.0
READ_PACKETS = 500  # packets per readable socket event: one selector wake-up for many heartbeats
MISC_INTERVAL_S = 1.0
KEEPALIVE_S = 30
TICK_EVERY_S = 0.25  # how often a link sends itself a tick through its broker (`heard_up_to_ms`)
TICK_FIRST_S = 30.0  # a connection whose ticks never come back (a broker's ACL without them) is not waited for
RETAINED_WINDOW = 1_000  # retained statuses sent and not acknowledged yet, per link (core/retained_window.py)
RECEIVE_MAXIMUM = 65_535  # QoS 1 messages the broker may send before the bridge's first PUBACK (MQTT 5's most)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as paho delivered it; `mid` is acked once its effect is in Redis."""

    link: "BrokerLink"
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received: float  # time.monotonic() when paho parsed it


class BrokerLink:
    """Subscribes to presence and heartbeats of one shard; MQTT 5 shared subscriptions where possible.

    With MQTT 5 the bridge instances share the live stream (`$share/<group>/…`), but a shared
    subscription never receives retained messages, so each instance also holds a plain presence
    subscription until it has read the retained state (reconciliation), then drops it. MQTT 3.1.1
    brokers (amqtt) get plain subscriptions; several bridges then each see every message, which the
    (epoch, state) rule makes harmless.
    """

    def __init__(
        self,
        url: str,
        index: int,
        settings: Settings,
        instance: str,
        inbox: Inbox[Inbound],
        on_retained_acked: Callable[[int], None] | None = None,
    ) -> None:
        """`on_retained_acked(token)`: the broker acknowledged a `publish_retained` of this link (on the loop)."""
        parts = urlsplit(url)
        self.url = url
        self.index = index
        self.retained = RetainedWindow(RETAINED_WINDOW, on_retained_acked or (lambda _token: None))
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (9001 if parts.scheme == "ws" else 1883)
        self.transport = "websockets" if parts.scheme == "ws" else "tcp"
        self.settings = settings
        self.client_id = f"bridge-{instance}-{index}"
        self.inbox = inbox
        self.mqtt5 = settings.mqtt_protocol in ("auto", "5")
        self.connected = False
        self.reconcile_subscribed_at: float | None = None
        self.last_retained_at = 0.0
        self.reconciling = True
        self._reconcile_mid: int | None = None
        self._fell_back = False
        self._ever_connected = False
        self._stopping = False
        self._reading: socket.socket | None = None
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnect: asyncio.Task[None] | None = None
        self._attempt = 0
        self._loss_told = False  # this connection's loss was handled (paho may tell it twice)
        # Not a restaurant's topic (ids have no "~"), but one the platform's user may write and read on
        # every broker under the ACL as it is (`restaurants/+/status`, `restaurants/#`).
        self.tick_topic = f"restaurants/~tick-{self.client_id}/status"
        # The send time of the last tick read back: all sent before it is read. Until the first comes
        # back, when the link was made (`heard_up_to`).
        self.heard_up_to_ms = int(time.time() * 1000)
        self._ticks_back = False  # a tick came back on this connection
        self._connected_at = 0.0
        self._tick_warned = False
        self._connect_again: float | None = None  # the delay of a connect asked for during an attempt
        self._client = self._new_client()

    def _new_client(self) -> LeanClient:
        protocol = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        client = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport=self.transport,  # type: ignore[arg-type]
            # MQTT 3.1.1 has no session expiry: a persistent session of a bridge that never returns would
            # queue forever on the broker. Plain subscriptions plus reconciliation make it unnecessary.
            clean_session=None if self.mqtt5 else True,
            manual_ack=True,
            reconnect_on_failure=False,  # the loop reconnects, with backoff and jitter
        )
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.max_inflight_messages_set(0)  # no limit in paho: `self.retained` holds back what waits
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_lean_message = self._take
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # --- lifecycle, on the loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tasks.append(asyncio.create_task(self._misc_forever(), name=f"mqtt-misc-{self.client_id}"))
        self._tasks.append(asyncio.create_task(self._tick_forever(), name=f"mqtt-tick-{self.client_id}"))
        self._schedule_connect(0.0)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait([*self._tasks, *([self._reconnect] if self._reconnect else [])])
        if self._client.socket() is not None:
            self._client.disconnect()
            deadline = time.monotonic() + 2.0
            while self._client.socket() is not None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # paho says nothing when its DISCONNECT is out; poll briefly
        self._detach()

    def _schedule_connect(self, delay: float) -> None:
        # The attempt that just failed asks for the next one from inside its own task, which is not done
        # yet: it must still be replaced. (It was not: a broker still down at the first attempt after a
        # restart left the bridge disconnected for good, the intermittent broker fault run.)
        current = self._reconnect
        if self._stopping:
            return
        if current is None or current.done() or current is asyncio.current_task():
            self._reconnect = asyncio.create_task(self._connect_after(delay), name=f"mqtt-connect-{self.client_id}")
        else:
            # An attempt is still in its worker thread, and this comes from the loop: amqtt's refusal of
            # MQTT 5, read before the thread that sent the CONNECT got its core back (CI, 2026-11-27).
            # Dropped, the bridge never connected again; the attempt asks for it once it is done.
            self._connect_again = delay

    async def _connect_after(self, delay: float) -> None:
        try:
            await self._connect_once(delay)
        finally:
            again, self._connect_again = self._connect_again, None
            if again is not None and self._reconnect is asyncio.current_task():  # else a newer one is on its way
                self._schedule_connect(again)

    async def _connect_once(self, delay: float) -> None:
        await asyncio.sleep(delay)
        assert self._loop is not None
        properties = None
        kwargs: dict[str, Any] = {}
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            # Short on purpose: Mosquitto keeps handing a share of the group's messages to an offline
            # member until its session expires, so a bridge that is gone for good must not hold one long.
            properties.SessionExpiryInterval = int(self.settings.bridge_session_expiry_s)
            # Without it Mosquitto sends a v5 client at most `max_inflight_messages` unacknowledged QoS 1
            # messages, and the bridge acks a batch only once applied: 9,000 graceful stops at once then
            # waited up to 5 s in the broker before the bridge even read (and stamped) them. The inbox's
            # high-water mark pauses reading instead.
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs["clean_start"] = False
        connect = partial(self._client.connect, self.host, self.port, KEEPALIVE_S, properties=properties, **kwargs)
        self._loss_told = False  # this attempt may be lost in its turn
        try:
            await self._loop.run_in_executor(None, connect)
        except OSError as exc:
            self._retry(f"connect failed: {exc}")
            return
        if self.mqtt5 and self.settings.mqtt_protocol == "auto" and not self._ever_connected:
            # A 3.1.1-only broker should answer an MQTT 5 CONNECT with CONNACK 0x01, as the project's
            # amqtt broker does (see `_on_connect`); one that neither answers nor closes (amqtt as
            # released) is waited for only so long, then spoken to in 3.1.1.
            self._loop.call_later(CONNACK_TIMEOUT_S, self._connack_overdue)

    def _retry(self, why: str) -> None:
        """Exponential backoff with full jitter: a broker restart must not meet every bridge at once."""
        delay = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**self._attempt))
        self._attempt += 1
        if not self._stopping:
            logger.warning("%s: %s; reconnecting in %.1f s", self.url, why, delay)
            self._schedule_connect(delay)

    def _connack_overdue(self) -> None:
        self._fall_back("did not answer an MQTT 5 CONNECT")

    def _fall_back(self, why: str) -> None:
        if not self._ever_connected and not self._fell_back and not self._stopping:
            logger.info("%s %s; using MQTT 3.1.1", self.url, why)
            self._fell_back = True
            self.mqtt5 = False
            old, self._client = self._client, self._new_client()
            self.retained.client_replaced()
            self._detach()
            old.disconnect()
            self._schedule_connect(0.0)

    async def _misc_forever(self) -> None:
        """paho's keepalive: PINGREQ on time, and a broker that stopped answering is noticed.

        Except that a link paused because the inbox is full (`_pause`) reads nothing, the PINGRESP
        included, and paho took the broker for gone after one keepalive: in the 100,000 storm all eight
        links dropped at once, and each reconnect read its shard's retained presence again, the backlog
        growing with every round (2026-11-27). While paused with the broker's bytes waiting unread, those
        bytes are the broker's answer.
        """
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            if self._client.socket() is None:
                continue
            if self._paused and self._bytes_waiting():
                self._client.heard_from_broker()
            self._client.loop_misc()

    async def _tick_forever(self) -> None:
        """Send this link a tick through its broker every TICK_EVERY_S: see `heard_up_to_ms`."""
        while True:
            await asyncio.sleep(TICK_EVERY_S)
            if self.connected:
                self._client.publish(self.tick_topic, str(int(time.time() * 1000)).encode(), qos=0)

    def heard_up_to(self, now_ms: int) -> int:
        """The instant up to which everything the broker had for this link has been read.

        A tick goes out, queues in the broker behind what waits there for the bridge, and comes back
        after it: once read, every device message the broker had before the tick's send time has been
        read too. So silence is judged only up to there (`Bridge._horizon_ms`). Without it, a bridge
        paused on a full inbox in the 100,000 storm read heartbeats minutes late, swept their devices as
        stale in the meantime, and the statuses online fell from 38,338 to 13,230 (2026-11-27).
        A link that is not connected does not hold the others back (its devices cannot be heard from);
        nor does a connection whose ticks never came back within TICK_FIRST_S of its CONNACK.

        Before its first tick is back, a link counts as having read up to when it was made, as the
        bridge's horizon did before ticks. Not 0: a scheduler rebuilding in that quarter second settled
        every restaurant as of 1970 and then walked them through 56 years of openings, and the boundaries
        of the day waited behind that walk for up to 25 s (the broker-restart churn run, CI 2026-11-27).
        """
        if not self.connected:
            return now_ms
        if not self._ticks_back and time.monotonic() - self._connected_at > TICK_FIRST_S:
            if not self._tick_warned:
                self._tick_warned = True
                logger.warning("%s: no tick came back in %.0f s (ACL?); its silence is judged by the clock",
                               self.url, TICK_FIRST_S)  # fmt: skip
            return now_ms
        return self.heard_up_to_ms

    def _bytes_waiting(self) -> bool:
        sock = self._reading
        if sock is None or sock.fileno() < 0:
            return False
        if self._client.buffered():
            return True
        count = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
        except OSError:
            return False
        return count[0] > 0

    # --- paho's socket callbacks (the connect in a worker thread triggers some of them)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._attach, client, sock)

    def _attach(self, client: mqtt.Client, sock: socket.socket) -> None:
        assert self._loop is not None
        if client is self._client and sock.fileno() >= 0:
            self._loop.add_reader(sock, self._readable, client)
            self._reading = sock
            self._paused = False

    def _readable(self, client: LeanClient) -> None:
        """Read every packet the socket holds (up to READ_PACKETS) in one selector wake-up.

        paho's `loop_read` reads as many packets as it has QoS>0 messages in flight, which for
        QoS 0 heartbeats is one: a wake-up of the loop per heartbeat cost a third of the bridge's
        time. This is `loop_read` with the count lifted (`LeanClient.read_packets`), on private methods (paho is
        pinned below 2.3 in pyproject.toml for that reason).
        """
        if client.socket() is None:
            return
        rc = client.read_packets(READ_PACKETS)
        if rc > 0:
            client._loop_rc_handle(rc)
            return
        if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
            return
        self._read_buffered_soon(client)

    def _read_buffered_soon(self, client: LeanClient) -> None:
        """Packets already read from the socket get no selector event of their own: read them next."""
        if client is self._client and client.buffered() and not self._paused and not self._stopping:
            assert self._loop is not None
            self._loop.call_soon(self._readable, client)

    def _pause(self) -> None:
        if self._reading is not None and self._loop is not None and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._reading)
            self.inbox.resume_later(self._resume)

    def pause_reading(self) -> None:
        """Take no more messages (shutdown); the connection stays up for acks and publishes."""
        self._stopping = True
        if self._reading is not None and self._loop is not None and self._reading.fileno() >= 0:
            self._loop.remove_reader(self._reading)

    def _resume(self) -> None:
        self._paused = False
        if self._stopping:
            return
        if self._reading is not None and self._loop is not None and self._reading.fileno() >= 0:
            self._loop.add_reader(self._reading, self._readable, self._client)
            self._read_buffered_soon(self._client)

    def _on_socket_close(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        # Called just before paho closes the socket: unregister while its descriptor is still valid.
        fd = sock.fileno()
        self._on_loop(self._forget_fd, fd)

    def _forget_fd(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if self._reading is not None and self._reading.fileno() in (fd, -1):
            self._reading = None

    def _detach(self) -> None:
        if self._reading is not None and self._loop is not None and self._reading.fileno() >= 0:
            self._loop.remove_reader(self._reading)
            self._loop.remove_writer(self._reading)
        self._reading = None

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._want_write, client, sock)

    def _want_write(self, client: mqtt.Client, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: self._loop.remove_writer(fd) if self._loop and fd >= 0 else None)

    # --- paho's protocol callbacks, on the loop

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        # On the loop (paho is driven from it). paho keeps a QoS 1 message across reconnects and sends it
        # again, so every publish it took is acknowledged here in the end, once.
        if client is self._client:
            self.retained.acked(client, mid)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, properties: Any) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            if reason == "Unsupported protocol version" and self.settings.mqtt_protocol == "auto":
                self._fall_back("refused MQTT 5")  # a 3.1.1 broker that says so (CONNACK 0x01)
                return
            logger.error("%s refused the bridge: %s", self.url, reason)
            return
        logger.info("connected to %s as %s (MQTT %s)", self.url, self.client_id, "5" if self.mqtt5 else "3.1.1")
        self._ever_connected = True
        self._attempt = 0
        self.connected = True
        self._connected_at, self._ticks_back = time.monotonic(), False
        client.subscribe(self.tick_topic, qos=0)
        self.reconciling = True
        self.reconcile_subscribed_at = None
        if self.mqtt5:
            group = self.settings.mqtt_shared_group
            client.subscribe(
                [
                    (f"$share/{group}/{PRESENCE_FILTER}", SubscribeOptions(qos=1)),
                    (f"$share/{group}/{HEARTBEAT_FILTER}", SubscribeOptions(qos=0)),
                ]
            )
            # Statuses first: brokers send retained messages filter by filter, and a restored status must be
            # in Redis before a retained birth settles that restaurant.
            _, self._reconcile_mid = client.subscribe(
                [(STATUS_FILTER, SubscribeOptions(qos=1)), (PRESENCE_FILTER, SubscribeOptions(qos=1))]
            )
        else:
            _, self._reconcile_mid = client.subscribe([(STATUS_FILTER, 1), (PRESENCE_FILTER, 1), (HEARTBEAT_FILTER, 0)])
        self.retained.connected(client, getattr(properties, "ReceiveMaximum", None) if self.mqtt5 else None)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        if mid == self._reconcile_mid:
            self.reconcile_subscribed_at = time.monotonic()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self._client:
            return  # the MQTT 5 attempt that was replaced
        if self._loss_told:
            # paho 2.2 tells a keepalive timeout twice (`_check_keepalive`, then `loop_misc`): two
            # reconnects of one client id, the second taking the first's session over.
            return
        self._loss_told = True
        self.connected = False
        self._reading = None
        if not self._stopping:
            self._retry(f"connection lost ({reason})")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._take(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid, msg.timestamp)

    def _take(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, received: float) -> None:
        """Every PUBLISH: from `LeanClient.on_lean_message`, or paho's `on_message` for the rest."""
        if topic == self.tick_topic:
            with contextlib.suppress(ValueError):  # only this link writes there; anything else is ignored
                self.heard_up_to_ms = max(self.heard_up_to_ms, int(payload))
                self._ticks_back = True
            return
        if retain:
            self.last_retained_at = time.monotonic()
        self.inbox.put(Inbound(self, topic, payload, qos, retain, mid, received), urgent=qos > 0)  # not heartbeats
        if self.inbox.full:
            self._pause()

    # --- used by the worker

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)

    def begin_reconciliation(self) -> None:
        """Read the retained presence again (Redis lost its state): a new SUBSCRIBE re-sends it."""
        self.reconciling = True
        self.reconcile_subscribed_at = None
        options = SubscribeOptions(qos=1)
        if self.mqtt5:
            _, self._reconcile_mid = self._client.subscribe([(STATUS_FILTER, options), (PRESENCE_FILTER, options)])
        else:
            _, self._reconcile_mid = self._client.subscribe([(STATUS_FILTER, 1), (PRESENCE_FILTER, 1)])

    def end_reconciliation(self) -> None:
        """Drop what only reconciliation needs: the retained statuses, and (MQTT 5) the plain presence."""
        self.reconciling = False
        self._client.unsubscribe([PRESENCE_FILTER, STATUS_FILTER] if self.mqtt5 else STATUS_FILTER)

    def publish_retained(self, topic: str, payload: bytes, token: int) -> None:
        """QoS 1, retained, in order; sent once connected and the window has room, acknowledged by `token`."""
        self.retained.put(self._client, self.connected, (topic, payload, token))
