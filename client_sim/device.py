"""One simulated device (tablet or POS) following the device protocol of DESIGN.md §3."""

import asyncio
import json
import logging
import time
from typing import Any

import paho.mqtt.client as mqtt

from client_sim.backoff import Backoff
from client_sim.brokers import BrokerAddress
from client_sim.context import DeviceContext, DeviceState
from client_sim.epochs import EpochCounter, wall_ms
from core import ids

logger = logging.getLogger(__name__)


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class SimDevice:
    """A state machine over paho clients; one new client (and epoch) per connection.

    Every method and paho callback runs on the asyncio loop's thread (see MqttPump). A callback from
    a client that is no longer `self._client` (taken over, crashed) is ignored.
    """

    def __init__(self, ctx: DeviceContext, restaurant_id: str, secret: str, device_id: str,
                 broker: BrokerAddress, bind_address: str = "") -> None:
        self.ctx = ctx
        self.rid = restaurant_id
        self.did = device_id
        self._secret = secret
        self.broker = broker
        self.client_id = ids.client_id(restaurant_id, device_id)
        self.bind_address = bind_address
        self.state = DeviceState.IDLE
        self.epochs = EpochCounter()
        self.epoch = 0  # of the current (or last) connection; 0 before the first
        self.silent = False
        self.last_status: Any = None
        self.backoff = Backoff(ctx.config.backoff_base_s, ctx.config.backoff_cap_s, ctx.rng)
        self._client: mqtt.Client | None = None
        self._connected_at = 0.0
        self._hb_due = 0.0
        self._hb_count = 0
        self._hb_last_ts = 0
        self._hb_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._connack_timer: asyncio.TimerHandle | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._disconnected: asyncio.Future[None] | None = None
        self._open_task: asyncio.Task[None] | None = None
        self.finished = False  # the run is over: nothing (re)connects any more

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, reason: str = "start") -> bool:
        """Connect a device that is not running (first start, or restart after a crash/stop)."""
        if self.finished or self.state not in (DeviceState.IDLE, DeviceState.DOWN):
            return False
        self.backoff.reset()
        self._connect(reason, self.epochs.next())
        return True

    def _connect(self, reason: str, epoch: int) -> None:
        loop = asyncio.get_running_loop()
        self._cancel_timers()
        client = self.ctx.pump.new_client(self.client_id, self.broker, userdata=epoch)
        client.username_pw_set(self.rid, self._secret)
        will = _json({"state": "offline", "epoch": epoch, "ts": wall_ms()})
        client.will_set(ids.presence_topic(self.rid, self.did), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # No on_publish until a graceful stop waits for a PUBACK: paho builds two objects per
        # message to call it, even for QoS 0 heartbeats.
        self._client, self.epoch, self.state = client, epoch, DeviceState.CONNECTING
        self._write("connect_attempt", reason=reason, broker=self.broker.url)
        self._open_task = loop.create_task(self._open(client), name=f"connect {self.client_id}")

    async def _open(self, client: mqtt.Client) -> None:
        try:
            await self.ctx.pump.connect(client, self.broker, self.ctx.config.keepalive_s, self.bind_address)
        except Exception as exc:  # any failure to open (refused, timeout, WebSocket handshake)
            if client is self._client:
                self.ctx.stats.connect_failures += 1
                logger.debug("%s could not connect to %s: %r", self.client_id, self.broker.url, exc)
                self._write("connect_failed", error=f"{type(exc).__name__}: {exc}"[:200])
                self._client = None
                self._schedule_reconnect()
            return
        if client is self._client:
            timeout = self.ctx.config.connack_timeout_s
            self._connack_timer = asyncio.get_running_loop().call_later(timeout, self._connack_late, client)
        else:  # stopped while the socket was opening: CONNECT then DISCONNECT, so no will
            client.disconnect()

    def _connack_late(self, client: mqtt.Client) -> None:
        if client is self._client and self.state is DeviceState.CONNECTING:
            self._write("connack_timeout")
            self.ctx.pump.abort(client)  # paho then reports the drop and we back off

    def _schedule_reconnect(self) -> None:
        delay = self.backoff.next_delay()
        self.state = DeviceState.BACKOFF
        self._write("reconnect_backoff", delay=round(delay, 3), attempt=self.backoff.attempt)
        loop = asyncio.get_running_loop()
        self._retry_timer = loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self.state is DeviceState.BACKOFF and not self.finished:
            self._connect("reconnect", self.epochs.next())

    # -- paho callbacks ------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if client is not self._client:
            return
        if self._connack_timer is not None:
            self._connack_timer.cancel()
        self._write("connack", rc=reason.value, reason=str(reason))
        if reason.is_failure:
            self.ctx.stats.refused += 1
            return  # paho closes the connection next and `_on_disconnect` schedules the retry
        stats = self.ctx.stats
        stats.connacks += 1
        self.state = DeviceState.CONNECTED
        self._connected_at = time.monotonic()
        birth = _json({"state": "online", "epoch": self.epoch, "ts": wall_ms()})
        client.publish(ids.presence_topic(self.rid, self.did), birth, qos=1, retain=True)
        stats.births += 1
        stats.published += 1
        self._write("birth_sent")
        client.subscribe(ids.status_topic(self.rid), qos=1)
        if not self.silent:
            # A random first beat spreads the heartbeats of devices that connected together.
            self._start_heartbeats(self.ctx.rng.uniform(0, self.ctx.config.heartbeat_interval_s))

    def _on_disconnect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if client is not self._client:
            return
        self._client = None
        self._cancel_timers()
        if self.state is DeviceState.STOPPING:
            for future in [*self._acks.values(), self._disconnected]:
                if future is not None and not future.done():
                    future.set_result(None)  # gone before the PUBACK: nothing left to wait for
            self._acks.clear()
            return
        was_connected = self.state is DeviceState.CONNECTED
        self._end_heartbeat_run()
        self.ctx.stats.connections_lost += 1
        logger.debug("%s lost its connection: %s", self.client_id, reason)
        self._write("connection_lost", reason=str(reason), was_connected=was_connected)
        if was_connected and time.monotonic() - self._connected_at >= self.ctx.config.stable_after_s:
            self.backoff.reset()
        self._schedule_reconnect()

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        try:
            payload: Any = json.loads(message.payload)
        except ValueError:
            payload = message.payload.decode(errors="replace")
        if message.topic != ids.status_topic(self.rid):
            # Only the restaurant's own status may reach it (DESIGN.md §3 ACL): a broker bug to report.
            self.ctx.stats.unexpected_messages += 1
            logger.warning("%s received a message on %s", self.client_id, message.topic)
            self._write("unexpected_message", topic=message.topic, payload=payload)
            return
        self.last_status = payload
        self.ctx.stats.status_received += 1
        self._write("status_received", payload=payload)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    # -- heartbeats ----------------------------------------------------------------------------

    def _start_heartbeats(self, first_delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._hb_due = loop.time() + first_delay
        self._hb_timer = loop.call_at(self._hb_due, self._heartbeat)

    def _heartbeat(self) -> None:
        self._hb_timer = None
        client = self._client
        if client is None or self.state is not DeviceState.CONNECTED or self.silent:
            return
        ts = wall_ms()
        payload = b'{"epoch":%d,"ts":%d}' % (self.epoch, ts)
        info = client.publish(ids.heartbeat_topic(self.rid, self.did), payload)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.ctx.stats.heartbeats += 1
            self.ctx.stats.published += 1
            first = self._hb_count == 0
            self._hb_count += 1
            self._hb_last_ts = ts
            if first:
                self._write("heartbeat", ts=ts, run="start")
            elif self.ctx.config.truth_heartbeats == "all":
                self._write("heartbeat", ts=ts)
        loop = asyncio.get_running_loop()
        interval = self.ctx.config.heartbeat_interval_s
        # Keep to the schedule rather than drift, unless the loop fell a whole interval behind.
        self._hb_due = max(self._hb_due + interval, loop.time())
        self._hb_timer = loop.call_at(self._hb_due, self._heartbeat)

    def _end_heartbeat_run(self) -> None:
        if self._hb_timer is not None:
            self._hb_timer.cancel()
            self._hb_timer = None
        if self._hb_count:
            self._write("heartbeat_last", ts=self._hb_last_ts, count=self._hb_count)
            self._hb_count = 0

    # -- what the scenario makes happen --------------------------------------------------------

    def crash(self) -> bool:
        """The app dies: the socket closes without DISCONNECT, so the broker publishes the will."""
        client = self._client
        if client is None or self.state is not DeviceState.CONNECTED:
            return False
        self._end_heartbeat_run()
        self._write("crash")
        self._client = None
        self._cancel_timers()
        self.silent = False
        self.state = DeviceState.DOWN
        self.ctx.pump.abort(client)
        return True

    def flap(self) -> bool:
        """The network drops the connection; the device notices and reconnects with backoff."""
        client = self._client
        if client is None or self.state is not DeviceState.CONNECTED:
            return False
        self._end_heartbeat_run()
        self._write("flap")
        self.ctx.pump.abort(client)
        return True

    def takeover(self) -> bool:
        """A new connection with the same client id and a new epoch while the old one is open."""
        old = self._client
        if old is None or self.state is not DeviceState.CONNECTED:
            return False
        old_epoch = self.epoch
        self._end_heartbeat_run()
        epoch = self.epochs.next()
        self._write("takeover", epoch=epoch, old_epoch=old_epoch)
        self._connect("takeover", epoch)
        # The broker closes the old connection when the new CONNECT arrives; cut it if it did not.
        asyncio.get_running_loop().call_later(self.ctx.config.connack_timeout_s, self.ctx.pump.abort, old)
        return True

    def go_silent(self) -> bool:
        """The app hangs: no more heartbeats, while paho still answers the broker's keepalive."""
        if self.silent or self.state is not DeviceState.CONNECTED:
            return False
        self._end_heartbeat_run()
        self.silent = True
        self._write("silent_start")
        return True

    def end_silent(self) -> bool:
        if not self.silent:
            return False
        self.silent = False
        self._write("silent_end")
        if self.state is DeviceState.CONNECTED and self._hb_timer is None:
            self._start_heartbeats(0.0)
        return True

    async def stop(self, final: bool = False) -> None:
        """Graceful stop: presence offline (QoS 1, retained), wait for its PUBACK, then DISCONNECT."""
        self.finished = self.finished or final
        if self.state is DeviceState.STOPPING:  # another stop is under way: wait for it
            if self._disconnected is not None:
                await asyncio.wait([self._disconnected], timeout=self.ctx.config.graceful_timeout_s * 2)
            return
        self._cancel_timers()
        client, state = self._client, self.state
        if client is not None and state is DeviceState.CONNECTED:
            self._end_heartbeat_run()
            self.state = DeviceState.STOPPING
            loop = asyncio.get_running_loop()
            self._disconnected = loop.create_future()
            # "cause" tells the platform this offline is not the will (docs/architecture.md).
            offline = _json({"state": "offline", "epoch": self.epoch, "ts": wall_ms(), "cause": "graceful"})
            client.on_publish = self._on_publish
            info = client.publish(ids.presence_topic(self.rid, self.did), offline, qos=1, retain=True)
            self.ctx.pump.send_now(client)  # out before it is logged as sent
            self.ctx.stats.published += 1
            self._write("graceful_offline")
            acked = self._acks[info.mid] = loop.create_future()
            timeout = self.ctx.config.graceful_timeout_s
            await asyncio.wait([acked], timeout=timeout)
            self._acks.pop(info.mid, None)
            client.disconnect()
            await asyncio.wait([self._disconnected], timeout=timeout)
            if self._client is client:  # DISCONNECT never went out: cut the connection
                self._client = None
                self.ctx.pump.abort(client)
        elif client is not None:  # still connecting: no birth was sent, so leave quietly
            self._client = None
            self._write("stopped", state=str(state))
            if self._open_task is not None and not self._open_task.done():
                # `_open` sends DISCONNECT once the socket is open; wait so that it goes out.
                await asyncio.wait([self._open_task], timeout=self.ctx.config.graceful_timeout_s)
            else:
                client.disconnect()
        self.silent = False  # a stopped (or crashed) app comes back without its hang
        self.state = DeviceState.STOPPED if self.finished else DeviceState.DOWN

    def _cancel_timers(self) -> None:
        for timer in (self._hb_timer, self._retry_timer, self._connack_timer):
            if timer is not None:
                timer.cancel()
        self._hb_timer = self._retry_timer = self._connack_timer = None

    def _write(self, event: str, **fields: Any) -> None:
        fields.setdefault("epoch", self.epoch)
        self.ctx.truth.write(event, self.rid, self.did, **fields)
