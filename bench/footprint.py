"""Bytes per restaurant: its Redis state and its MongoDB history per day (figures for docs/scaling.md).

`python -m bench.footprint [--restaurants N]` starts a scratch Redis on a free loopback port and writes,
through the platform's own code, what the bridge and the scheduler leave for restaurants with two
devices each (profile, two births, heartbeats, a committed status, every outbox cleared as after
RabbitMQ's confirm and the broker's PUBACK, an entry in the clock queue). It prints MEMORY USAGE of
one restaurant's hash, the shared indexes per restaurant and the server's used_memory per restaurant.
Then it encodes typical history documents (core/history_documents.py) with BSON and prints their
sizes. Nothing is timed.
"""

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
from redis.asyncio import Redis

from core.clock_queue import ClockQueue
from core.history_documents import HistoryDay, HistoryHead, OngoingOffline, day_doc_id, store_core
from core.hours import OpeningHours
from core.messages import DeviceState, Event, EventType
from core.presence_store import PresenceStore, now_ms
from core.status import OfflineReason, StatusCore
from core.status_codec import profile_json
from core.status_service import StatusService
from stack.process import free_port
from stack.services import Redis as RedisServer

PREFIX = "presence:"
DEVICES = ("tablet", "pos")
CHUNK = 500


def rid_of(n: int) -> str:
    return f"rest-{n:07d}"  # 12 characters, like the demo's ids


async def write_restaurants(redis: Redis, count: int) -> None:
    """What the platform leaves in Redis for `count` open restaurants with both devices online."""
    store = PresenceStore(redis, PREFIX)
    status = StatusService(store, timedelta(seconds=120))
    clock = ClockQueue(redis, PREFIX)
    profile = profile_json("A", "America/Sao_Paulo", OpeningHours(), [])
    for start in range(0, count, CHUNK):
        rids = [rid_of(n) for n in range(start, min(start + CHUNK, count))]
        await store.put_profiles(dict.fromkeys(rids, profile))
        at = now_ms()
        births = [
            (rid, did, 1, DeviceState.ONLINE,
             Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id=did, data={"epoch": 1, "cause": "birth"}))
            for rid in rids for did in DEVICES
        ]  # fmt: skip
        results = await store.apply_presence(births, at)
        for (rid, *_), result in zip(births, results, strict=True):
            if result.outbox_field:
                await store.clear_outbox(rid, [result.outbox_field])  # RabbitMQ confirmed it
        await store.heartbeats([(rid, did, 1) for rid in rids for did in DEVICES], at + 30_000)
        for rid in rids:
            settled = await status.settle(rid)
            if settled is not None:
                await store.clear_outbox(rid, [settled.outbox_field])
                await store.clear_status_outbox(rid, settled.status_json)  # the retained status was PUBACKed
        await clock.mark_now(rids)  # the scheduler re-scores each at its next boundary: same size


