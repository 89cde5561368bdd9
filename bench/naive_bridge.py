"""BASELINE for `bench ingest`: the bridge as a first attempt would write it (DESIGN.md §10: ~3.5k/s).

For every MQTT message, one after the other: parse it, update Redis, publish one persistent RabbitMQ
message and await its publisher confirm. Nothing is batched and nothing distinguishes a transition
from a repeat. It takes the same subscriptions as the real bridge (MQTT 5 shared subscriptions) and
exposes the same `bridge_messages_total` counter, so the benchmark reads both the same way.

Run by the benchmark as `python -m bench.naive_bridge` with the PRESENCE_* settings of `core.settings`.
"""

import argparse
import asyncio
import json
import logging
import signal
import threading
import time
import uuid
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from redis.asyncio import Redis

from core.amqp import declare_topology
from core.ids import HEARTBEAT_FILTER, PRESENCE_FILTER
from core.settings import Settings

logger = logging.getLogger(__name__)

MAX_WAITING = 10_000  # messages between paho's thread and the loop; beyond it the broker keeps them
# What a first attempt does in effect: a task per message, each awaiting its own confirm. Strictly one
# at a time (1) is far slower still: every confirm waits for RabbitMQ to fsync that one message.
DEFAULT_CONCURRENCY = 100


class NaiveBridge:
    def __init__(self, settings: Settings, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.registry = CollectorRegistry()
        self.messages = Counter("bridge_messages_total", "MQTT messages handled", ["kind"], registry=self.registry)
        self.converged = Gauge("bridge_converged", "1 once subscribed", registry=self.registry)
        self._room = threading.BoundedSemaphore(MAX_WAITING)
        self._subscribed = threading.Event()
        self._closing = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        httpd, _ = start_http_server(self.settings.bridge_metrics_port, "127.0.0.1", self.registry)
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        connection = await aio_pika.connect_robust(self.settings.amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_topology(channel, self.settings)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            # paho's thread: block when the loop is this far behind (the broker queues the rest), and
            # touch the asyncio queue only through call_soon_threadsafe.
            while not self._closing:
                if self._room.acquire(timeout=0.2):
                    loop.call_soon_threadsafe(queue.put_nowait, (msg.topic, bytes(msg.payload)))
                    return

        client = self._mqtt_client(on_message)
        try:
            await asyncio.to_thread(self._subscribed.wait, 30)
            self.converged.set(1)

            async def worker() -> None:
                while True:
                    topic, payload = await queue.get()
                    self._room.release()
                    try:
                        await self._handle(redis, exchange, topic, payload)
                    except (ValueError, KeyError, IndexError):
                        logger.warning("dropping a malformed message on %s", topic)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            self._closing = True
            client.disconnect()
            client.loop_stop()
            await connection.close()
            await redis.aclose()
            httpd.shutdown()
            httpd.server_close()

    def _mqtt_client(self, on_message: Any) -> mqtt.Client:
        s = self.settings
        host, port = s.mqtt_brokers[0].removeprefix("mqtt://").rsplit(":", 1)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive-bridge", protocol=mqtt.MQTTv5)
        client.username_pw_set(s.mqtt_username, s.mqtt_password)
        client.on_message = on_message
        group = s.mqtt_shared_group

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            c.subscribe(
                [
                    (f"$share/{group}/{PRESENCE_FILTER}", SubscribeOptions(qos=1)),
                    (f"$share/{group}/{HEARTBEAT_FILTER}", SubscribeOptions(qos=0)),
                ]
            )

        client.on_connect = on_connect
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.connect(host, int(port))
        client.loop_start()
        return client

    async def _handle(self, redis: Redis, exchange: aio_pika.abc.AbstractExchange, topic: str, payload: bytes) -> None:
        _, rid, _, did, kind = topic.split("/")
        body = json.loads(payload)
        now = time.time_ns() // 1_000_000
        key = f"{self.settings.redis_prefix}r:{rid}"
        if kind == "presence":
            await redis.hset(key, f"d:{did}", f"{body['epoch']}|{body['state']}|{now}|0")
        await redis.hset(key, f"l:{did}", now)
        event = {
            "event_id": str(uuid.uuid4()),
            "type": "DEVICE_ONLINE" if body.get("state", "online") == "online" else "DEVICE_OFFLINE",
            "restaurant_id": rid,
            "device_id": did,
            "ts": now,
            "data": {"epoch": body["epoch"], "cause": kind},
        }
        await exchange.publish(
            aio_pika.Message(json.dumps(event).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="",
        )
        self.messages.labels(kind).inc()


async def main(concurrency: int) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await NaiveBridge(Settings(), concurrency).run()
    except asyncio.CancelledError:
        logger.info("naive bridge stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the naive baseline bridge of `python -m bench ingest`")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="messages handled at once (1 = strictly serial)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(args.concurrency))
