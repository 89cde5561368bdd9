"""One MQTT connection of the scheduler to one broker shard, for the retained `restaurants/{rid}/status`.

paho runs its own network thread here (`loop_start`). The scheduler only publishes — a few thousand
statuses a second at the 10:00 burst, nothing read — so the thread costs little; the bridge, which
reads 25k messages/s, drives paho from its loop instead (bridge/mqtt_link.py). paho keeps QoS 1
messages while disconnected and sends them again after reconnecting, so a broker outage only
delays the acknowledgements.

Like the bridge's links, each holds back its own statuses (core/retained_window.py): paho is given no
`max_inflight_messages`, whose walk of every held message on each PUBACK was paid here 100,000 times
in an opening burst, on paho's thread and under the GIL the settling needs. The window lives on the
event loop: statuses are put there, PUBACKs and CONNACKs are handed over to it.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.retained_window import RetainedWindow
from core.settings import Settings

logger = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 3.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
RETAINED_WINDOW = 1_000  # statuses handed to paho and not acknowledged yet, or the broker's Receive Maximum


class RetainedLink:
    """Publishes QoS 1 retained messages to one shard and reports each PUBACK on the event loop."""

    def __init__(
        self,
        url: str,
        index: int,
        settings: Settings,
        instance: str,
        on_acked: Callable[[list[int]], None],
    ) -> None:
        """`on_acked(tokens)`: the broker acknowledged the `publish`es of these tokens (on the loop)."""
        parts = urlsplit(url)
        self.url = url
        self.index = index
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (9001 if parts.scheme == "ws" else 1883)
        self.transport = "websockets" if parts.scheme == "ws" else "tcp"
        self.settings = settings
        self.client_id = f"scheduler-{instance}-{index}"
        self.mqtt5 = settings.mqtt_protocol in ("auto", "5")
        self.connected = False
        self._on_acked = on_acked
        self._tokens_acked: list[int] = []
        self.retained = RetainedWindow(RETAINED_WINDOW, self._tokens_acked.append)
        self._ever_connected = False
        self._fallback_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._acked: list[int] = []
        self._handoff_scheduled = False
        self._stopped = False
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311,
            transport=self.transport,  # type: ignore[arg-type]
            clean_session=None if self.mqtt5 else True,
        )
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.max_inflight_messages_set(0)  # no limit in paho: the window keeps it (see the module's text)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        return client

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    async def stop(self) -> None:
        self._stopped = True
        if self._fallback_timer is not None:
            self._fallback_timer.cancel()
        await asyncio.to_thread(self._stop_client, self.client)

    @staticmethod
    def _stop_client(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()  # joins paho's thread: blocking, hence to_thread

    def publish(self, topic: str, payload: bytes, token: int) -> None:
        """Queue one retained status (on the loop): sent in order once connected and the window has room,
        acknowledged through `on_acked` by `token`. paho's `publish` may be called from here: it locks
        its own queues."""
        self.retained.put(self.client, self.connected, (topic, payload, token))

    # --- paho's callbacks, on paho's thread: they reach the loop only through call_soon_threadsafe,
    # since asyncio objects are not thread-safe.

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._arm_fallback)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if reason == "Unsupported protocol version" and self.mqtt5 and self.settings.mqtt_protocol == "auto":
                # A 3.1.1 broker that says so (CONNACK 0x01; the project's amqtt does): no need to wait.
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._fall_back_now, "refused MQTT 5")
                return
            logger.error("%s refused the scheduler: %s", self.url, reason)
            return
        self._ever_connected = True
        self.connected = True
        version = "5" if self.mqtt5 else "3.1.1"
        logger.info("scheduler connected to %s as %s (MQTT %s)", self.url, self.client_id, version)
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if self.mqtt5 else None
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected, client, receive_maximum)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self.client or not self._ever_connected:
            return  # the MQTT 5 attempt that was replaced, or a connection never made: nothing was lost
        self.connected = False
        if not self._stopped:
            logger.warning("%s: connection lost (%s); paho reconnects and resends", self.url, reason)

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        if client is not self.client:
            return  # the MQTT 5 attempt that was replaced (it never had a CONNACK, so no PUBACK either)
        # One hand-over to the loop per burst of PUBACKs, not one per message.
        with self._lock:
            self._acked.append(mid)
            if self._handoff_scheduled:
                return
            self._handoff_scheduled = True
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._hand_over)

    # --- on the loop

    def _hand_over(self) -> None:
        with self._lock:
            mids, self._acked = self._acked, []
            self._handoff_scheduled = False
        for mid in mids:
            self.retained.acked(self.client, mid)  # each frees a place in the window, filled at once
        tokens = self._tokens_acked.copy()  # the window appends to this very list: emptied, not replaced
        self._tokens_acked.clear()
        if tokens:
            self._on_acked(tokens)

    def _connected(self, client: mqtt.Client, receive_maximum: int | None) -> None:
        if client is self.client:
            self.retained.connected(client, receive_maximum)

    def _arm_fallback(self) -> None:
        if (
            self.mqtt5
            and self.settings.mqtt_protocol == "auto"
            and not self._ever_connected
            and self._fallback_timer is None
            and self._loop is not None
        ):
            # amqtt (MQTT 3.1.1 only) neither answers nor closes an MQTT 5 CONNECT.
            self._fallback_timer = self._loop.call_later(CONNACK_TIMEOUT_S, self._connack_overdue)

    def _connack_overdue(self) -> None:
        self._fall_back_now("did not answer an MQTT 5 CONNECT")

    def _fall_back_now(self, why: str) -> None:
        if self.mqtt5 and not self._ever_connected and not self._stopped:
            logger.info("%s %s; using MQTT 3.1.1", self.url, why)
            if self._fallback_timer is not None:
                self._fallback_timer.cancel()
            self.mqtt5 = False  # now: a second refusal or the timer must not fall back twice
            asyncio.get_running_loop().create_task(self._fall_back())

    async def _fall_back(self) -> None:
        old = self.client
        self.client = self._new_client()  # MQTT 3.1.1
        # At once, before anything else is published: what the old client held goes first to the new
        # one, once it is connected (its mids would mean nothing to the new client).
        self.retained.client_replaced()
        await asyncio.to_thread(self._stop_client, old)
        if not self._stopped:
            self.start()