async def measure_redis(count: int, listpack_value: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        server = RedisServer(Path(tmp), free_port())
        server.start()
        try:
            server.wait_ready()
            redis = Redis.from_url(server.url, decode_responses=True)
            try:
                if listpack_value is not None:  # Redis's default is 64: `p` and `s` are longer
                    await redis.config_set("hash-max-listpack-value", listpack_value)
                before = int((await redis.info("memory"))["used_memory"])
                await write_restaurants(redis, count)
                after = int((await redis.info("memory"))["used_memory"])
                key = f"{PREFIX}r:{rid_of(0)}"
                fields = await redis.hgetall(key)
                return {
                    "version": (await redis.info("server"))["redis_version"],
                    "hash_bytes": int(await redis.memory_usage(key, samples=0) or 0),
                    "hash_encoding": await redis.object("encoding", key),
                    "fields": {name: len(value) for name, value in sorted(fields.items())},
                    "hb_index_bytes": int(await redis.memory_usage(f"{PREFIX}hb", samples=0) or 0),
                    "due_bytes": int(await redis.memory_usage(f"{PREFIX}due", samples=0) or 0),
                    "used_memory_delta": after - before,
                    "keys": await redis.dbsize(),
                }
            finally:
                await redis.aclose()
        finally:
            server.stop()


def history_documents(points: int) -> dict[str, int]:
    """BSON sizes of one restaurant-day with `points` status changes (opening, outages, closing)."""
    rid, day = rid_of(0), "2026-11-25"
    start = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)  # 10:00 in São Paulo
    cores = [StatusCore(online=False, reason=OfflineReason.DISCONNECTED), StatusCore(online=True)]
    values: dict[str, list[Any]] = {}
    for i in range(points - 1):
        at = start + timedelta(minutes=37 * i, seconds=i, milliseconds=123)
        ms = int(at.timestamp() * 1000)
        values[str(ms)] = [*store_core(cores[i % 2]), ms + 4]
    close = int((start + timedelta(hours=13)).timestamp() * 1000)
    values[str(close)] = [*store_core(StatusCore(online=False, reason=OfflineReason.CLOSED)), close + 4]
    day_doc = {
        "_id": day_doc_id(rid, day),
        "points": values,
        "before": store_core(StatusCore(online=False, reason=OfflineReason.CLOSED)),
        "offline_ms": 1_234_567,
    }
    head = {"_id": rid, "at": start, "status": store_core(StatusCore(online=True)), "timezone": "America/Sao_Paulo",
            "first_day": day}  # fmt: skip
    ongoing = {"_id": rid, "since": start, "timezone": "America/Sao_Paulo", "group": "A"}
    # The documents must carry exactly the models' fields (`id` is stored as `_id`), or the sizes lie.
    for doc, model in ((day_doc, HistoryDay), (head, HistoryHead), (ongoing, OngoingOffline)):
        assert {"_id" if name == "id" else name for name in model.model_fields} - {"revision_id"} == set(doc), model
    return {
        "day": len(bson.encode(day_doc)),
        "head": len(bson.encode(head)),
        "ongoing": len(bson.encode(ongoing)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.splitlines()[0])
    parser.add_argument("--restaurants", type=int, default=10_000, help="restaurants written to the scratch Redis")
    parser.add_argument(
        "--listpack-value", type=int, help="set Redis's hash-max-listpack-value first (compact hashes up to this)"
    )
    args = parser.parse_args()
    r = asyncio.run(measure_redis(args.restaurants, args.listpack_value))
    n = args.restaurants
    listpack = f", hash-max-listpack-value {args.listpack_value}" if args.listpack_value is not None else ""
    print(f"Redis {r['version']}{listpack}, {n:,} restaurants x {len(DEVICES)} devices, {r['keys']:,} keys")
    print(f"  one restaurant hash: {r['hash_bytes']} B (MEMORY USAGE, encoding {r['hash_encoding']})")
    print("    fields (value length): " + ", ".join(f"{k}={v}" for k, v in r["fields"].items()))
    print(f"  heartbeat index {PREFIX}hb: {r['hb_index_bytes'] / n:.1f} B per restaurant")
    print(f"  clock queue {PREFIX}due: {r['due_bytes'] / n:.1f} B per restaurant")
    print(f"  used_memory growth: {r['used_memory_delta'] / n:.1f} B per restaurant (everything, allocator included)")
    print("MongoDB history, BSON bytes per document (restaurant id of 12 characters)")
    for points in (3, 7, 15):
        sizes = history_documents(points)
        print(f"  restaurant-day with {points:>2} points: history_days {sizes['day']} B"
              f" | head {sizes['head']} B, ongoing {sizes['ongoing']} B (one per restaurant)")  # fmt: skip
    print("  ranking rollup: 4 B per restaurant-day (uint32 ms in the bucket's binary array)")


if __name__ == "__main__":
    main()
