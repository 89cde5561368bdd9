"""One MQTT connection of the bridge to one broker shard (paho-mqtt, network loop in its own thread)."""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.handoff import HandOff
from core.ids import HEARTBEAT_FILTER, PRESENCE_FILTER
from core.settings import Settings

logger = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 3.0



@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as it left paho's thread; `mid` is acked once its effect is in Redis."""

    link: "BrokerLink"
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received_ms: int


class BrokerLink:
    """Subscribes to presence and heartbeats of one shard; MQTT 5 shared subscriptions where possible.

    With MQTT 5 the bridge instances share the live stream (`$share/<group>/…`), but a shared
    subscription never receives retained messages, so each instance also holds a plain presence
    subscription until it has read the retained state (reconciliation), then drops it. MQTT 3.1.1
    brokers (amqtt) get plain subscriptions; several bridges then each see every message, which the
    (epoch, state) rule makes harmless.
    """

    def __init__(self, url: str, index: int, settings: Settings, instance: str, handoff: HandOff[Inbound]) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (9001 if parts.scheme == "ws" else 1883)
        self.transport = "websockets" if parts.scheme == "ws" else "tcp"
        self.settings = settings
        self.client_id = f"bridge-{instance}-{index}"
        self.handoff = handoff
        self.mqtt5 = settings.mqtt_protocol in ("auto", "5")
        self.connected = threading.Event()
        self.reconcile_subscribed_at: float | None = None
        self.last_retained_at = 0.0
        self.reconciling = True
        self._reconcile_mid: int | None = None
        self._fell_back = False
        self._ever_connected = False
        self._client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        protocol = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport=self.transport,  # type: ignore[arg-type]
            # MQTT 3.1.1 has no session expiry: a persistent session of a bridge that never returns would
            # queue forever on the broker. Plain subscriptions plus reconciliation make it unnecessary.
            clean_session=None if self.mqtt5 else True,
            manual_ack=True,
        )
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        properties = None
        kwargs: dict[str, Any] = {}
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            # Short on purpose: Mosquitto keeps handing a share of the group's messages to an offline
            # member until its session expires, so a bridge that is gone for good must not hold one long.
            properties.SessionExpiryInterval = int(self.settings.bridge_session_expiry_s)
            kwargs["clean_start"] = False
        self._client.connect_async(self.host, self.port, keepalive=30, properties=properties, **kwargs)
        self._client.loop_start()
        if self.mqtt5 and self.settings.mqtt_protocol == "auto" and not self._ever_connected:
            # amqtt (MQTT 3.1.1 only) neither answers nor closes an MQTT 5 CONNECT: wait for a CONNACK
            # only so long, then speak 3.1.1.
            timer = threading.Timer(CONNACK_TIMEOUT_S, self._connack_overdue)
            timer.daemon = True
            timer.start()

    def _connack_overdue(self) -> None:
        if not self._ever_connected and not self._fell_back:
            logger.info("%s did not answer an MQTT 5 CONNECT; using MQTT 3.1.1", self.url)
            self._fall_back()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # --- paho's network thread from here on: nothing below may touch asyncio objects directly.

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if self.mqtt5 and self.settings.mqtt_protocol == "auto" and not self._fell_back:
                # An MQTT 3.1.1-only broker (amqtt) refuses the v5 CONNECT: start over with 3.1.1.
                logger.info("%s refused MQTT 5 (%s); using MQTT 3.1.1", self.url, reason)
                self._fall_back()
            else:
                logger.error("%s refused the bridge: %s", self.url, reason)
            return
        logger.info("connected to %s as %s (MQTT %s)", self.url, self.client_id, "5" if self.mqtt5 else "3.1.1")
        self._ever_connected = True
        self.connected.set()
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
            _, self._reconcile_mid = client.subscribe(PRESENCE_FILTER, options=SubscribeOptions(qos=1))
        else:
            _, self._reconcile_mid = client.subscribe([(PRESENCE_FILTER, 1), (HEARTBEAT_FILTER, 0)])

    def _fall_back(self) -> None:
        if self._fell_back:
            return
        self._fell_back = True
        self.mqtt5 = False
        old = self._client
        self._client = self._new_client()
        # Stopping paho's loop from its own thread would deadlock: do it from a helper thread.
        threading.Thread(target=self._swap_clients, args=(old,), daemon=True).start()

    def _swap_clients(self, old: mqtt.Client) -> None:
        old.disconnect()
        old.loop_stop()
        self.start()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        if mid == self._reconcile_mid:
            self.reconcile_subscribed_at = time.monotonic()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self._client:
            return  # the MQTT 5 attempt being replaced
        self.connected.clear()
        if reason is not None and getattr(reason, "is_failure", False):
            logger.warning("lost %s: %s; paho reconnects with backoff", self.url, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            self.last_retained_at = time.monotonic()
        received_ms = time.time_ns() // 1_000_000
        self.handoff.put(Inbound(self, msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid, received_ms))

    # --- called from the asyncio side; paho guards these with its own locks.

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)

    def begin_reconciliation(self) -> None:
        """Read the retained presence again (Redis lost its state): a new SUBSCRIBE re-sends it."""
        self.reconciling = True
        self.reconcile_subscribed_at = None
        options = SubscribeOptions(qos=1) if self.mqtt5 else None
        if options is not None:
            _, self._reconcile_mid = self._client.subscribe(PRESENCE_FILTER, options=options)
        else:
            _, self._reconcile_mid = self._client.subscribe(PRESENCE_FILTER, qos=1)

    def end_reconciliation(self) -> None:
        """Drop the plain presence subscription once the retained state is read (MQTT 5 only)."""
        self.reconciling = False
        if self.mqtt5:
            self._client.unsubscribe(PRESENCE_FILTER)

    def publish_retained(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=1, retain=True)
