"""What the scale benchmark reads back: every status through the API, the events in both queues,
and the batch status endpoint under concurrent clients against its baseline of single GETs."""

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika

from bench.scale_probes import Api
from core.settings import Settings

QUERY_CHUNK = 10_000  # the API's max_status_ids


def api_online_count(api: Api, ids: Sequence[str]) -> tuple[int, int]:
    """(restaurants the API says are online, restaurants it answered for), in chunks of 10,000."""
    online = answered = 0
    for start in range(0, len(ids), QUERY_CHUNK):
        statuses = api.statuses(list(ids[start : start + QUERY_CHUNK]))
        answered += len(statuses)
        online += sum(1 for s in statuses if s["online"])
    return online, answered


async def queue_depths(settings: Settings) -> dict[str, int]:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        depths = {}
        for base in (settings.dashboard_queue, settings.aggregator_queue):
            queue = await channel.declare_queue(settings.amqp_name(base), passive=True)
            depths[base] = int(queue.declaration_result.message_count or 0)
        return depths
    finally:
        await connection.close()


@dataclass
class QueueCount:
    """Events per (type, restaurant) found in one queue."""

    messages: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    per_restaurant: dict[str, Counter[str]] = field(default_factory=dict)
    offline_causes: Counter[str] = field(default_factory=Counter)  # DEVICE_OFFLINE by data.cause (stale, will …)


async def drain_queues(settings: Settings, timeout: float) -> dict[str, QueueCount]:
    """Take every message out of both stream queues (no consumer runs meanwhile) and count them."""
    counts: dict[str, QueueCount] = {}
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        for base in (settings.dashboard_queue, settings.aggregator_queue):
            queue = await channel.declare_queue(settings.amqp_name(base), passive=True)
            expected = int(queue.declaration_result.message_count or 0)
            count = counts[base] = QueueCount()
            deadline = time.monotonic() + timeout
            if expected:
                async with queue.iterator(no_ack=True) as messages:
                    async for message in messages:
                        event = json.loads(message.body)
                        count.messages += 1
                        count.by_type[event["type"]] += 1
                        per = count.per_restaurant.setdefault(event["restaurant_id"], Counter())
                        per[event["type"]] += 1
                        if event["type"] == "DEVICE_OFFLINE":
                            count.offline_causes[str(event.get("data", {}).get("cause"))] += 1
                        if count.messages >= expected or time.monotonic() > deadline:
                            break
    finally:
        await connection.close()
    return counts


def drain(settings: Settings, timeout: float) -> dict[str, QueueCount]:
    return asyncio.run(drain_queues(settings, timeout))


@dataclass
class BatchLoad:
    clients: int
    ids_per_request: int
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    wrong_answers: int = 0  # a response without exactly the ids asked
    single_get_ms: list[float] = field(default_factory=list)  # baseline: the same ids one GET at a time
    one_client_ms: list[float] = field(default_factory=list)  # the batch with nobody else asking
    first_pass_ms: list[float] = field(default_factory=list)  # every id asked once, before the rest


def batch_load(port: int, token: str, ids: list[str], result: BatchLoad, requests: int, rounds: int) -> None:
    """Every id once, then the baseline (1,000 single GETs, `rounds` times), then one client alone, then
    `clients` at once.

    The first pass is what the API's copy of the views (core/view_cache.py) costs while it fills: each
    of its batches on a new connection, so that with several API processes each is likely to get some.
    The rest is measured with the copy filled, as it is in a running platform but for the restaurants
    whose hash changed since their last read (a heartbeat every 30 s each).
    """
    rng = random.Random(5)
    size = result.ids_per_request
    for start in range(0, len(ids), size):
        api = Api(port, token)
        try:
            started = time.perf_counter()
            api.statuses(ids[start : start + size])
            result.first_pass_ms.append((time.perf_counter() - started) * 1000)
        finally:
            api.close()
    api = Api(port, token)
    try:
        for _ in range(rounds):
            wanted = rng.sample(ids, size)
            started = time.perf_counter()
            for rid in wanted:
                api.status(rid)
            result.single_get_ms.append((time.perf_counter() - started) * 1000)
        for _ in range(max(5, rounds)):
            wanted = rng.sample(ids, size)
            started = time.perf_counter()
            statuses = api.statuses(wanted)
            result.one_client_ms.append((time.perf_counter() - started) * 1000)
            if [s["restaurant_id"] for s in statuses] != wanted:
                result.wrong_answers += 1
    finally:
        api.close()
    lock = threading.Lock()
    go = threading.Barrier(result.clients + 1)

    def client(n: int) -> None:
        local = random.Random(n)
        # Drawn and encoded beforehand: the clients share these cores with the API, and a real client's
        # own work (its sampling, its JSON) happens on its own machine.
        asked = [local.sample(ids, size) for _ in range(requests)]
        bodies = [json.dumps({"ids": wanted}).encode() for wanted in asked]
        api = Api(port, token)
        lat: list[float] = []
        wrong = 0
        try:
            go.wait(30)
            for i, (wanted, body) in enumerate(zip(asked, bodies, strict=True)):
                started = time.perf_counter()
                code, raw = api.request("POST", "/restaurants/status/query", body)
                lat.append((time.perf_counter() - started) * 1000)
                if code != 200:
                    wrong += 1
                elif i == 0 and [s["restaurant_id"] for s in json.loads(raw)["statuses"]] != wanted:
                    wrong += 1  # one full check per client; the rest are timed only
        except Exception as exc:
            with lock:
                result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            api.close()
            with lock:
                result.latencies_ms.extend(lat)
                result.wrong_answers += wrong

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(result.clients)]
    for t in threads:
        t.start()
    go.wait(30)
    started = time.perf_counter()
    for t in threads:
        t.join(300)
    result.seconds = time.perf_counter() - started
